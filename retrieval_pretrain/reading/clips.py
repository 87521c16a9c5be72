"""A clip: a whole video file, or a time range of one (``start`` / ``end`` in seconds).

Annotations point into long videos with a range (jsonl ``start`` / ``end``, the dense-caption formats'
segments); every consumer hands a ``Clip`` to ``video.read_frames``, which samples inside the range
only. Which frames belong to a range (``frames_in_range``): those whose *start time* lies in
``[start, end)`` - a frame that starts exactly at ``end`` belongs to the next window, so consecutive
windows share no frame, and every sampled frame's timestamp lies in ``[start, end]``.

A range's clip id (``clip_id``) is the video id plus the range in milliseconds, ``v_abc[12.5-20]``: the
feature caches key each clip by video and range through it.

``fixed_windows`` cuts a video's duration into windows of a length (optionally overlapping, one every
``stride``): the arithmetic of ``caption.windows.segment_windows``, here so that the search index's
moments (``vcap index --segments``, a job that may not import ``caption``) are the same windows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError


def seconds(x: float) -> str:
    """``x`` seconds as short text: millisecond precision, no trailing zeros (``12.5``, ``20``)."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


# No video lasts longer (about 116 days): a time past it is a typo or hostile, and would make a
# clip id (and the feature file named by it) hundreds of digits long (a hostile round's find).
MAX_SECONDS = 1e7


def range_problem(start: object, end: object) -> str:
    """Why ``(start, end)`` cannot be a time range (``""`` when it can): numbers (not booleans), finite,
    ``0 <= start < end <= MAX_SECONDS``."""
    for name, v in (("start", start), ("end", end)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"'{name}' must be a number of seconds, got {type(v).__name__}"
        if not math.isfinite(v):
            return f"'{name}' must be finite, got {v}"
        if v > MAX_SECONDS:
            return f"'{name}' {v:g} s is past any video's length (at most {MAX_SECONDS:g} s)"
    if start < 0:
        return f"negative start time {start}"
    if end == start:
        return f"zero-length range [{seconds(start)}, {seconds(end)}]"
    if end < start:
        return f"end before start [{seconds(start)}, {seconds(end)}]"
    return ""


def clip_id(video_id: str, start: float | None, end: float | None) -> str:
    """The id of a range of ``video_id`` (``video_id`` itself for a whole video): ``id[start-end]``."""
    return video_id if start is None else f"{video_id}[{seconds(start)}-{seconds(end)}]"


@dataclass(frozen=True)
class Clip:
    """A video file, or the part of it from ``start`` to ``end`` seconds (both or neither)."""

    path: Path
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if (self.start is None) != (self.end is None):
            raise ValueError(f"{self.path}: a clip needs both start and end, or neither")
        if self.start is not None:
            why = range_problem(self.start, self.end)
            if why:
                raise ValueError(f"{self.path}: {why}")
            object.__setattr__(self, "start", float(self.start))
            object.__setattr__(self, "end", float(self.end))

    @property
    def is_range(self) -> bool:
        return self.start is not None

    def __str__(self) -> str:
        """The file, plus the range when there is one: ``a.mp4 [12.5-20 s]`` (what error lines name)."""
        if self.start is None:
            return str(self.path)
        return f"{self.path} [{seconds(self.start)}-{seconds(self.end)} s]"


def as_clip(source: str | os.PathLike | Clip) -> Clip:
    """A ``Clip`` of ``source``: a clip as is, a path as the whole file."""
    return source if isinstance(source, Clip) else Clip(Path(source))


def frames_in_range(starts: np.ndarray, clip: Clip, duration: float) -> tuple[int, int]:
    """``(lo, hi)``: frames ``lo .. hi-1`` start inside ``[clip.start, clip.end)``.

    ``starts``: every frame's start time (non-decreasing, seconds); ``duration``: the video's end.
    ``VideoReadError`` naming the file and the range when the range begins at or past the end of
    the video, or holds no frame start (a range shorter than one frame's interval)."""
    if clip.start >= duration:
        raise VideoReadError(clip.path, f"the range {seconds(clip.start)}-{seconds(clip.end)} s starts past the "
                                        f"end of the video ({seconds(duration)} s long)")
    lo = int(np.searchsorted(starts, clip.start - 1e-6, side="left"))
    hi = int(np.searchsorted(starts, clip.end - 1e-6, side="left"))
    if hi <= lo:
        near = starts[max(0, lo - 1): lo + 1]
        raise VideoReadError(clip.path, f"the range {seconds(clip.start)}-{seconds(clip.end)} s holds no frame "
                                        f"(frames start at {', '.join(seconds(t) for t in near)} s)")
    return lo, hi



TAIL_FRACTION = 0.25  # a last window shorter than this share of a window joins the one before


# The shortest window a command cuts (--segments, --stride, --max-segment): times are kept to the
# millisecond, and a window must hold a frame of any ordinary video; shorter asks for millions of
# windows an hour (found by a hostile round: 1e-9 s ran out of memory).
MIN_WINDOW = 0.1


def fixed_windows(duration: float, seconds: float, stride: float | None = None) -> list[tuple[float, float]]:
    """``(start, end)`` windows of ``seconds`` over ``[0, duration]``, one starting every ``stride``
    seconds (default ``seconds``: consecutive windows; less: windows that overlap), times rounded to
    the millisecond. The fewest windows that reach ``duration``; the last ends there. A last window
    shorter than ``TAIL_FRACTION`` of a window is not one of its own: the window before it runs
    to the end instead (so a short video is one window).

    With ``stride == seconds`` these are ``caption.windows.segment_windows``' windows: the pure
    arithmetic lives here so that ``vcap index --segments`` (a job, which may not import
    ``caption``) cuts a video where ``vcap caption --segments`` does."""
    stride = seconds if stride is None else stride
    if not (duration > 0 and seconds > 0 and 0 < stride <= seconds):
        raise ValueError(f"need duration > 0 and 0 < stride <= seconds, got {duration}, {seconds}, {stride}")
    count = max(1, math.ceil((duration - seconds) / stride - 1e-9) + 1)
    if count > 1 and duration - (count - 1) * stride < TAIL_FRACTION * seconds:
        count -= 1
    ends = [duration if i == count - 1 else (i + 1) * seconds if stride == seconds else i * stride + seconds
            for i in range(count)]  # (i + 1) * seconds: segment_windows' float edges, to the last bit
    return [(float(round(i * stride, 3)), float(round(end, 3))) for i, end in enumerate(ends)]
