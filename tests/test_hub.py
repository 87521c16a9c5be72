"""Models by name (``retrieval_pretrain.foundation.hub``) and ``vcap push``'s model card, with the real
``huggingface_hub`` client and no network: a Hugging Face cache laid out here as the library lays it
out (checked by its own ``scan_cache_dir``), offline mode, and a Hub endpoint that refuses connections.

The models are real: the stage-1 and caption folders of ``tests/data/legacy_v1.tar.xz`` (with the
numbers the previous release computed with them), a tiny stage-1 model saved here, and a tiny
two-stage run trained here for the card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants, scan_cache_dir

from caption.pipeline import TOWER_DIR, CaptionPipeline
from retrieval_pretrain.foundation.errors import ModelFolderError
from retrieval_pretrain.foundation.hub import parse_model_id, resolve_model_folder
from retrieval_pretrain.modeling.model_folder import from_pretrained, model_fingerprint, read_spec, save_pretrained
from retrieval_pretrain.modeling.parts import build_video_text_model
from retrieval_pretrain.reading.data_config import VideoConfig
from retrieval_pretrain.stage1.config import ClipConfig, PretrainConfig, RetrievalConfig
from vcap_toolkit.cli.main import main

ARCHIVE = Path(__file__).parent / "data" / "legacy_v1.tar.xz"
VCAP = Path(sys.executable).with_name("vcap")
MAIN, V2 = "1" * 40, "2" * 40  # commit hashes of the cached revisions
TINY = {"embed_dim": 32, "vision_cfg": {"layers": 1, "width": 32, "patch_size": 16, "image_size": 32, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}

pytestmark = pytest.mark.usefixtures("one_thread")


def cache_model(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """Put ``folder`` into the Hugging Face cache ``cache`` as revision ``commit`` of ``repo_id``, laid
    out as ``huggingface_hub`` downloads do: ``blobs/<hash>``, ``snapshots/<commit>/<file>`` as relative
    links to the blobs, ``refs/<branch>`` holding the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = repo / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("legacy")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    return folder / "legacy_v1"


@pytest.fixture(scope="module")
def other_tower(tmp_path_factory) -> Path:
    """A second stage-1 model (another architecture than the legacy one): the cache's v2 revision. Its
    seed is not the one training starts with, so a run that ignored init_from would hold other weights."""
    torch.manual_seed(1234)
    cfg = RetrievalConfig(clip=ClipConfig(model="tiny", pretrained=None, custom=TINY),
                          pretrain=PretrainConfig(head="meanP", max_words=8), video=VideoConfig(num_frames=2))
    return save_pretrained(build_video_text_model(cfg), tmp_path_factory.mktemp("other") / "model")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, legacy, other_tower) -> Path:
    """vcap-test/tower: main = the legacy stage-1 model, v2 = another one; vcap-test/captioner: main =
    the legacy caption model (with its video tower)."""
    root = tmp_path_factory.mktemp("hf") / "hub"
    cache_model(root, "vcap-test/tower", legacy / "stage1_model", MAIN)
    cache_model(root, "vcap-test/tower", other_tower, V2, refs=("v2",))
    cache_model(root, "vcap-test/captioner", legacy / "stage2_model", MAIN)
    return root


@pytest.fixture
def offline(cache, monkeypatch) -> Path:
    """The cache and offline mode, as huggingface_hub reads them from HF_HUB_CACHE and HF_HUB_OFFLINE
    (once, when it is imported: these are the values it would have read)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def unreachable(cache, monkeypatch) -> Path:
    """Online mode with a Hub that refuses every connection (HF_ENDPOINT at a closed port)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    return cache


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("text, parsed", [
    ("org/name", ("org/name", None)), ("org/name@v2", ("org/name", "v2")), (f"org/name@{MAIN}", ("org/name", MAIN)),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")), ("./org/name", None), ("/abs/org/name", None),
    ("~/name", None), ("runs/s1/model", None), ("name", None), ("org/na me", None), ("org/--x", None), ("", None),
])
def test_what_is_read_as_a_hub_id(text, parsed):
    assert parse_model_id(text) == parsed


