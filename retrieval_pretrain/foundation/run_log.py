"""What a training run records while it runs: the JSONL log (one object per line, main process
only) and the split of wall time into waiting for data and computing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def main_process() -> bool:
    """Whether this is the main process of a launch (``RANK`` 0, or no launcher): the one that
    prints results and once-per-run warnings. Read from the environment, so it needs no torch."""
    return int(os.environ.get("RANK", "0")) == 0


class JsonlLogger:
    """Appends one JSON object per line (only on the main process). ``lines``: records in the file
    (checkpoints store it, so a resumed run can cut the log back to the checkpoint)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled, self.lines = Path(path), enabled, 0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                self.lines = len(self.path.read_text().splitlines())

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1


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
