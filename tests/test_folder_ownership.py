"""Issue 25, class 1 and the search index's reruns: no folder the toolkit writes can destroy a user's work.

* Every writer (``vcap interpolate``, ``index``, ``extract``, ``pretrain``, ``train``, ``demo``
  for folders; ``score``, ``evaluate``, ``eval-retrieval``, ``eval-classify``, ``caption --report``,
  ``report`` for files) pointed at what it did not make - a copy of a real stage-1 run folder, a
  real caption model folder (the previous release's), a folder of the user's files - is refused with
  one line and exit 2, and every file there is still there, byte for byte. A rerun into its own
  folder, and into one an earlier release wrote (no ownership record), still works
  (``retrieval_pretrain.foundation.ownership``).
* ``vcap index`` reruns: a cut or edited shard is removed and its videos embedded again, saying so;
  an indexed video that is gone or has become unreadable loses its row, is listed and counted.
* The folder lock ends with the process that took it, even when forked workers outlive it.

The commands run through ``vcap_toolkit.cli.main.main`` in this process (the models are tiny and
already imported), two of them also through the installed ``vcap`` script.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_clips import cli_args, make_clips

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo.run import DEMO
from retrieval_pretrain.foundation.errors import ConfigError, FeatureStoreError, FolderBusyError
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.foundation.ownership import (
    METRICS,
    PREDICTIONS,
    RECORD,
    FolderKind,
    claim_file,
    claim_folder,
    read_record,
)
from vcap_toolkit.cli.main import main
from vcap_toolkit.jobs.search import VideoIndex, build_index

VCAP = Path(sys.executable).with_name("vcap")
ARCHIVE = Path(__file__).parent / "data" / "legacy_v1.tar.xz"
VISION = "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}"
TINY = ["video.num_frames=4", "pretrain.head_layers=1", "clip.custom.text_cfg.layers=1", VISION,
        "pretrain.batch_size=4", "pretrain.epochs=1", "pretrain.save_every=1", "run.num_workers=0",
        "video.cache_frames=0", "caption.batch_size=4", "caption.epochs=1", "caption.vocab_size=60",
        "caption.hidden_size=32", "caption.ffn_size=64", "caption.num_heads=2", "caption.decoder_layers=1",
        "caption.val_max_videos=0", "decode.num_beams=1", "decode.max_new_tokens=5"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Real material: 10 demo clips, a real 1-epoch stage-1 run (checkpoints, log, model), its
    features, and the previous release's caption model folder."""
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train

    root = tmp_path_factory.mktemp("own")
    data = make_clips(root / "data", num_test=2)
    cfg = load(CONFIG_PATH, [*cli_args(data)[2:], *TINY])
    model = train(cfg, root / "run")
    extract_features(model, cfg, root / "feats")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return {"root": root, "data": data, "run": root / "run", "model": model, "feats": root / "feats",
            "caption_model": root / "legacy_v1" / "stage2_model"}


def _user_folder(folder: Path) -> Path:
    """A folder of the user's own files, named as the toolkit's outputs are."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("three weeks of notes\n")
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.93, "by": "my own script"}))
    (folder / "predictions.json").write_text("my captions, not JSON")
    (folder / "report.html").write_text("<html><body>my page</body></html>\n")
    (folder / "log.jsonl").write_text('{"my": "log"}\n')
    return folder


def _victims(made: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    run, model = tmp_path / "run_copy", tmp_path / "caption_model_copy"
    shutil.copytree(made["run"], run)
    shutil.copytree(made["caption_model"], model)
    return {"a copy of a stage-1 run folder": run, "a caption model folder": model,
            "a folder of user files": _user_folder(tmp_path / "mine")}


def _snapshot(folder: Path) -> dict[str, str | None]:
    """Every entry under ``folder`` (hidden ones too): the SHA-256 of each file, None for a folder. A
    run folder's ``.lock`` only by its presence: a training command locks its own kind of folder
    before the run rule refuses it, and writes its holder line there."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() and p.name != ".lock" else None for p in sorted(folder.rglob("*"))}


