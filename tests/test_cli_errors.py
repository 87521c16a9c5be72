"""Every toolkit error type, through the installed ``vcap`` script, on a realistic bad input.

Each case runs the console script a user types (``vcap`` beside this interpreter) in a subprocess
and checks what reaches the user: the exit code is the error type's ``exit_code``, stderr holds no
traceback and ends with one line ``vcap: <kind>: <message>`` that names the offending file, folder
or config key, and stdout does not end with a metrics JSON.

Cost: each command that loads the model code spends ~12 s of CPU importing torch/open_clip/
transformers on a slow core, so the cases run two at a time in a module-scoped pool while the tiny
models they need (a 1-layer ViT stage-1 model, its features, a 1-layer caption model, 1 epoch each)
are trained in this process through the Python API; the cases that need those models start once
they exist. About 185 s of CPU in all (~95 s on an idle 2-core machine).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from retrieval_pretrain.foundation import errors
from retrieval_pretrain.foundation.errors import (
    EXIT_CODES,
    ConfigError,
    DatasetError,
    FeatureMismatchError,
    FeatureStoreError,
    ModelFolderError,
    VcapError,
    VideoReadError,
    WeightsUnavailableError,
)

VCAP = Path(sys.executable).with_name("vcap")
README = Path(__file__).resolve().parents[1] / "README.md"
TIMEOUT_S = 300  # one command; ~15 s on an idle 2-core machine
WORKERS = max(1, min(os.cpu_count() or 1, 4))

# The demo config made tiny (as tests/test_end_to_end.py): a 1-layer ViT tower, 4 frames, one
# stage-1 step; a 1-layer caption model, one stage-2 step; no DataLoader workers, no frame cache.
TINY = ["video.num_frames=4", "video.cache_frames=0", "pretrain.batch_size=4", "pretrain.epochs=1",
        "run.num_workers=0", "run.log_every=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
        "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1",
        "caption.batch_size=4", "caption.epochs=1", "caption.vocab_size=60", "caption.hidden_size=32",
        "caption.ffn_size=64", "caption.num_heads=2", "caption.decoder_layers=1", "caption.val_max_videos=0",
        "decode.num_beams=1", "decode.max_new_tokens=5", "decode.batch_size=4"]
# --config plus the tiny dataset; each {name} is filled in by Paths.fill.
CFG = ["--config", "{config}", "data.annotations={ann}", "data.videos={data}", *TINY]


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One bad input: the command (``{placeholders}`` filled per run), the error type it must end
    with, and what the last stderr line must name. ``models``: needs the trained tiny models."""

    id: str
    argv: tuple[str, ...]
    error: type[VcapError]
    names: tuple[str, ...]
    models: bool = False


def case(id: str, argv: list[str], error: type[VcapError], *names: str, models: bool = False) -> Case:
    return Case(id, tuple(argv), error, names, models)


