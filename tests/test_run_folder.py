"""A run folder belongs to one run: a second run into it is refused, --resume must be that run, and
a second process on it is refused while the first holds its lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from accelerate import PartialState

from caption.config import load
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.run_folder import RUN_FILE, claim


class _One:  # what claim uses of an Accelerator: one process
    is_main_process = True

    def wait_for_everyone(self) -> None:
        PartialState().wait_for_everyone()


def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path, capsys):
    cfg = load(None, ["pretrain.epochs=3"])
    run = tmp_path / "run"
    claim(run, "pretrain", cfg, resume=False, accelerator=_One())
    record = json.loads((run / RUN_FILE).read_text())
    assert record["command"] == "pretrain" and record["config"]["pretrain.epochs"] == 3
    # A run that ended before its first checkpoint (killed, disk full) trained nothing that could
    # mix: a new run starts there, without the old log.
    (run / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (run / "tokenizer.model").write_text("a stage-2 tokenizer of other settings")
    claim(run, "pretrain", load(None, ["pretrain.epochs=4"]), resume=False, accelerator=_One())
    assert not (run / "log.jsonl").exists() and not (run / "tokenizer.model").exists()
    assert "before its first checkpoint" in capsys.readouterr().err
    assert json.loads((run / RUN_FILE).read_text())["config"]["pretrain.epochs"] == 4
    _checkpoint(run)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        claim(run, "pretrain", cfg, resume=False, accelerator=_One())
    (run / "model").mkdir()
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        claim(run, "pretrain", cfg, resume=False, accelerator=_One())
    _checkpoint(tmp_path / "old")  # a run of before run.json: refused either way
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
    claim(tmp_path, "pretrain", cfg, resume=True, accelerator=_One())  # nothing trained yet: starts over
    (tmp_path / "model").mkdir()  # finished, without checkpoints: nothing to continue
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


def test_a_second_process_on_a_locked_folder_is_refused(tmp_path):
    """The lock is the kernel's (flock): another process holding it makes folder_lock refuse at once,
    naming the holder; once that process ends (here: killed), the folder is free again."""
    import subprocess
    import sys

    from retrieval_pretrain.foundation.errors import FolderBusyError
    from retrieval_pretrain.foundation.folder_lock import folder_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom retrieval_pretrain.foundation.folder_lock import folder_lock\n"
        f"with folder_lock({str(tmp_path)!r}, 'vcap extract'):\n    print('held', flush=True)\n    sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=rf"{tmp_path} is in use by another running vcap process "
                                                  rf"\(vcap extract, pid {holder.pid} on "):
            with folder_lock(tmp_path, "vcap extract"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, "vcap extract"):  # SIGKILL left no stale lock
        with folder_lock(tmp_path, "vcap extract"):  # and the same process may nest it
            pass


def test_a_run_recorded_before_a_setting_existed_resumes_when_it_is_at_its_default(tmp_path):
    """A run.json written by an older version lacks the settings added since (e.g. pretrain.distill.*):
    at their defaults the run trains as it did, so --resume continues it; set otherwise, refused."""
    cfg = load(None, ["pretrain.epochs=3"])
    claim(tmp_path, "pretrain", cfg, resume=False, accelerator=_One())
    record = json.loads((tmp_path / RUN_FILE).read_text())
    record["config"] = {k: v for k, v in record["config"].items() if not k.startswith("pretrain.distill.")}
    record["fingerprint"] = "from-an-older-version"
    (tmp_path / RUN_FILE).write_text(json.dumps(record))
    _checkpoint(tmp_path)
    claim(tmp_path, "pretrain", cfg, resume=True, accelerator=_One())
    with pytest.raises(ConfigError, match=r"pretrain\.distill\.enabled None -> True"):
        claim(tmp_path, "pretrain", load(None, ["pretrain.epochs=3", "pretrain.distill.enabled=true"]), resume=True,
              accelerator=_One())
    with pytest.raises(ConfigError, match=r"pretrain\.epochs 3 -> 4"):
        claim(tmp_path, "pretrain", load(None, ["pretrain.epochs=4"]), resume=True, accelerator=_One())


def test_step_timer_keeps_the_sums_across_a_restart(monkeypatch):
    """Between epochs the trainers restart the clock (evaluation is neither data nor compute) but keep
    the sums: a log record covers every step since the previous record, also those after an epoch's
    last record (a reset there lost 5 of the demo's 35 stage-1 steps an epoch from the logged times)."""
    from retrieval_pretrain.foundation import run_log

    now = iter([0.0, 1.0, 3.0, 10.0, 11.5, 12.0])
    monkeypatch.setattr(run_log.time, "perf_counter", lambda: next(now))
    timer = run_log.StepTimer()  # t = 0
    timer.data_ready()  # 1 s waiting
    timer.step_done()  # 2 s computing; then an evaluation until t = 10
    timer.restart()
    timer.data_ready()  # 1.5 s
    timer.step_done()  # 0.5 s
    assert timer.reset() == (2.5, 2.5)
    assert timer.reset() == (0.0, 0.0)