def _refused(argv: list[str], capsys, *names: str) -> str:
    """Run ``vcap argv``: exit 2 and one line ``vcap: config error: ...`` naming ``names``."""
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (argv, code, out.err[-3000:])
    assert lines[0].startswith("vcap: config error: "), lines[0]
    assert all(n in lines[0] for n in names), (names, lines[0])
    assert not out.out.strip(), out.out
    return lines[0]


# ----------------------------------------------------------------------------- writers of folders


def _folder_writers(made: dict[str, Path]) -> dict[str, list[str]]:
    cfg = cli_args(made["data"], *TINY)
    clips = str(made["data"] / "videos")
    return {
        "interpolate": ["interpolate", "--base", str(made["model"]), "--finetuned", str(made["model"]), "--alpha",
                        "0.5", "--output"],
        "index": ["index", clips, "--model", str(made["model"]), "--num-workers", "0", "--output"],
        "extract": ["extract", "--model", str(made["model"]), *cfg, "--output"],
        "pretrain": ["pretrain", *cfg, "--output"],
        "train": ["train", "--features", str(made["feats"]), *cfg, "--output"],
        "demo": ["demo", "--quick", "--output"],
    }


@pytest.mark.parametrize("writer", ["interpolate", "index", "extract", "pretrain", "train", "demo"])
def test_a_folder_writer_refuses_what_it_did_not_make_and_touches_nothing(made, tmp_path, capsys, writer):
    argv = _folder_writers(made)[writer]
    for what, victim in _victims(made, tmp_path).items():
        before = _snapshot(victim)
        line = _refused([*argv, str(victim)], capsys, str(victim))
        assert _snapshot(victim) == before, (writer, what)  # every file there, byte for byte; nothing added
        if writer not in ("pretrain", "train") or what != "a copy of a stage-1 run folder":
            assert "nothing was changed" in line and ("holding other files" in line or "not a" in line), line
        else:  # a run folder is the training commands' own kind: the run rule refuses it (it holds a run)
            assert "already holds a run" in line


def test_interpolate_replaces_only_its_own_folder(made, tmp_path, capsys):
    out, argv = tmp_path / "patched", _folder_writers(made)["interpolate"]
    assert main([*argv, str(out)]) == 0
    assert read_record(out) == {"format": 1, "kind": "interpolated model folder", "command": "vcap interpolate"}
    first = _snapshot(out)
    assert main([*argv, str(out)]) == 0  # a rerun replaces it: the same model, bit for bit
    assert _snapshot(out) == first
    (out / RECORD).unlink()  # as an earlier release wrote it: its config.json records the interpolation
    assert main([*argv, str(out)]) == 0 and read_record(out)["kind"] == "interpolated model folder"
    (out / "notes.txt").write_text("mine")  # swapped in whole, the folder would lose this file
    before = _snapshot(out)
    line = _refused([*argv, str(out)], capsys, "notes.txt", "did not write")
    assert "replacing the folder would delete" in line and _snapshot(out) == before
    shutil.copytree(made["model"], tmp_path / "trained")  # a trained model folder (no interpolation recorded)
    _refused([*argv, str(tmp_path / "trained")], capsys, "holding other files", "config.json")


def test_extract_and_index_rerun_into_their_own_and_earlier_folders(made, tmp_path, capsys):
    writers = _folder_writers(made)
    for name in ("extract", "index"):
        out = tmp_path / name
        assert main([*writers[name], str(out)]) == 0, capsys.readouterr().err[-2000:]
        assert read_record(out)["command"] == f"vcap {name}"
        (out / RECORD).unlink()  # written before the records: recognised by its meta.json, adopted
        capsys.readouterr()
        assert main([*writers[name], str(out)]) == 0, capsys.readouterr().err[-2000:]
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["done_before"] == report["total"] == 10 and read_record(out)["command"] == f"vcap {name}"
    for other in ("extract", "index"):  # one's folder is not the other's
        target = tmp_path / ("index" if other == "extract" else "extract")
        before = _snapshot(target)
        line = _refused([*writers[other], str(target)], capsys)
        assert ("a search index" if other == "extract" else "a feature folder") in line and _snapshot(target) == before