CASES = [
    # ConfigError
    case("config-unknown-key-in-yaml", ["data", "check", "--config", "{bad_key_yaml}"], ConfigError,
         "{bad_key_yaml}", "video.num_frame"),
    case("config-bad-choice-run-device", ["data", "check", *CFG, "run.device=tpu"], ConfigError,
         "run.device", "tpu"),
    case("config-file-missing", ["data", "check", "--config", "{root}/no_such_config.yaml"], ConfigError,
         "{root}/no_such_config.yaml"),
    # DatasetError
    case("dataset-annotations-missing", ["data", "check", *CFG, "data.annotations={root}/no_such.jsonl"],
         DatasetError, "{root}/no_such.jsonl", "data.annotations"),
    case("dataset-msrvtt-json-malformed", ["data", "check", *CFG, "data.format=msrvtt",
                                           "data.annotations={truncated_msrvtt}"],
         DatasetError, "{truncated_msrvtt}", "not valid JSON"),
    case("dataset-predictions-not-json", ["score", "--predictions", "{truncated_predictions}",
                                          "--references", "{references}"],
         DatasetError, "{truncated_predictions}", "not valid JSON"),
    case("dataset-predictions-not-strings", ["score", "--predictions", "{list_predictions}",
                                             "--references", "{references}"],
         DatasetError, "{list_predictions}", "caption string"),
    case("dataset-references-missing", ["score", "--predictions", "{predictions}",
                                        "--references", "{root}/no_such_refs.json"],
         DatasetError, "{root}/no_such_refs.json"),
    case("dataset-eval-retrieval-unknown-split", ["eval-retrieval", "--model", "{s1}", "--split", "tset",
                                                  "--output", "{root}/out_er_split", *CFG],
         DatasetError, "{ann}", "'tset'", models=True),
    case("dataset-evaluate-empty-split", ["evaluate", "--model", "{s2}", "--split", "val",
                                          "--output", "{root}/out_ev_split", *CFG],
         DatasetError, "{ann}", "'val'", models=True),
    # ModelFolderError
    case("model-folder-missing", ["eval-retrieval", "--model", "{root}/no_such_model", *CFG],
         ModelFolderError, "{root}/no_such_model"),
    case("model-folder-no-safetensors", ["eval-retrieval", "--model", "{s1_no_weights}", *CFG],
         ModelFolderError, "{s1_no_weights}", "model.safetensors", models=True),
    case("model-folder-truncated-safetensors", ["eval-retrieval", "--model", "{s1_truncated}", *CFG],
         ModelFolderError, "{s1_truncated}/model.safetensors", models=True),
    case("model-folder-no-tokenizer", ["caption", "{good_video}", "--model", "{s2_no_tokenizer}"],
         ModelFolderError, "{s2_no_tokenizer}", "tokenizer.model", models=True),
    # WeightsUnavailableError: a local checkpoint file that is not there (never a tag: no download)
    case("weights-checkpoint-file-missing", ["pretrain", "--output", "{root}/out_weights", *CFG, "clip.custom=null",
                                             "clip.model=ViT-B-32", "clip.pretrained=/no/such/file.pt"],
         WeightsUnavailableError, "ViT-B-32", "/no/such/file.pt"),
    # Inside the long commands, not only in 'data check'
    case("dataset-annotations-missing-in-pretrain", ["pretrain", "--output", "{root}/out_pre_ann", *CFG,
                                                     "data.annotations={root}/no_such.jsonl"],
         DatasetError, "{root}/no_such.jsonl"),
    case("dataset-annotations-missing-in-extract", ["extract", "--model", "{s1}", "--output", "{root}/out_x_ann", *CFG,
                                                    "data.annotations={root}/no_such.jsonl"],
         DatasetError, "{root}/no_such.jsonl", models=True),
    case("config-impossible-epochs", ["pretrain", "--output", "{root}/out_epochs", *CFG, "pretrain.epochs=-1"],
         ConfigError, "pretrain.epochs", "-1"),
    case("config-custom-arch-typo", ["pretrain", "--output", "{root}/out_arch", *CFG,
                                     "clip.custom.vision_cfg={layers:1, width: 64}"],
         ConfigError, "clip.custom", "layers:1"),
    case("weights-pickle-with-code", ["pretrain", "--output", "{root}/out_pickle", *CFG,
                                      "clip.pretrained={evil_checkpoint}"],
         errors.WeightsUnavailableError, "{evil_checkpoint}", "posix.system"),
    case("config-init-from-other-architecture", ["train", "--features", "{feats}", "--output", "{root}/out_init",
                                                 *CFG, "--init-from", "{s2}", "caption.hidden_size=64"],
         ConfigError, "--init-from {s2}", "architecture differs", models=True),
    # FolderBusyError: another process holds the output folder's lock
    case("folder-busy-extract", ["extract", "--model", "{s1}", "--output", "{busy}", *CFG],
         errors.FolderBusyError, "{busy}", "in use", models=True),
    # TrainingDivergedError: a learning rate far too high; the loss is inf/NaN by step 2
    case("training-diverged", ["train", "--features", "{feats}", "--output", "{root}/out_diverged", *CFG,
                               "caption.lr=1e30", "caption.epochs=3"],
         errors.TrainingDivergedError, "{root}/out_diverged", "step 2", models=True),
    # StorageError: an output folder the file system refuses (sysfs: not even root may create one)
    case("storage-refused-output", ["pretrain", "--output", "/sys/vcap_output", *CFG],
         errors.StorageError, "/sys/vcap_output"),
    # FeatureStoreError
    case("features-not-a-feature-folder", ["train", "--features", "{data}", "--output", "{root}/out_train", *CFG],
         FeatureStoreError, "{data}"),
    case("features-from-another-tower", ["evaluate", "--model", "{s2}", "--features", "{feats_other}",
                                         "--output", "{root}/out_ev_feats", *CFG],
         FeatureMismatchError, "{feats_other}", models=True),
]

