"""A run folder belongs to one run: a second run into it is refused, --resume must be that run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import PartialState

from caption.config import load
from retrieval_pretrain.errors import ConfigError
from retrieval_pretrain.run_folder import RUN_FILE, claim


class _One:  # what claim uses of an Accelerator: one process
    is_main_process = True

    def wait_for_everyone(self) -> None:
        PartialState().wait_for_everyone()


def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path):
    cfg = load(None, ["pretrain.epochs=3"])
    claim(tmp_path / "run", "pretrain", cfg, resume=False, accelerator=_One())
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert record["command"] == "pretrain" and record["config"]["pretrain.epochs"] == 3
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        claim(tmp_path / "run", "pretrain", cfg, resume=False, accelerator=_One())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoints").mkdir()  # a run of before run.json: refused either way
    with pytest.raises(ConfigError, match="already holds a run"):
        claim(tmp_path / "old", "pretrain", cfg, resume=False, accelerator=_One())
    with pytest.raises(ConfigError, match="no run.json"):
        claim(tmp_path / "old", "pretrain", cfg, resume=True, accelerator=_One())


def _checkpoint(run: Path, step: int = 2) -> None:
    (run / "checkpoints" / f"step_{step}").mkdir(parents=True)
    (run / "checkpoints" / f"step_{step}" / "trainer_state.json").write_text("{}")


def test_resume_must_be_the_same_run(tmp_path):
    cfg = load(None, ["pretrain.epochs=3"])
    claim(tmp_path, "pretrain", cfg, resume=False, accelerator=_One())
    with pytest.raises(ConfigError, match="holds this run but no checkpoint to resume from"):
        claim(tmp_path, "pretrain", cfg, resume=True, accelerator=_One())
    _checkpoint(tmp_path)
    # what does not change the training may differ, and stage 2's sections are not stage 1's
    same = load(None, ["pretrain.epochs=3", "run.num_workers=0", "pretrain.save_every=7", "caption.epochs=99"])
    claim(tmp_path, "pretrain", same, resume=True, accelerator=_One())
    other = load(None, ["pretrain.epochs=4", "pretrain.lr=3e-4"])
    with pytest.raises(ConfigError, match=r"another run.*pretrain\.epochs 3 -> 4; pretrain\.lr 0\.0001 -> 0\.0003"):
        claim(tmp_path, "pretrain", other, resume=True, accelerator=_One())
    with pytest.raises(ConfigError, match="command 'pretrain' -> 'train'"):
        claim(tmp_path, "train", cfg, resume=True, accelerator=_One(), inputs={"features": "/f"})


def test_stage2_resume_with_other_features_is_refused(tmp_path):
    cfg = load(None, [])
    claim(tmp_path, "train", cfg, resume=False, accelerator=_One(), inputs={"features": "/a", "features_tower": "x"})
    _checkpoint(tmp_path)
    claim(tmp_path, "train", cfg, resume=True, accelerator=_One(), inputs={"features": "/a", "features_tower": "x"})
    with pytest.raises(ConfigError, match="features_tower 'x' -> 'y'"):
        claim(tmp_path, "train", cfg, resume=True, accelerator=_One(), inputs={"features": "/a", "features_tower": "y"})


def test_resume_on_an_empty_folder_starts_the_run(tmp_path):
    claim(tmp_path / "new", "pretrain", load(None, []), resume=True, accelerator=_One())
    assert (tmp_path / "new" / RUN_FILE).is_file()
