"""Two processes through ``accelerate launch`` on the CPU (gloo), against one process with the same
global batch: ``vcap pretrain`` and ``vcap train`` log the same loss at every step (and stage 2 the
same val loss, computed over both processes' shares of the val split); ``vcap extract`` splits the
videos between the processes, writes each exactly once, and reports every share's failures.

On a machine without GPUs the launch is ``accelerate launch --multi_gpu --num_processes 2``:
Accelerate's ``--cpu`` launcher starts a single process unless given an mpirun host file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data

TINY = ["video.num_frames=4", "pretrain.epochs=2", "run.num_workers=0", "run.log_every=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
        "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0", "run.device=cpu"]
# Dropout off: the two runs draw their dropout masks in other shapes (2 x 2 captions vs 4).
STAGE2 = ["caption.epochs=2", "caption.vocab_size=120", "caption.max_length=40", "decode.max_new_tokens=12",
          "decode.num_beams=2", "caption.save_every=0", "caption.dropout=0.0", "decode.batch_size=2",
          "caption.eval_batch_size=3"]


def _launch(command: str, *args: str) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vcap_toolkit.cli.main", command,
           "--config", str(CONFIG_PATH), *args]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    """8 train videos (2 captions each), 5 val, 2 test, and one unreadable test video."""
    root = tmp_path_factory.mktemp("mp")
    spec = demo_data.DemoSpec(num_train=8, num_val=5, num_test=2, frames=8, size=64, seed=3, captions_per_video=2)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False)
    (root / "data" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    with ann.open("a") as f:
        f.write(json.dumps({"video": "broken.mp4", "captions": ["x"], "split": "test"}) + "\n")
    return root, TINY + [f"data.annotations={ann}", f"data.videos={root / 'data'}"]


@pytest.fixture(scope="module")
def one_process(data) -> dict[str, Path]:
    """Stage 1 (batch 4), extraction and stage 2 (batch 4) in this one process."""
    from caption.train import train as train_captions
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train

    root, args = data
    cfg = load(CONFIG_PATH, args + ["pretrain.batch_size=4"])
    s1 = train(cfg, root / "s1_one")
    extract_features(s1, cfg, root / "feats_one")
    train_captions(load(CONFIG_PATH, args + STAGE2 + ["caption.batch_size=4"]), root / "feats_one", root / "s2_one")
    return {"s1": root / "s1_one", "feats": root / "feats_one", "s2": root / "s2_one"}


def test_pretrain_two_processes_match_one(data, one_process):
    root, args = data
    done = _launch("pretrain", "--output", str(root / "s1_two"), *args, "pretrain.batch_size=2")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(one_process["s1"]), _losses(root / "s1_two")
    assert sorted(two) == [1, 2, 3, 4] and sorted(one) == sorted(two)
    for step in one:  # measured: at most 1.6e-6 relative (2.4e-6 of a loss of 1.5)
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=0), step
    assert len(set(one.values())) == 4  # the loss moved: equal losses are not a constant

    from safetensors.torch import load_file

    wa, wb = (load_file(r / "model" / "model.safetensors") for r in (one_process["s1"], root / "s1_two"))
    assert wa.keys() == wb.keys()
    for k in wa:  # measured: at most 2.3e-6 apart (relative error is meaningless on weights near 0)
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=2e-5, msg=k)


def test_extract_two_processes_writes_each_video_once(data, one_process):
    root, args = data
    feats = root / "feats_two"
    done = _launch("extract", "--model", str(one_process["s1"] / "model"), "--output", str(feats), *args)
    assert done.returncode == 1, done.stderr[-3000:]  # the unreadable video: exit 1, named
    [line] = done.stdout.strip().splitlines()  # the main process alone prints the report
    report = json.loads(line)
    assert (report["total"], report["extracted"], report["failed"], report["processes"]) == (16, 15, 1, 2)
    assert sum(report["extracted_per_process"]) == 15 and min(report["extracted_per_process"]) >= 7
    [failure] = json.loads((feats / "failures.json").read_text())
    assert failure["path"].endswith("broken.mp4")
    files = sorted(p.name for p in (feats / "features").iterdir())
    assert files == sorted(p.name for p in (one_process["feats"] / "features").iterdir()) and len(files) == 15
    for name in files:  # the same tower, the same frames: measured bitwise equal; other batch shapes
        # may round a float32 value to the next fp16 step, so one step (2**-10 relative) is allowed
        a, b = (np.load(f / "features" / name).astype(np.float32) for f in (feats, one_process["feats"]))
        np.testing.assert_allclose(a, b, rtol=2**-10, atol=1e-7)


def test_train_two_processes_match_one(data, one_process):
    root, args = data
    done = _launch("train", "--features", str(one_process["feats"]), "--output", str(root / "s2_two"),
                   *args, *STAGE2, "caption.batch_size=2")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(one_process["s2"]), _losses(root / "s2_two")
    assert sorted(one) == sorted(two) == list(range(1, 9))  # 16 pairs, global batch 4, 2 epochs
    for step in one:  # measured: at most 1.1e-7 relative
        assert two[step] == pytest.approx(one[step], rel=1e-6, abs=0), step
    epochs = [[r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_loss" in r]
              for run in (one_process["s2"], root / "s2_two")]
    assert [r["step"] for r in epochs[1]] == [4, 8]
    for a, b in zip(*epochs):  # 10 val pairs in shares of 5: the combined loss is the whole split's
        # measured equal as logged (5 decimals); one step of that rounding is allowed
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1.5e-5)
        assert b["val_CIDEr"] == pytest.approx(a["val_CIDEr"], abs=1.5e-5)
