"""Kill-and-resume at random points, many times: how often are the final weights bit-identical to
an uninterrupted run? (``tests/test_kill_resume.py`` does one fixed point per stage in the suite.)

    python -m benchmarks.kill_resume --trials 10 --seed 0

Each trial SIGKILLs a real ``vcap pretrain`` / ``vcap train`` process a random 0-150 ms after a
random checkpoint appeared (so inside a training step or inside the writing of a checkpoint),
resumes it with ``--resume``, and compares weights and logs with an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _setup(root: Path) -> tuple[list[str], Path]:
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train

    spec = demo_data.DemoSpec(num_train=8, num_val=2, num_test=2, frames=8, size=64, seed=3, captions_per_video=2)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    args = ["--config", str(CONFIG_PATH), f"data.annotations={ann}", f"data.videos={ann.parent}", *TINY]
    cfg = load(CONFIG_PATH, args[2:] + ["pretrain.epochs=1", "pretrain.save_every=0"])
    extract_features(train(cfg, root / "s1"), cfg, root / "feats")
    return args, root / "feats"


def _trial(stage: str, argv: list[str], root: Path, steps: int, rng: random.Random) -> dict[str, object]:
    k, delay = rng.randint(1, steps - 3), rng.uniform(0.0, 0.15)
    straight, killed = root / f"{stage}_straight", root / f"{stage}_killed"
    for folder in (straight, killed):
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        kill_and_resume(argv, straight, killed, k, delay)
        n = assert_same_run(straight, killed)
        outcome = f"bit-identical ({n} steps)"
    except AssertionError as e:
        outcome = f"DIFFERENT: {str(e).splitlines()[0][:120]}"
    return {"stage": stage, "after": f"step_{k}", "delay_ms": round(delay * 1000), "outcome": outcome,
            "s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common, feats = _setup(root)
        plans = [("stage1", ["pretrain", *common, *STAGE1], 10),
                 ("stage2", ["train", "--features", str(feats), *common, *STAGE2], 20)]
        results = [_trial(stage, argv, root, steps, rng) for stage, argv, steps in plans for _ in range(args.trials)]
    for r in results:
        print(f"{r['stage']}  kill {r['delay_ms']:>3} ms after {r['after']:<8} -> {r['outcome']}  ({r['s']} s)")
    same = sum(str(r["outcome"]).startswith("bit-identical") for r in results)
    print(f"{same} of {len(results)} killed-and-resumed runs bit-identical to the uninterrupted run")


if __name__ == "__main__":
    main()