def test_legacy_and_recorded_folders_of_each_kind_are_accepted(made, tmp_path):
    """Folders written before the records: recognisably the kind - accepted and recorded; a lookalike
    with one file more, or a record of another kind or unreadable, refused."""
    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    (demo / "data" / "manifest.json").write_text("{}")
    (demo / "stage1").mkdir()
    claim_folder(demo, DEMO)
    assert read_record(demo)["kind"] == DEMO.kind
    claim_folder(demo, DEMO)  # recorded: a rerun is fine
    (tmp_path / "d2" / "stage1").mkdir(parents=True)  # no generated dataset in it: not recognisably the demo's
    with pytest.raises(ConfigError, match="holding other files \\(stage1/\\)"):
        claim_folder(tmp_path / "d2", DEMO)
    other = FolderKind("search index", "vcap index")
    with pytest.raises(ConfigError, match="a vcap demo folder \\(its .vcap.json: made by vcap demo\\), not a search"):
        claim_folder(demo, other)
    for unreadable in ("[1, 2]", '{"format": 99, "kind": "vcap demo folder"}', '{"format": "1", "kind": "vcap demo folder"}',
                       '{"format": true, "kind": "vcap demo folder"}', '{"format": 0, "kind": "vcap demo folder"}',
                       '{"kind": "vcap demo folder", "command": "vcap demo"}'):
        (demo / RECORD).write_text(unreadable)  # not JSON of a record, or a later release's (or no) format
        with pytest.raises(ConfigError, match="not a record this version of vcap reads"):
            claim_folder(demo, DEMO)
    (demo / RECORD).write_text('{"format": 1, "kind": "vcap demo folder", "command": "vcap demo"}' + " " * 70_000)
    with pytest.raises(ConfigError, match="not a record this version of vcap reads"):
        claim_folder(demo, DEMO)  # larger than any record: not read whole (a link to /dev/zero never ends)
    (demo / RECORD).unlink()
    os.mkfifo(demo / RECORD)  # opening a FIFO to read would block until someone writes: never opened
    with pytest.raises(ConfigError, match="not a record this version of vcap reads"):
        claim_folder(demo, DEMO)
    (demo / RECORD).unlink()
    (demo / RECORD).write_text('{"format": 1, "kind": "vcap demo folder", "command": "vcap demo"}')
    claim_folder(demo, DEMO)  # this version's format: the demo's again
    empty = tmp_path / "empty"
    (empty / ".lock").parent.mkdir()
    (empty / ".lock").write_text("vcap index, pid 1 on host, since ...\n")  # a killed run's lock only
    claim_folder(empty, other)
    assert read_record(empty)["command"] == "vcap index"
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        claim_folder(tmp_path / "demo" / "data" / "manifest.json", DEMO)


# ----------------------------------------------------------------------------- writers of files


