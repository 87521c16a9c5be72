"""Low-level pieces both training scripts share: atomic files, the JSONL log, Accelerate setup and
resumable checkpoints (``save_state`` into ``RUN/checkpoints/step_N`` plus the loop position)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class JsonlLogger:
    """Appends one JSON object per line (only on the main process)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def make_accelerator(mixed_precision: str, grad_accum: int, device: str, seed: int) -> Accelerator:
    """An Accelerator for the run's precision/device; ``device='cpu'`` forces the CPU."""
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"run.mixed_precision must be no, fp16 or bf16, got {mixed_precision!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device must be auto, cpu or cuda, got {device!r}")
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu and mixed_precision == "fp16":
        print("warning: run.mixed_precision=fp16 needs a GPU; training in fp32 on the CPU "
              "(run.mixed_precision=bf16 works on CPUs)", file=sys.stderr)
        mixed_precision = "no"
    # One process may run several jobs (the demo, tests, a notebook), each with its own precision
    # and accumulation. Accelerate keeps both in process-wide singletons that refuse a second
    # precision and silently keep the first accumulation count; reset them (not the distributed
    # state, PartialState, which the launcher set up once).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu)
    set_seed(seed)
    return accelerator


def scheduler_length(optimizer_steps: int, warmup_ratio: float, accelerator: Accelerator) -> tuple[int, int]:
    """``(warmup, total)`` for a learning-rate schedule that will be passed to ``accelerator.prepare``.

    Accelerate's wrapped scheduler steps once *per process* at every optimizer step (it assumes
    the schedule was sized for the single-process batch count), so a schedule of
    ``optimizer_steps`` real steps must be ``optimizer_steps * num_processes`` long; otherwise
    warm-up and decay would end after 1/num_processes of training on several GPUs.
    """
    total = max(1, optimizer_steps) * accelerator.num_processes
    return int(warmup_ratio * total), total


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint folder in ``run/checkpoints`` (complete = renamed into place)."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step_*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def save_checkpoint(accelerator: Accelerator, run: Path, global_step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename to ``step_N``; keeps the
    newest ``keep`` checkpoints. ``state`` (epoch, step in epoch, ...) goes to trainer_state.json."""
    folder = Path(run) / "checkpoints"
    final = folder / f"step_{global_step}"
    tmp = folder / f".tmp_step_{global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_json(tmp / "trainer_state.json", {"global_step": global_step, **state})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, run: Path) -> dict[str, Any] | None:
    """Restore the newest checkpoint of ``run``; returns its trainer state, or None if there is none."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return None
    accelerator.load_state(str(ckpt))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    print(f"resumed from {ckpt} (step {state['global_step']})", file=sys.stderr)
    return state


class StepTimer:
    """Splits wall time into waiting for data and computing, for the log and the benchmarks."""

    def __init__(self) -> None:
        self.data = self.compute = 0.0
        self._t = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data += now - self._t
        self._t = now

    def step_done(self) -> None:
        now = time.perf_counter()
        self.compute += now - self._t
        self._t = now

    def reset(self) -> tuple[float, float]:
        d, c = self.data, self.compute
        self.data = self.compute = 0.0
        return d, c