def test_a_folder_here_wins_over_the_id(offline, other_tower, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(other_tower, tmp_path / "vcap-test" / "tower")
    assert parse_model_id("vcap-test/tower") is None
    assert read_spec("vcap-test/tower").num_frames == 2  # the local copy of other_tower, not the cache's main
    with pytest.raises(ModelFolderError, match="model folder not found: vcap-test/missing"):
        read_spec("./vcap-test/missing")  # written as a path: never looked up


def test_the_cache_is_laid_out_as_huggingface_hub_reads_it(cache):
    info = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert {rev.commit_hash: set(rev.refs) for rev in info["vcap-test/tower"].revisions} == {MAIN: {"main"},
                                                                                           V2: {"v2"}}
    assert info["vcap-test/captioner"].nb_files == 5


# ----------------------------------------------------------------------------- resolution, offline


def test_a_cached_revision_loads_by_branch_tag_and_commit(offline, legacy, other_tower):
    snapshots = offline / "models--vcap-test--tower" / "snapshots"
    assert resolve_model_folder("vcap-test/tower") == snapshots / MAIN
    for ref in ("vcap-test/tower@v2", f"vcap-test/tower@{V2}"):
        assert model_fingerprint(resolve_model_folder(ref)) == model_fingerprint(other_tower)
    model, spec = from_pretrained("vcap-test/tower")  # the strict loader, through the id
    local, _ = from_pretrained(legacy / "stage1_model")
    assert spec == read_spec(legacy / "stage1_model")
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), local.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_a_caption_model_by_name_gives_the_recorded_logits(offline, legacy):
    pipe = CaptionPipeline.from_pretrained("vcap-test/captioner", device="cpu")
    assert pipe.model.config.model_type == "vcap-caption" and pipe.tower_spec.num_frames == 4
    want = json.loads((legacy / "expected.json").read_text())
    video = want["videos"][0]
    captions = pipe.caption([legacy / "videos" / f"{video}.mp4"], num_beams=2)
    assert list(captions.values()) == [want["captions"][video]]


@pytest.mark.parametrize("ref, says", [
    ("vcap-test/nothing", "HF_HUB_OFFLINE is set and it is not in the cache"),
    ("vcap-test/tower@v9", "HF_HUB_OFFLINE is set and it is not in the cache"),
    (f"vcap-test/tower@{'3' * 40}", "HF_HUB_OFFLINE is set and it is not in the cache"),
])
def test_a_missing_id_or_revision_offline_is_one_line_with_exit_5(offline, ref, says):
    with pytest.raises(ModelFolderError) as e:
        resolve_model_folder(ref, "--model")
    text = str(e.value)
    assert e.value.exit_code == 5 and "\n" not in text
    assert text.startswith(f"--model {ref}: no folder of that name here") and says in text
    repo, _, rev = ref.partition("@")
    assert f"hf download {repo}" + (f" --revision {rev}" if rev else "") in text and "HF_HUB_OFFLINE=1" in text


def test_an_unreachable_hub_falls_back_to_the_cache_and_says_what_to_do(unreachable, legacy):
    t0 = time.perf_counter()
    assert read_spec("vcap-test/tower") == read_spec(legacy / "stage1_model")  # cached: found without the Hub
    with pytest.raises(ModelFolderError) as e:
        resolve_model_folder("vcap-test/nothing", "--model")
    assert time.perf_counter() - t0 < 10
    text = str(e.value)
    assert f"the Hub ({constants.ENDPOINT}) cannot be reached (ConnectError" in text
    assert "hf download vcap-test/nothing" in text and "HF_HUB_OFFLINE=1" in text and "./vcap-test/nothing" in text


