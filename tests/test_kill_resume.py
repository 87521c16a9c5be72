"""Kill a training run (SIGKILL, no warning) at a point it does not choose, resume it with
``--resume``, and the final weights are bit-identical to an uninterrupted run with the same seed -
both stages, stage 2 with dropout on. The log then holds every step once, with the same losses.

The runs are real ``vcap`` processes with one thread each (bit-identity needs the same thread
count in all of them); the uninterrupted run and the one killed run side by side. The kill lands
``delay`` seconds after checkpoint ``step_K`` appears: inside a later step or inside the writing of
a later checkpoint. ``benchmarks/kill_resume.py`` repeats this at many random points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data

VCAP = Path(sys.executable).with_name("vcap")
TINY = ["video.num_frames=4", "pretrain.batch_size=4", "run.num_workers=0", "run.log_every=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
        "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "run.device=cpu"]
STAGE1 = ["pretrain.epochs=5", "pretrain.save_every=1"]  # 10 steps, a checkpoint after each
STAGE2 = ["caption.batch_size=4", "caption.epochs=5", "caption.vocab_size=120", "caption.max_length=40",
          "decode.max_new_tokens=8", "decode.num_beams=1", "caption.save_every=1", "caption.dropout=0.1",
          "caption.val_max_videos=0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MKL_NUM_THREADS": "1"}


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([str(VCAP), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _kill_after(proc: subprocess.Popen, checkpoint: Path, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``checkpoint`` appears (complete: it has its state)."""
    deadline = time.monotonic() + 300
    while not (checkpoint / "trainer_state.json").is_file():
        assert proc.poll() is None, f"the run ended before {checkpoint} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before it could be killed; kill earlier"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def kill_and_resume(argv: list[str], straight: Path, killed: Path, kill_after_step: int, delay: float) -> None:
    """Run ``argv`` into ``straight`` to the end and, side by side, into ``killed``; kill the second
    ``delay`` s after its checkpoint ``kill_after_step`` appeared, then resume it to the end."""
    a = _start([*argv[:1], "--output", str(straight), *argv[1:]])
    b = _start([*argv[:1], "--output", str(killed), *argv[1:]])
    _kill_after(b, killed / "checkpoints" / f"step_{kill_after_step}", delay)
    assert not (killed / "model").exists()
    _finish(_start([*argv[:1], "--output", str(killed), "--resume", *argv[1:]]))
    _finish(a)


def assert_same_run(straight: Path, killed: Path) -> int:
    """Bit-identical final weights, and logs with every step once and the same losses; returns the
    number of steps."""
    from safetensors.torch import load_file

    wa, wb = (load_file(run / "model" / "model.safetensors") for run in (straight, killed))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not (wa[k].shape == wb[k].shape and bool((wa[k] == wb[k]).all()))]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    logs = [[json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()] for run in (straight, killed)]
    for log in logs:
        for r in log:
            r.pop("time", None)
            for k in ("data_s", "compute_s", "videos_per_s", "steps_per_s"):
                r.pop(k, None)
    assert logs[0] == logs[1]
    steps = [r["step"] for r in logs[1] if "loss" in r]
    assert steps == sorted(set(steps)), steps  # each step once
    return len(steps)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("kill")
    spec = demo_data.DemoSpec(num_train=8, num_val=2, num_test=2, frames=8, size=64, seed=3, captions_per_video=2)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    return root, ["--config", str(CONFIG_PATH), f"data.annotations={ann}", f"data.videos={ann.parent}", *TINY]


def test_stage1_killed_and_resumed_ends_bit_identical(data):
    root, args = data
    kill_and_resume(["pretrain", *args, *STAGE1], root / "s1_straight", root / "s1_killed", 3, 0.03)
    assert assert_same_run(root / "s1_straight", root / "s1_killed") == 10


def test_stage2_killed_and_resumed_ends_bit_identical(data):
    from retrieval_pretrain.extract import extract_features
    from retrieval_pretrain.train import train

    root, args = data
    cfg = load(CONFIG_PATH, args[2:] + ["pretrain.epochs=1", "pretrain.save_every=0"])
    extract_features(train(cfg, root / "s1"), cfg, root / "feats")
    argv = ["train", "--features", str(root / "feats"), *args, *STAGE2]
    kill_and_resume(argv, root / "s2_straight", root / "s2_killed", 3, 0.02)
    assert assert_same_run(root / "s2_straight", root / "s2_killed") == 20  # 16 pairs / 4, 5 epochs