def test_a_file_writer_never_replaces_a_file_it_did_not_write(made, tmp_path, capsys):
    mine = _user_folder(tmp_path / "mine")
    before = _snapshot(mine)
    (tmp_path / "p.json").write_text(json.dumps({"v1": "a red circle moving up"}))
    (tmp_path / "r.json").write_text(json.dumps({"v1": ["a red circle moving up", "a circle going up"]}))
    cfg = cli_args(made["data"], *TINY)
    clip = str(sorted((made["data"] / "videos").iterdir())[0])
    cases = {
        "score": (["score", "--predictions", str(tmp_path / "p.json"), "--references", str(tmp_path / "r.json"),
                   "--tokenize", "none", "--output", str(mine)], "metrics.json"),
        "eval-retrieval": (["eval-retrieval", "--model", str(made["model"]), *cfg, "--output", str(mine)],
                           "metrics.json"),
        "eval-classify": (["eval-classify", "--model", str(made["model"]), *cfg, "--output", str(mine)],
                          "metrics.json"),
        "evaluate": (["evaluate", "--model", str(made["caption_model"]), *cfg, "--output", str(mine)],
                     "predictions.json"),
        "caption --report": (["caption", clip, "--model", str(made["caption_model"]), "--report",
                              str(mine / "report.html")], "report.html"),
        "report": (["report", str(made["run"]), "--output", str(mine / "report.html")], "report.html"),
    }
    for name, (argv, file) in cases.items():
        line = _refused(argv, capsys, str(mine / file), "is not a")
        assert _snapshot(mine) == before, name
        assert "move it away" in line
    ok = tmp_path / "evaluation"  # its own output: written, then replaced by a rerun (vcap score too: a metrics file)
    for _ in range(2):
        assert main(["eval-retrieval", "--model", str(made["model"]), *cfg, "--output", str(ok)]) == 0
        assert json.loads((ok / "metrics.json").read_text())["videos"] == 2
    assert claim_file(ok / "metrics.json", METRICS) == ok / "metrics.json"
    page = tmp_path / "curves.html"
    for _ in range(2):
        assert main(["report", str(made["run"]), "--output", str(page)]) == 0 and page.stat().st_size > 1000


