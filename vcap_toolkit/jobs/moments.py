"""Moments: a search index of windows of each video (``vcap index --segments SECONDS [--stride S]``)
and what a search returns of them.

A file is cut into windows of ``seconds`` starting every ``stride`` seconds (``clips.fixed_windows``:
``vcap caption --segments``' windows when ``stride`` is ``seconds``; a shorter stride makes windows
that overlap, so that a moment across a window edge is still inside one window); each window is a
``Clip`` of the file and one row of the index, with its ``start`` and ``end``. A file counts as
indexed only with all its windows: one that cannot be probed or has a window that cannot be read is
listed with the reason and left out whole, to be tried again on the next run.

A search ranks rows; ``collapse`` then keeps, of the results of one video that overlap in time, only
the best (rows are best first), so ten results are ten moments, not one moment in ten overlapping
windows. Windows that only touch (one ends where the next starts) do not overlap (clips are
half-open).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.clips import Clip, clip_id, fixed_windows
from retrieval_pretrain.reading.video import probe_video


@dataclass(frozen=True)
class Hit:
    """One search result: the file, its score and, in a moment index, the window's ``start`` / ``end``."""

    path: str
    score: float
    start: float | None = None
    end: float | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        """``(path, score)``, or ``(path, start, end, score)`` for a moment (what ``search`` returns
        and ``vcap search --json`` prints)."""
        return (self.path, self.score) if self.start is None else (self.path, self.start, self.end, self.score)

    def overlaps(self, other: "Hit") -> bool:
        """The same file and time in common (half-open windows: touching is not overlapping); whole
        files never overlap another result (each file is one row)."""
        return (self.path == other.path and self.start is not None and other.start is not None
                and self.start < other.end and other.start < self.end)


def collapse(hits: Iterable[Hit]) -> list[Hit]:
    """``hits`` (best first) without each one that overlaps a better result of the same video."""
    kept: list[Hit] = []
    by_path: dict[str, list[Hit]] = {}
    for hit in hits:
        if any(hit.overlaps(k) for k in by_path.get(hit.path, ())):
            continue
        kept.append(hit)
        by_path.setdefault(hit.path, []).append(hit)
    return kept


def window_clips(paths: Sequence[str], seconds: float, stride: float
                 ) -> tuple[list[tuple[str, Clip]], dict[str, list[Clip]], list[tuple[str, str]]]:
    """The windows of each file as ``(clip id, Clip)`` items for the video tower, each file's
    windows (in time order), and the files that could not be probed ``(path, reason)``."""
    items: list[tuple[str, Clip]] = []
    windows_of: dict[str, list[Clip]] = {}
    failed: list[tuple[str, str]] = []
    for path in paths:
        try:
            duration = float(probe_video(path)["duration"])
            windows = fixed_windows(duration, seconds, stride)
        except VideoReadError as e:
            failed.append((path, str(e)))
            continue
        except ValueError as e:  # a duration of 0: no window to take
            failed.append((path, f"{path}: no window to index ({e})"))
            continue
        windows_of[path] = [Clip(Path(path), start, end) for start, end in windows]
        items += [(window_id(c), c) for c in windows_of[path]]
    return items, windows_of, failed


def window_id(clip: Clip) -> str:
    """The id a window is embedded under: ``clips.clip_id`` of its file and range."""
    return clip_id(str(clip.path), clip.start, clip.end)


def whole_files(windows_of: dict[str, list[Clip]], done: set[str] | dict[str, Any], failed: list[tuple[str, str]]
                ) -> tuple[list[str], list[tuple[str, str]]]:
    """Which files have every window in ``done`` (the window ids embedded), in the order of
    ``windows_of``, and ``(path, reason)`` of each other one: the first reason one of its windows gave
    (``failed``: the video tower's ``(str(clip), reason)``)."""
    reason = dict(reversed(failed))  # the first reason of each clip
    kept, lost = [], []
    for path, windows in windows_of.items():
        missing = [c for c in windows if window_id(c) not in done]
        if missing:
            lost.append((path, reason.get(str(missing[0]), f"{missing[0]}: was not embedded")))
        else:
            kept.append(path)
    return kept, lost