# Cases whose outcome is not one toolkit error line; checked by their own tests below.
OTHER = {
    "data-check-jsonl-bad-line": (["data", "check", *CFG, "data.annotations={jsonl_bad_line}"], False),
    "caption-all-unreadable": (["caption", "{bad_video}", "{root}/no_such_video.mp4", "--model", "{s2}"], True),
    "caption-one-good-one-bad": (["caption", "{good_video}", "{bad_video}", "--model", "{s2}"], True),
    "caption-device-tpu": (["caption", "{good_video}", "--model", "{s2}", "--device", "tpu"], True),
    "caption-device-cuda": (["caption", "{good_video}", "--model", "{s2}", "--device", "cuda"], True),
    "caption-folder-with-dead-links": (["caption", "{links}", "--model", "{s2}", "--json"], True),
    "extract-only-unreadable-videos": (["extract", "--model", "{s1}", "--output", "{root}/out_x_bad", *CFG,
                                        "data.annotations={all_bad_ann}"], True),
}


# ----------------------------------------------------------------------------- running


@dataclass
class Paths:
    root: Path
    values: dict[str, str] = field(default_factory=dict)

    def fill(self, items: tuple[str, ...] | list[str]) -> list[str]:
        """``{name}`` -> its path (other braces, as in YAML override values, stay)."""
        return [re.sub(r"\{(\w+)\}", lambda m: self.values[m.group(1)], s) for s in items]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "10000"}


def run_vcap(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VCAP), *argv], capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(),
                          cwd=cwd)


class _RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (self.command,)


def _bad_inputs(root: Path, ann: Path) -> dict[str, str]:
    """The bad files that need no model."""
    bad_key = root / "typo.yaml"
    bad_key.write_text(CONFIG_PATH.read_text().replace("  num_frames:", "  num_frame:"))
    assert "num_frame:" in bad_key.read_text()
    msrvtt = root / "videodatainfo.json"
    msrvtt.write_text('{"videos": [{"video_id": "video0", "split": "train"}], "sentences": [{"video_id": "vid')
    lines = ann.read_text().splitlines()
    jsonl_bad = root / "bad_line.jsonl"
    jsonl_bad.write_text("\n".join([lines[0], '{"video": "videos/x.mp4", "captions": ["a cat"], "split": "tr'
                                    , *lines[1:]]) + "\n")
    refs = root / "refs.json"
    refs.write_text(json.dumps({"video0": ["a man is cooking"], "video1": ["a dog runs"]}))
    preds = root / "preds.json"
    preds.write_text(json.dumps({"video0": "a man cooks", "video1": "a dog is running"}))
    truncated_preds = root / "preds_truncated.json"
    truncated_preds.write_text(preds.read_text()[:25])
    list_preds = root / "preds_lists.json"
    list_preds.write_text(json.dumps({"video0": ["a man cooks"], "video1": ["a dog is running"]}))
    bad_video = root / "notavideo.mp4"
    bad_video.write_text("hello, I am not an mp4\n")
    links = root / "links"  # a folder to caption: a link to a good video, a dead link, a link loop
    links.mkdir()
    os.symlink(ann.parent / json.loads(lines[0])["video"], links / "good.mp4")
    os.symlink(root / "gone.mp4", links / "dead.mp4")
    os.symlink(links / "loop_b", links / "loop_a")
    os.symlink(links / "loop_a", links / "loop_b")
    evil = root / "evil.pt"  # a pickle that would create {root}/PWNED if unpickled unchecked
    evil.write_bytes(pickle.dumps(_RunsCode(f"touch {root / 'PWNED'}"), protocol=2))
    all_bad = root / "all_bad.jsonl"  # every video of the dataset unreadable: one batch of failures only
    all_bad.write_text("".join(json.dumps({"video": str(bad_video), "captions": ["x"], "split": s}) + "\n"
                               for s in ("train", "test")))
    return {"all_bad_ann": str(all_bad), "links": str(links), "evil_checkpoint": str(evil), "busy": str(root / "busy_feats"),
            "bad_key_yaml": str(bad_key), "truncated_msrvtt": str(msrvtt), "jsonl_bad_line": str(jsonl_bad),
            "references": str(refs), "predictions": str(preds), "truncated_predictions": str(truncated_preds),
            "list_predictions": str(list_preds), "bad_video": str(bad_video)}


