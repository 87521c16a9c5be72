"""Kill-and-resume at random points, many times: how often are the final weights bit-identical to
an uninterrupted run? (``tests/test_kill_resume.py`` does one fixed point per stage in the suite.)

    python benchmarks/kill_resume.py --trials 10 --seed 0

Each trial SIGKILLs a real ``vcap pretrain`` / ``vcap train`` process a random 0-150 ms after a
random checkpoint appeared (so inside a training step or inside the writing of a checkpoint),
resumes it with ``--resume``, and compares weights and logs with an uninterrupted run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_kill_resume import STAGE1, STAGE2, TINY, assert_same_run, kill_and_resume  # noqa: E402

from caption.config import load  # noqa: E402
from caption.demo import CONFIG_PATH  # noqa: E402
from caption.demo import data as demo_data  # noqa: E402


def _setup(root: Path) -> tuple[list[str], Path]:
    from retrieval_pretrain.extract import extract_features
    from retrieval_pretrain.train import train

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
