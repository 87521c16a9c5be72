"""What a training run records while it runs: the JSONL log (one object per line, main process
only) and the split of wall time into waiting for data and computing.

``JsonlLogger`` writes the log; ``read_log`` is the one reader of it (``vcap report`` and
``vcap evaluate --report`` go through it): a file the toolkit wrote is still checked when read back."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval_pretrain.foundation.errors import DatasetError

# A logged number beyond this is left out of what ``read_log`` returns, like NaN and infinity. No
# loss, learning rate, metric, step count or time stamp a run logs comes near it (time stamps are
# ~1.7e9), and it keeps every sum, difference and scale a plot takes of two values finite
# (1e30 * 1e30 = 1e60, far below the largest float, ~1.8e308).
VALUE_BOUND = 1e30


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


@dataclass(frozen=True)
class LogProblem:
    """What ``read_log`` left out: a whole ``line`` (``what="line"``) or one value of it (``"value"``)."""

    line: int
    what: str
    reason: str


def _bad_value(value: Any) -> str | None:
    """Why a logged value cannot be kept (a number not finite or beyond ``VALUE_BOUND``, text that
    is not valid Unicode), or None. Nested lists and objects are walked without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not abs(item) <= VALUE_BOUND:
            return f"{item!r} is not a finite number within +-{VALUE_BOUND:g}" if isinstance(item, float) \
                else f"a number beyond +-{VALUE_BOUND:g}"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "text that is not valid Unicode"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _read_line(number: int, line: str, problems: list[LogProblem]) -> dict[str, Any] | None:
    """One line of the log as a record with only keepable values, or None (the reason in ``problems``)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, cut short by a kill, a number too long, nested too deep
        problems.append(LogProblem(number, "line", "not JSON (a line cut short by a killed run?)"))
        return None
    if not isinstance(record, dict):
        problems.append(LogProblem(number, "line", f"a JSON {type(record).__name__}, not an object"))
        return None
    kept: dict[str, Any] = {}
    for key, value in record.items():
        why = _bad_value(key) or _bad_value(value)
        if why:
            problems.append(LogProblem(number, "value", why))
        else:
            kept[key] = value
    return kept


def read_log(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], list[LogProblem]]:
    """Read a ``log.jsonl``: ``(records, problems)``. ``records``: ``(line number, object)`` per line
    that is a JSON object, holding only finite numbers within ``VALUE_BOUND`` (and valid text);
    ``problems``: each line skipped (not JSON, not an object, the cut last line of a killed run) and
    each value left out (NaN, infinite, huge), with its line number. Blank lines are ignored.

    Raises:
        DatasetError: the log cannot be read as a whole (missing, not a file, unreadable, not UTF-8).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no training log here" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the training log: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a training log: not UTF-8 text (byte {e.start})") from e
    records: list[tuple[int, dict[str, Any]]] = []
    problems: list[LogProblem] = []
    for number, line in enumerate(text.split("\n"), 1):  # lines as the writer ends them
        if line.strip():
            record = _read_line(number, line, problems)
            if record is not None:
                records.append((number, record))
    return records, problems


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
        """The sums since the last reset (a log record's), cleared."""
        d, c = self.data, self.compute
        self.data = self.compute = 0.0
        return d, c

    def restart(self) -> None:
        """Start the clock now, keeping the sums: between epochs (evaluation, checkpoints) is neither
        data nor compute, and the steps after an epoch's last log record still count in the next."""
        self._t = time.perf_counter()