def _train_tiny_models(root: Path, ann: Path) -> dict[str, str]:
    """Stage 1 (1 step), its features, stage 2 (1 step) via the Python API; then broken copies."""
    from caption.config import load
    from caption.train import train as train_captioner
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train as pretrain

    cfg = load(CONFIG_PATH, [f"data.annotations={ann}", f"data.videos={ann.parent}", *TINY])
    s1 = pretrain(cfg, root / "s1")
    feats = root / "feats"
    extract_features(s1, cfg, feats)
    s2 = train_captioner(cfg, feats, root / "s2")

    no_weights = root / "s1_no_weights"
    shutil.copytree(s1, no_weights)
    (no_weights / "model.safetensors").unlink()
    truncated = root / "s1_truncated"
    shutil.copytree(s1, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    no_tok = root / "s2_no_tokenizer"
    shutil.copytree(s2, no_tok)
    (no_tok / "tokenizer.model").unlink()
    other = root / "feats_other"
    shutil.copytree(feats, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tower_fingerprint"] = "0123456789abcdef"  # as if extracted with another stage-1 model
    (other / "meta.json").write_text(json.dumps(meta))
    return {"s1": str(s1), "s2": str(s2), "feats": str(feats), "s1_no_weights": str(no_weights),
            "s1_truncated": str(truncated), "s2_no_tokenizer": str(no_tok), "feats_other": str(other)}


@dataclass
class Runs:
    paths: Paths
    futures: dict[str, Future]

    def get(self, key: str) -> tuple[subprocess.CompletedProcess, Paths]:
        """The finished command of case ``key`` (waits for it) and the paths it was run with."""
        return self.futures[key].result(), self.paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """Every case's command, started as early as possible (those needing no model at once)."""
    root = tmp_path_factory.mktemp("cli_errors")
    spec = demo_data.DemoSpec(num_train=4, num_val=0, num_test=2, frames=8, size=64, seed=3, captions_per_video=1)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    paths = Paths(root, {"root": str(root), "config": str(CONFIG_PATH), "ann": str(ann), "data": str(ann.parent),
                         **_bad_inputs(root, ann)})
    good = json.loads(ann.read_text().splitlines()[0])["video"]
    paths.values["good_video"] = str(ann.parent / good)
    holder = _hold_lock(Path(paths.values["busy"]))  # another "vcap extract" writing {busy}

    jobs = [(c.id, c.argv, c.models) for c in CASES] + [(k, tuple(a), m) for k, (a, m) in OTHER.items()]
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for key, argv, needs_models in jobs:
            if not needs_models:
                futures[key] = pool.submit(run_vcap, paths.fill(argv), root)
        try:
            paths.values.update(_train_tiny_models(root, ann))  # meanwhile, in this thread
        except Exception as e:  # the model-free cases still report; the others fail with this
            for key, _, needs_models in jobs:
                if needs_models:
                    futures[key] = Future()
                    futures[key].set_exception(RuntimeError(f"building the tiny models failed: {e!r}"))
        else:
            for key, argv, needs_models in jobs:
                if needs_models:
                    futures[key] = pool.submit(run_vcap, paths.fill(argv), root)
        yield Runs(paths, futures)
        # (leaving the with-block waits for anything still running)
    holder.kill()
    holder.wait()


def _hold_lock(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s lock (as a running ``vcap extract`` does) until killed."""
    code = ("import sys\nfrom retrieval_pretrain.foundation.folder_lock import folder_lock\n"
            f"with folder_lock({str(folder)!r}, 'vcap extract'):\n    print('held', flush=True)\n    sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _show(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout (end)\n{r.stdout[-1500:]}\n--- stderr (end)\n{r.stderr[-3000:]}"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_json(stdout: str) -> Any:
    """The last stdout line as a JSON object, or None when it is not one."""
    try:
        obj = json.loads(_last_line(stdout))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_a_toolkit_error_reaches_the_user_as_one_line_and_its_exit_code(runs, c):
    r, paths = runs.get(c.id)
    assert r.returncode == c.error.exit_code, _show(r)
    assert "Traceback" not in r.stderr, _show(r)
    last = _last_line(r.stderr)
    assert last.startswith(f"vcap: {c.error.kind}: "), _show(r)
    for name in paths.fill(c.names):
        assert name in last, f"{name!r} not named in the last stderr line:\n{last}"
    assert _last_json(r.stdout) is None, _show(r)


def test_every_toolkit_error_type_is_covered_and_has_a_documented_exit_code():
    types = [t for t in vars(errors).values()
             if isinstance(t, type) and issubclass(t, VcapError) and t is not VcapError]
    assert {ConfigError, DatasetError, VideoReadError, ModelFolderError, WeightsUnavailableError,
            FeatureStoreError, FeatureMismatchError} <= set(types)
    covered = {c.error for c in CASES} | {VideoReadError}  # VideoReadError: the caption tests below
    assert set(types) <= covered, f"no CLI case for {set(types) - covered}"
    for t in types:
        assert t.exit_code in EXIT_CODES, t
        assert t.kind and t.kind != VcapError.kind, t
    direct = [t for t in types if VcapError in t.__bases__]  # subtypes share their parent's code
    assert len({t.exit_code for t in direct}) == len(direct), {t.__name__: t.exit_code for t in direct}
    assert not {t.exit_code for t in direct} & {0, 1, 130}


def test_help_epilog_lists_the_exit_codes_of_errors_py():
    r = run_vcap(["--help"], Path.cwd())
    assert r.returncode == 0, _show(r)
    text = " ".join(r.stdout.split())
    assert "Exit codes: " in text, text[-800:]
    listed = text.split("Exit codes: ", 1)[1]
    codes = [int(m) for m in re.findall(r"(?:^|; )(\d+) ", listed)]
    assert codes == list(EXIT_CODES), (codes, list(EXIT_CODES))
    for code, what in EXIT_CODES.items():
        assert f"{code} {' '.join(what.split())}" in listed, code


def test_readme_lists_the_exit_codes_of_errors_py():
    """errors.py and vcap_toolkit/cli/main.py refer users to README.md for the exit codes: its table must
    hold exactly the codes of EXIT_CODES, in order."""
    text = README.read_text()
    assert "Exit codes:" in text, "README.md has no 'Exit codes:' section"
    section = text.split("Exit codes:", 1)[1].split("\n## ", 1)[0]
    rows = [int(code) for code in re.findall(r"^\| *(\d+) *\|", section, flags=re.M)]
    assert rows == list(EXIT_CODES), (rows, list(EXIT_CODES))


def test_data_check_names_a_malformed_jsonl_line_and_exits_1(runs):
    """A line that is not JSON is one skipped entry, not an unreadable file: 'vcap data check'
    reports it (file:line) and exits 1 - the summary JSON is still the last line of stdout."""
    r, paths = runs.get("data-check-jsonl-bad-line")
    assert r.returncode == 1, _show(r)
    assert "Traceback" not in r.stderr, _show(r)
    bad = paths.values["jsonl_bad_line"]
    assert f"{bad}:2: not valid JSON" in r.stderr, _show(r)
    assert _last_line(r.stderr) == "NOT OK", _show(r)
    summary = _last_json(r.stdout)
    assert summary is not None and summary["ok"] is False and summary["problem_count"] == 1, _show(r)
    assert summary["problems"][0]["source"] == f"{bad}:2"
    assert summary["total"]["videos"] == 6  # the other entries are all read


def test_caption_with_no_readable_video_exits_4_and_names_each(runs):
    r, paths = runs.get("caption-all-unreadable")
    assert r.returncode == VideoReadError.exit_code, _show(r)
    assert "Traceback" not in r.stderr, _show(r)
    for bad in (paths.values["bad_video"], f"{paths.root}/no_such_video.mp4"):
        assert bad in r.stderr, _show(r)
    assert r.stdout.strip() == "", _show(r)


def test_caption_with_no_readable_video_ends_with_a_video_error_line(runs):
    r, paths = runs.get("caption-all-unreadable")
    last = _last_line(r.stderr)
    assert last.startswith(f"vcap: {VideoReadError.kind}: "), _show(r)
    assert paths.values["bad_video"] in r.stderr and "no_such_video.mp4" in last, _show(r)


def test_caption_with_one_good_and_one_bad_video_captions_the_good_one_and_exits_1(runs):
    r, paths = runs.get("caption-one-good-one-bad")
    assert r.returncode == 1, _show(r)
    assert "Traceback" not in r.stderr, _show(r)
    good, bad = paths.values["good_video"], paths.values["bad_video"]
    lines = dict(line.split("\t", 1) for line in r.stdout.strip().splitlines())
    assert set(lines) == {good} and lines[good].strip(), _show(r)
    assert bad in r.stderr and good not in r.stderr, _show(r)
    assert _last_json(r.stdout) is None


def test_caption_of_a_folder_with_dead_links_names_each_and_exits_1(runs):
    r, paths = runs.get("caption-folder-with-dead-links")
    assert r.returncode == 1, _show(r)
    assert "Traceback" not in r.stderr, _show(r)
    links = Path(paths.values["links"])
    result = _last_json(r.stdout)
    assert result is not None and set(result["captions"]) == {str(links / "good.mp4")}, _show(r)
    assert result["captions"][str(links / "good.mp4")].strip()
    assert result["failed"] == {
        str(links / "dead.mp4"): f"{links / 'dead.mp4'}: broken symbolic link (to {paths.root / 'gone.mp4'}, "
                                 "which does not exist)",
        str(links / "loop_a"): f"{links / 'loop_a'}: symbolic link loop",
        str(links / "loop_b"): f"{links / 'loop_b'}: symbolic link loop"}, _show(r)
    for path in result["failed"]:
        assert f"warning: not captioned: {path}: " in r.stderr, _show(r)


def test_extract_with_only_unreadable_videos_names_them_and_exits_1(runs):
    r, paths = runs.get("extract-only-unreadable-videos")
    assert r.returncode == 1 and "Traceback" not in r.stderr, _show(r)
    report = _last_json(r.stdout)
    assert report is not None and (report["extracted"], report["failed"]) == (0, 1), _show(r)
    [failure] = json.loads((paths.root / "out_x_bad" / "failures.json").read_text())
    assert failure["path"] == paths.values["bad_video"]


def test_a_diverged_run_writes_no_model(runs):
    r, paths = runs.get("training-diverged")
    assert r.returncode == errors.TrainingDivergedError.exit_code, _show(r)
    out = paths.root / "out_diverged"
    assert not (out / "model").exists(), sorted(p.name for p in out.iterdir())
    assert f"{out / 'model'} was not written" in r.stderr and "checkpoints/step_1" in r.stderr, _show(r)


def test_a_refused_pickle_was_not_run_and_is_named_in_a_warning(runs):
    r, paths = runs.get("weights-pickle-with-code")
    assert f"warning: {paths.values['evil_checkpoint']} holds pickled code (posix.system); it was not run" in r.stderr
    assert not (paths.root / "PWNED").exists()


def test_caption_with_an_unknown_device_is_a_usage_error(runs):
    r, _ = runs.get("caption-device-tpu")
    assert "Traceback" not in r.stderr, _show(r)
    assert r.returncode == ConfigError.exit_code, _show(r)
    last = _last_line(r.stderr)
    assert last.startswith("vcap") and "tpu" in last, _show(r)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_caption_on_cuda_without_a_gpu_says_so_in_one_line(runs):
    if _cuda():
        pytest.skip("a GPU is available here")
    r, _ = runs.get("caption-device-cuda")
    assert "Traceback" not in r.stderr, _show(r)
    if r.returncode != 0:
        last = _last_line(r.stderr)
        assert last.startswith("vcap") and "cuda" in last.lower(), _show(r)


@pytest.mark.parametrize("custom", [False, True], ids=["ViT-B-32", "custom-arch"])
def test_weights_guidance_for_a_missing_local_file_does_not_suggest_downloading_that_path(custom):
    from caption.config import load
    from retrieval_pretrain.modeling.backbones import build_clip

    cfg = load(CONFIG_PATH, TINY + ["clip.model=ViT-B-32", "clip.pretrained=/no/such/file.pt"]
               + ([] if custom else ["clip.custom=null"]))
    with pytest.raises(WeightsUnavailableError) as e:
        build_clip(cfg.clip)
    message = str(e.value)
    assert "/no/such/file.pt" in message
    assert "pretrained='/no/such/file.pt')" not in message, message
    assert "create_model('custom'" not in message, message