def test_the_installed_vcap_refuses_in_one_line(made, tmp_path):
    """Through the console script a user types: one line on stderr, exit 2, no traceback, untouched."""
    victims = _victims(made, tmp_path)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "10000"}
    for argv, victim in ((["demo", "--output"], victims["a copy of a stage-1 run folder"]),
                         (["score", "--predictions", "p.json", "--references", "r.json", "--output"],
                          victims["a folder of user files"])):
        before = _snapshot(victim)
        done = subprocess.run([str(VCAP), *argv, str(victim)], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("vcap: config error: ") and str(victim) in done.stderr
        assert "Traceback" not in done.stderr and _snapshot(victim) == before


def test_claim_file_knows_the_toolkits_metrics(tmp_path):
    ours = tmp_path / "metrics.json"
    for text, ok in (('{"split": "test", "t2v_R@1": 0.5}', True), ('{"CIDEr": 1.2, "count": 3}', True),
                     ('{"caption": {"CIDEr": 1.0}}', True), ('{"caption": "my notes"}', False),
                     ('{"CIDEr": true}', False), ('{"accuracy": 0.9}', False), ("[1, 2]", False),
                     ("not json", False), ("", False)):
        ours.write_text(text)
        if ok:
            assert claim_file(ours, METRICS) == ours
        else:
            with pytest.raises(ConfigError, match="is not a metrics file"):
                claim_file(ours, METRICS)


def test_claim_file_knows_the_toolkits_predictions_by_the_metrics_beside_them(tmp_path):
    """A hostile round's find: a user's notes ``{"todo": "call Bob"}`` looked like predictions and were
    replaced by vcap evaluate. vcap's predictions.json has its metrics.json beside it."""
    preds, metrics = tmp_path / "predictions.json", tmp_path / "metrics.json"
    preds.write_text('{"v1": "a red circle moves up"}')
    with pytest.raises(ConfigError, match="is not a predictions file that vcap wrote"):
        claim_file(preds, PREDICTIONS)  # alone: a user's notes, or an evaluation killed before its metrics
    metrics.write_text('{"user_note": "x"}')
    with pytest.raises(ConfigError, match="is not a predictions file"):
        claim_file(preds, PREDICTIONS)
    metrics.write_text('{"CIDEr": 0.8, "BLEU-4": 0.2}')
    assert claim_file(preds, PREDICTIONS) == preds
    preds.write_text('{"v1": ["not", "a caption"]}')
    with pytest.raises(ConfigError, match="is not a predictions file"):
        claim_file(preds, PREDICTIONS)


# ----------------------------------------------------------------------------- index reruns (items 2, 3)


def _index(made: dict[str, Path], out: Path, videos: list[str], **kw) -> dict:
    return build_index(made["model"], videos, out, torch.device("cpu"), batch_size=4, shard_size=4, **kw)


def test_an_index_rerun_rebuilds_a_cut_or_edited_shard_saying_so(made, tmp_path, capsys):
    videos = sorted(str(p) for p in (made["data"] / "videos").iterdir())
    _index(made, tmp_path / "clean", videos)
    want = dict(zip(VideoIndex(tmp_path / "clean").paths(), VideoIndex(tmp_path / "clean").embeddings()))
    out = tmp_path / "idx"
    shutil.copytree(tmp_path / "clean", out)
    npy = out / "shards" / "000000.npy"
    npy.write_bytes(npy.read_bytes()[:-64])  # cut
    rows = json.loads((out / "shards" / "000001.json").read_text())
    rows[0]["path"], rows[1]["path"] = rows[1]["path"], rows[0]["path"]  # edited: two videos' scores swapped
    (out / "shards" / "000001.json").write_text(json.dumps(rows))
    capsys.readouterr()
    with pytest.raises(FeatureStoreError, match="000001.json: its rows differ"):  # a search refuses it
        VideoIndex(out).embeddings()
    report = _index(made, out, videos)
    err = capsys.readouterr().err
    assert (report["repaired"], report["indexed"], report["done_before"]) == (2, 8, 2)
    assert "000000.npy: its bytes differ" in err and "000001.json: its rows differ" in err
    assert err.count("removed, its videos are embedded again") == 2
    index = VideoIndex(out)
    got = dict(zip(index.paths(), index.embeddings()))
    assert sorted(got) == videos  # each video's own embedding again (a swap would be far off)
    assert all(np.allclose(got[v].astype(np.float32), want[v].astype(np.float32), atol=2e-3) for v in videos)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "000002.json", "000002.npy", "000003.json", "000003.npy", "000004.json", "000004.npy"]
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["shards"]) == ["000002", "000003", "000004"]

    legacy = tmp_path / "legacy"  # written before the records: a NaN row found, the rest recorded
    shutil.copytree(tmp_path / "clean", legacy)
    meta = json.loads((legacy / "meta.json").read_text())
    del meta["shards"]
    (legacy / "meta.json").write_text(json.dumps(meta))
    (legacy / RECORD).unlink()
    arr = np.load(legacy / "shards" / "000002.npy")
    arr[1] = np.nan
    np.save(legacy / "shards" / "000002.npy", arr)
    report = _index(made, legacy, videos)
    assert (report["repaired"], report["indexed"]) == (1, 2)
    assert sorted(json.loads((legacy / "meta.json").read_text())["shards"]) == ["000000", "000001", "000002"]
    index = VideoIndex(legacy)
    assert sorted(index.paths()) == videos and np.isfinite(index.embeddings().astype(np.float32)).all()

    (out / "shards" / "000009.json").write_text((out / "shards" / "000002.json").read_text())  # not this index's
    shutil.copy(out / "shards" / "000002.npy", out / "shards" / "000009.npy")
    with pytest.raises(FeatureStoreError, match="000009 have no record"):
        _index(made, out, videos)


