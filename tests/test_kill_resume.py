"""Kill a training run (SIGKILL, no warning) at a point it does not choose, resume it with
``--resume``, and the final weights are bit-identical to an uninterrupted run with the same seed -
both stages, stage 2 with dropout on. The log then holds every step once, with the same losses.

The runs are real ``vcap`` processes with one thread each (bit-identity needs the same thread
count in all of them); the uninterrupted run and the one killed run side by side. The kill lands
``delay`` seconds after checkpoint ``step_K`` appears: inside a later step or inside the writing of
a later checkpoint. The machinery lives in ``benchmarks/kill_resume.py``, which repeats this at many random points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.kill_resume import STAGE1, STAGE2, TINY, assert_same_run, kill_and_resume
from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data


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
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train

    root, args = data
    cfg = load(CONFIG_PATH, args[2:] + ["pretrain.epochs=1", "pretrain.save_every=0"])
    extract_features(train(cfg, root / "s1"), cfg, root / "feats")
    argv = ["train", "--features", str(root / "feats"), *args, *STAGE2]
    kill_and_resume(argv, root / "s2_straight", root / "s2_killed", 3, 0.02)
    assert assert_same_run(root / "s2_straight", root / "s2_killed") == 20  # 16 pairs / 4, 5 epochs
