"""Resumable training checkpoints: ``accelerator.save_state`` (model, optimizer, scheduler, RNG
states, loaders) into ``RUN/checkpoints/step_N`` plus ``trainer_state.json`` (the loop position),
each checkpoint written through a temporary folder and swapped in whole (``atomic``)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from retrieval_pretrain.atomic import clear_temporaries, commit_folder, write_json


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint folder in ``run/checkpoints`` (complete = renamed into place)."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step_*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def save_checkpoint(accelerator: Accelerator, run: Path, global_step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """``accelerator.save_state`` (every process) into a temporary folder that is then swapped in as
    ``step_N``; keeps the newest ``keep`` checkpoints. ``state`` (epoch, batches done, ...) goes to
    ``trainer_state.json``, written last: a folder without it is never restored."""
    folder = Path(run) / "checkpoints"
    final = folder / f"step_{global_step}"
    tmp = folder / f".{final.name}.tmp-save"  # one name all processes know
    if accelerator.is_main_process:
        clear_temporaries(final)  # a killed earlier save of this step, if any
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", {"global_step": global_step, **state})
        commit_folder(tmp, final)
        old = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, run: Path) -> dict[str, Any] | None:
    """Restore the newest checkpoint of ``run``; returns its trainer state, or None (saying so) if
    there is none."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        print(f"--resume: no checkpoint in {Path(run) / 'checkpoints'}; starting fresh", file=sys.stderr)
        return None
    accelerator.load_state(str(ckpt))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    print(f"resumed from {ckpt} (step {state['global_step']})", file=sys.stderr)
    return state