def test_pretrain_init_from_an_id_that_cannot_be_had_claims_nothing(offline, tmp_path):
    from caption.config import load
    from caption.demo import CONFIG_PATH
    from retrieval_pretrain.stage1.train import train

    cfg = load(CONFIG_PATH, ["pretrain.init_from=vcap-test/nothing", f"data.annotations={tmp_path / 'a.jsonl'}"])
    with pytest.raises(ModelFolderError, match="^pretrain.init_from vcap-test/nothing: no folder"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "run" / "config.json").exists()


# ----------------------------------------------------------------------------- the command line, real env


def _vcap(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VCAP), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2", **env})


def test_vcap_caption_by_name_offline(cache, legacy):
    want = json.loads((legacy / "expected.json").read_text())
    videos = [str(legacy / "videos" / f"{v}.mp4") for v in want["videos"]]
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = _vcap(["caption", *videos, "--model", f"vcap-test/captioner@{MAIN}", "--beam", "2", "--json"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])["captions"]
    assert {Path(p).stem: c for p, c in got.items()} == want["captions"]


def test_every_model_option_takes_an_id(offline, legacy, capsys):
    video = str(sorted((legacy / "videos").glob("*.mp4"))[0])
    # classify tells a folder from an open_clip name by looking at the disk: the id is resolved first
    assert main(["classify", video, "--model", "vcap-test/tower@v2", "--labels", "a,b", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]) == {video}
    assert main(["caption", video, "--model", "vcap-test/captioner@v9"]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vcap: model folder error: --model vcap-test/captioner@v9: no folder")


def test_vcap_with_no_network_says_what_to_do(cache, tmp_path):
    env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    r = _vcap(["eval-retrieval", "--model", "vcap-test/nothing", "--config", str(tmp_path / "c.yaml")], env, 60)
    assert r.returncode == 5 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot be reached" in r.stderr and "hf download vcap-test/nothing" in r.stderr


# ----------------------------------------------------------------------------- vcap push and the card


def test_pretrain_init_from_an_id_starts_from_the_cached_weights(offline, legacy, other_tower, tmp_path):
    from retrieval_pretrain.foundation.accelerate_setup import make_accelerator
    from retrieval_pretrain.stage1.train import setup

    ann = tmp_path / "a.jsonl"
    ann.write_text("".join(json.dumps({"video": f"{p.name}", "captions": [p.stem.replace("_", " ")], "split": "train"})
                           + "\n" for p in sorted((legacy / "videos").glob("*.mp4"))))
    cfg = RetrievalConfig(clip=ClipConfig(model="tiny", pretrained=None, custom=TINY),
                          pretrain=PretrainConfig(head="meanP", max_words=8, batch_size=2, epochs=1,
                                                  init_from="vcap-test/tower@v2"),
                          video=VideoConfig(num_frames=2))
    cfg.data.annotations, cfg.data.videos, cfg.run.num_workers = str(ann), str(legacy / "videos"), 0
    run = setup(cfg, tmp_path / "run", make_accelerator("no", 1, "cpu", 0))
    started = run.accelerator.unwrap_model(run.model).state_dict()
    cached, _ = from_pretrained(other_tower)
    assert all(torch.equal(started[k], v) for k, v in cached.state_dict().items())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["pretrain.init_from"] == "vcap-test/tower@v2"


# ----------------------------------------------------------------------------- vcap push and the card

S1_TINY = ["video.num_frames=4", "pretrain.batch_size=8", "pretrain.epochs=2", "run.num_workers=0",
           "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
           "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0"]
S2_TINY = ["caption.hidden_size=64", "caption.ffn_size=128", "caption.dropout=0.0", "caption.batch_size=16",
           "caption.select_by=loss", "decode.num_beams=1", "run.log_every=1", "caption.vocab_size=200",
           "caption.epochs=3", "caption.lr=1e-2"]


@pytest.fixture(scope="module")
def run2(tmp_path_factory) -> Path:
    """A real two-stage run on 11 demo clips (seconds): RUN/model, FEATS, RUN2/model, and the test
    split evaluated into RUN2/eval_test/metrics.json. Returns RUN2/model."""
    from caption.config import load
    from caption.demo import CONFIG_PATH
    from caption.demo import data as demo_data
    from caption.evaluate import evaluate
    from caption.train import train as train_captions
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train as train_retrieval

    root = tmp_path_factory.mktemp("run")
    spec = demo_data.DemoSpec(num_train=8, num_val=2, num_test=1, frames=8, size=64, seed=11, captions_per_video=2)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    data = [f"data.annotations={ann}", f"data.videos={ann.parent}"]
    stage1 = train_retrieval(load(CONFIG_PATH, data + S1_TINY), root / "s1")
    extract_features(stage1, load(CONFIG_PATH, data + S1_TINY), root / "feats")
    cfg = load(CONFIG_PATH, data + S1_TINY + S2_TINY)
    model = train_captions(cfg, root / "feats", root / "xe")
    evaluate(model, cfg, features=root / "feats", split="test")
    return model


def _push(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["push", *args])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()[-1] if err.strip() else ""


def test_the_card_is_checked_against_the_folder_it_describes(run2, tmp_path, capsys):
    out = tmp_path / "dry"
    code, stdout, _ = _push([str(run2), "vcap-test/tiny", "--dry-run", str(out)], capsys)
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    files = ["config.json", "model.safetensors", "tokenizer.model", f"{TOWER_DIR}/config.json",
             f"{TOWER_DIR}/model.safetensors"]
    assert summary["kind"] == "caption" and summary["files"] == [*files, "README.md"]
    listed = [line.split("\t") for line in (out / "files.txt").read_text().splitlines()]
    assert [row[:2] for row in listed[:-1]] == [[f, str((run2 / f).stat().st_size)] for f in files]
    assert [row[2] for row in listed[:-1]] == [hashlib.sha256((run2 / f).read_bytes()).hexdigest() for f in files]
    assert listed[-1][0] == "README.md" and listed[-1][2] == hashlib.sha256((out / "README.md").read_bytes()).hexdigest()

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "vcap-toolkit" and "video-captioning" in card.data.tags
    assert {"bleu", "meteor", "rouge", "cider"} <= set(card.data.metrics)
    config, tower = json.loads((run2 / "config.json").read_text()), read_spec(run2 / TOWER_DIR)
    run_config = json.loads((run2.parent / "config.json").read_text())
    rows = [f"| frames per video | {tower.num_frames} (sampling: {tower.eval_sampling}) |",
            f"| image size | {tower.image_size} px |", f"| embedding width | {tower.embed_dim} |",
            f"| caption model | {config['encoder_layers']}-layer encoder + {config['decoder_layers']}-layer decoder, "
            f"width {config['d_model']}, vocabulary {config['vocab_size']} |",
            f"| decoding | length_penalty 1, max_new_tokens {config['decode']['max_new_tokens']}, no_repeat_ngram_size 0, "
            f"num_beams {config['decode']['num_beams']} |",
            f"| data.annotations | {run_config['data']['annotations']} |", "| data.format | jsonl |",
            "vcap caption VIDEO_OR_FOLDER --model vcap-test/tiny\n"]
    metrics = json.loads((run2.parent / "eval_test" / "metrics.json").read_text())
    rows += [f"| eval_test/metrics.json, split test | `{k}` | {metrics[k]:.4g} |" for k in ("BLEU-4", "CIDEr")]
    log = [json.loads(x) for x in (run2.parent / "log.jsonl").read_text().splitlines()]
    best = [r for r in log if "best_epoch" in r][-1]["best_epoch"]
    chosen = next(r for r in log if r.get("epoch") == best and "val_loss" in r)
    rows.append(f"| validation, epoch {best} (the model's) | `val_loss` | {chosen['val_loss']:.4g} |")
    missing = [row for row in rows if row not in card.content]
    assert not missing, card.content
    blocks = card.content.split("```yaml\n")[1:]
    assert yaml.safe_load(blocks[0].split("```")[0]) == run_config  # the config it was trained on
    assert yaml.safe_load(blocks[1].split("```")[0]) == json.loads((run2.parent.parent / "s1" / "config.json").read_text())


def test_a_stage1_card_says_how_to_use_it(run2, tmp_path, capsys):
    stage1 = run2.parent.parent / "s1" / "model"
    code, stdout, _ = _push([str(stage1), "vcap-test/tower1", "--dry-run", str(tmp_path / "dry")], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["files"] == ["config.json", "model.safetensors",
                                                                                     "README.md"]
    card = ModelCard.load(tmp_path / "dry" / "README.md")
    spec = read_spec(stage1)
    assert "video-text-retrieval" in card.data.tags and card.data.metrics is None  # nothing evaluated beside it
    for row in (f"| temporal head | {spec.head} (1 layer) |", f"| trained on | annotations {spec.trained_on['annotations']}",
                "vcap classify VIDEO_OR_FOLDER --model vcap-test/tower1", "pretrain.init_from=vcap-test/tower1"):
        assert row in card.content


def test_what_push_uploads_loads_back_by_name(run2, tmp_path, capsys, monkeypatch):
    assert _push([str(run2), "vcap-test/tiny", "--dry-run", str(tmp_path / "dry")], capsys)[0] == 0
    staged = tmp_path / "staged"  # the listed files, as the Hub would serve them
    for line in (tmp_path / "dry" / "files.txt").read_text().splitlines():
        name = line.split("\t")[0]
        source = tmp_path / "dry" / name if name == "README.md" else run2 / name
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staged / name)
    cache_model(tmp_path / "hub", "vcap-test/tiny", staged, MAIN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    videos = sorted((run2.parent.parent / "data" / "videos").glob("*.mp4"))[:3]
    by_name = CaptionPipeline.from_pretrained("vcap-test/tiny", device="cpu").caption(videos)
    assert by_name == CaptionPipeline.from_pretrained(run2, device="cpu").caption(videos)


def test_push_refuses_what_is_not_a_vcap_model_folder(run2, tmp_path, capsys):
    code, _, err = _push([str(run2.parent), "vcap-test/tiny", "--dry-run", str(tmp_path / "d")], capsys)
    assert code == 5 and err.startswith(f"vcap: model folder error: {run2.parent} is not a vcap model folder")
    cut = tmp_path / "cut"
    shutil.copytree(run2, cut)
    weights = cut / TOWER_DIR / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = _push([str(cut), "vcap-test/tiny", "--dry-run", str(tmp_path / "d")], capsys)
    assert code == 5 and err.startswith("vcap: model folder error:") and not (tmp_path / "d").exists()
    assert _push([str(run2), "tiny", "--dry-run", str(tmp_path / "d")], capsys)[:3:2] == (
        2, "vcap: config error: tiny: write the repository as org/name (your user name or an organisation, a slash, "
           "the model's name)")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = _push([str(run2), "vcap-test/tiny", "--dry-run", str(tmp_path / "busy")], capsys)
    assert code == 2 and "holds other files (notes.txt)" in err and (tmp_path / "busy" / "notes.txt").is_file()


def test_push_without_the_hub_uploads_nothing_and_says_why(run2, capsys, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    code, _, err = _push([str(run2), "vcap-test/tiny", "--token", "hf_not_a_token"], capsys)
    assert code == 10
    assert err.startswith(f"vcap: cannot write: vcap-test/tiny: nothing was uploaded: the Hub ({constants.ENDPOINT}) "
                          "cannot be reached (ConnectError")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = _push([str(run2), "vcap-test/tiny", "--token", "hf_not_a_token"], capsys)
    assert code == 10 and err.endswith("nothing was uploaded: HF_HUB_OFFLINE is set; unset it on a machine with "
                                       "internet to push")