def test_a_gone_or_now_unreadable_video_loses_its_row_is_listed_and_counted(made, tmp_path, capsys):
    mine = tmp_path / "clips"
    mine.mkdir()
    for p in sorted((made["data"] / "videos").iterdir())[:5]:
        shutil.copy(p, mine / p.name)
    videos = sorted(str(p) for p in mine.iterdir())
    out = tmp_path / "idx"
    assert _index(made, out, videos)["indexed"] == 5
    good = Path(videos[1]).read_bytes()
    Path(videos[1]).write_bytes(b"no longer a video")  # changed, and now unreadable
    os.unlink(videos[3])  # gone
    capsys.readouterr()
    assert main(["index", str(mine), "--model", str(made["model"]), "--output", str(out), "--num-workers", "0",
                 "--shard-size", "4"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert (report["changed"], report["gone"], report["failed"], report["dropped"], report["indexed"]) == (1, 1, 1, 2, 0)
    failures = {f["path"]: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert sorted(failures) == [videos[1], videos[3]] and "no longer exists" in failures[videos[3]]
    assert f"warning: not indexed: {videos[3]}: no longer exists" in captured.err
    index = VideoIndex(out)
    assert sorted(index.paths()) == [videos[0], videos[2], videos[4]]
    assert main(["search", str(out), "a red circle", "--top", "5", "--json"]) == 0
    found = [p for p, _ in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]]
    assert sorted(found) == [videos[0], videos[2], videos[4]]
    Path(videos[1]).write_bytes(good)  # readable again: retried, indexed
    report = _index(made, out, videos[:3] + videos[4:])
    assert (report["indexed"], report["failed"], report["gone"]) == (1, 0, 0)
    assert sorted(VideoIndex(out).paths()) == [videos[0], videos[1], videos[2], videos[4]]


def test_a_pairwise_index_is_repaired_and_dropped_state_and_all(made, tmp_path):
    """X-CLIP's index keeps each video's whole state (``.patches.npy`` beside the ``.npy``): a cut state
    file is rebuilt and a gone video's row leaves with its state; the index then scores as a fresh one."""
    from test_xclip import XCLIP

    from retrieval_pretrain.modeling.model_folder import save_pretrained
    from retrieval_pretrain.modeling.parts import build_video_text_model
    from vcap_toolkit.jobs.search import search

    torch.manual_seed(0)
    xclip = save_pretrained(build_video_text_model(load(None, XCLIP)).eval(), tmp_path / "xclip")
    mine = tmp_path / "clips"
    mine.mkdir()
    for p in sorted((made["data"] / "videos").iterdir())[:6]:
        shutil.copy(p, mine / p.name)
    videos = sorted(str(p) for p in mine.iterdir())
    cpu, out = torch.device("cpu"), tmp_path / "idx"
    build_index(xclip, videos, out, cpu, batch_size=4, shard_size=4)
    patches = out / "shards" / "000001.patches.npy"
    patches.write_bytes(patches.read_bytes()[:-32])
    os.unlink(videos[0])
    report = build_index(xclip, videos[1:], out, cpu, batch_size=4, shard_size=4)
    assert (report["repaired"], report["indexed"], report["gone"], report["dropped"]) == (1, 2, 1, 1)
    index = VideoIndex(out)
    assert sorted(index.paths()) == videos[1:]
    assert sum(len(b["patches"]) for b in index.state_blocks()) == 5
    build_index(xclip, videos[1:], tmp_path / "fresh", cpu, batch_size=4, shard_size=4)
    got, want = (dict(search(folder, cpu, text="moving up", top=5)) for folder in (out, tmp_path / "fresh"))
    assert got.keys() == want.keys() and all(abs(got[v] - want[v]) < 1e-3 for v in want)


# ----------------------------------------------------------------------------- the lock (item 4)


def test_the_lock_ends_with_its_process_even_while_forked_workers_live(tmp_path):
    """A process holding the lock forks a worker (as a DataLoader does) and is SIGKILLed; the
    worker lives on for 20 s, yet the folder is free at once."""
    code = f"""
import multiprocessing as mp, sys, time
from retrieval_pretrain.foundation.folder_lock import folder_lock
def work(q):
    q.put("up")
    time.sleep(20)
if __name__ == "__main__":
    with folder_lock({str(tmp_path)!r}, "vcap pretrain"):
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        worker = ctx.Process(target=work, args=(q,))
        worker.start()
        q.get()
        print(worker.pid, flush=True)
        sys.stdin.read()
"""
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid} "):
            with folder_lock(tmp_path, "vcap pretrain"):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the orphaned worker still runs
        t0 = time.monotonic()
        with folder_lock(tmp_path, "vcap pretrain"):  # and the folder is free
            pass
        assert time.monotonic() - t0 < 1.0
    finally:
        holder.kill()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
