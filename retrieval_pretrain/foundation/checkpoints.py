"""Resumable training checkpoints: ``accelerator.save_state`` (model, optimizer, scheduler, RNG
states, loaders) into ``RUN/checkpoints/step_N`` plus ``trainer_state.json`` (the loop position),
each checkpoint written through a temporary folder and swapped in whole (``atomic``)."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator

from retrieval_pretrain.foundation.atomic import clear_temporaries, commit_folder, os_error, write_file, write_json
from retrieval_pretrain.foundation.errors import TrainingDivergedError


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
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:  # a full disk: the temporary folder is never restored (no trainer_state.json)
        new = os_error(e, final)
        if new is e:
            raise
        raise new from e
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
        print(f"--resume: {run} holds no run to continue (no checkpoint in {Path(run) / 'checkpoints'}); starting a "
              "new run from step 0 - check the folder if you meant to continue one", file=sys.stderr)
        return None
    accelerator.load_state(str(ckpt))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if accelerator.is_main_process and "log_lines" in state:
        _cut_log(Path(run) / "log.jsonl", state["log_lines"])
    print(f"resumed from {ckpt} (step {state['global_step']})", file=sys.stderr)
    return state


def _cut_log(log: Path, lines: int) -> None:
    """Keep the first ``lines`` records of ``log``: those written before the checkpoint. The steps
    after it are trained again, and logged again, by the resumed run."""
    if not log.is_file():
        return
    kept = log.read_text().splitlines(keepends=True)[:lines]
    write_file(log, lambda tmp: tmp.write_text("".join(kept)))


def stop_if_diverged(accelerator: Accelerator, loss: Any, step: int, epoch: int, run: Path) -> None:
    """``TrainingDivergedError`` when the loss of this step is NaN or infinite on any process
    (decided together, so every process stops at the same step), before anything is saved."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if not bool(bad.item()):
        return
    last = latest_checkpoint(run)
    where = f"the last checkpoint, {last}, holds the weights from before it" if last else "no checkpoint was saved"
    raise TrainingDivergedError(f"{run}: training diverged at step {step} (epoch {epoch}): the loss is "
                                f"{float(loss.detach().float().mean())}; {Path(run) / 'model'} was not written ({where}). Start a new run "
                                "with a lower learning rate (or a larger warm-up, or fp32)")




_END = object()


def _rng_states() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_rng_states(states: tuple[Any, ...]) -> None:
    cpu, cuda, numpy_state, python_state = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def epoch_batches(accelerator: Accelerator, loader: Any, skip: int) -> Iterator[Any]:
    """The batches of one epoch, after the first ``skip`` (those a resumed run already trained on).

    Starting a loader draws from the global random generators (its workers' base seed). An
    uninterrupted run drew that at the start of the epoch, before the checkpoint it saved mid-epoch,
    so the restored states already include it; a resumed epoch's draw is undone here, and dropout
    after a resume uses the random numbers it would have used without the interruption."""
    if not skip:
        yield from loader
        return
    states = _rng_states()
    batches = iter(accelerator.skip_first_batches(loader, skip))
    first = next(batches, _END)  # Accelerate's loaders start (and draw) on the first next()
    _set_rng_states(states)
    if first is not _END:
        yield first
        yield from batches
