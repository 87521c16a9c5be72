"""What every decoder backend gives ``reading.video``, and the rules they share.

A backend opens one file and says how many frames its video stream holds, when each starts (seconds,
presentation order), the average frame rate and where the last frame ends (``Timing``); then it
decodes the frames at given indices as ``(N, H, W, 3)`` uint8 RGB, upright (rotation metadata
applied), optionally resized in the decoder. Frame ``i`` is the ``i``-th frame in presentation order
of the stream ffmpeg's ``av_find_best_stream`` picks, for every backend.

Timing rules, the same for every backend (``timing``): a frame's start is its packet's pts minus the
stream's start time; where those are unusable (missing, negative, not strictly increasing once
sorted - and always in AVI, which stores no presentation time) frame ``i`` starts at ``i / fps``.
``fps`` is the stream's average rate, else ``(n - 1) / last start``; nan if neither is known. The
last frame ends at its packet's pts + duration, else its start + ``1 / fps``.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError

BACKENDS = ("decord", "torchcodec", "pyav")
_INHERITED: list[dict] = []  # what a forked child's copies of its parent's decoders held: never freed there
REENCODE = "re-encode to H.264, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"


class CodecNotSupported(VideoReadError):
    """The backend found a video stream but has no decoder for its codec (the reason names it);
    ``reading.video`` adds which installed backends decode it, and how to re-encode (``REENCODE``)."""


@dataclass
class Timing:
    """A stream's frames as its index lists them."""

    n: int  # frames (packets of the stream: what decord counts)
    starts: np.ndarray  # (n,) float64 start of each frame, seconds, presentation order
    fps: float  # average frame rate; nan if unknown
    end: float  # end of the last frame, seconds


def timing(starts: np.ndarray, last_stop: float, avg_fps: float) -> Timing:
    """``Timing`` from raw per-frame starts (nan where unknown), the last frame's stop and the
    stream's average rate, by the rules of the module docstring."""
    starts = np.asarray(starts, dtype=np.float64)
    n = len(starts)
    valid = bool(n and np.isfinite(starts).all() and starts.min() >= -1e-3 and (np.diff(starts) > 0).all())
    fps = float(avg_fps)
    if not (math.isfinite(fps) and fps > 0):
        fps = (n - 1) / starts[-1] if valid and n > 1 and starts[-1] > 0 else math.nan
    if not valid:
        starts = np.arange(n, dtype=np.float64) / fps
    end = float(last_stop)
    if n and not (math.isfinite(end) and end > starts[-1]):
        end = float(starts[-1]) + 1.0 / fps
    return Timing(n, starts, fps, end)


def resized(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side ``short_side`` and the aspect ratio kept (rounded)."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def decode_failure(path: str, index: int | None, n: int, detail: str) -> VideoReadError:
    """The error for a frame that did not decode: ``decoding failed at frame I (the container lists
    N frames): why`` (``index`` None when the decoder did not say which)."""
    where = f"at frame {index} " if index is not None else ""
    return VideoReadError(path, f"decoding failed {where}(the container lists {n} frames): {detail}")


class Decoder(ABC):
    """One open video file. ``timing`` is known at open; frames are decoded on request. Not
    thread-safe: one decoder per thread (``reading.video`` keeps one per thread)."""

    name = ""

    def __init__(self, path: str, timing: Timing):
        self.path = path
        self.timing = timing
        self._pid = os.getpid()

    def __del__(self) -> None:
        """Close, in the process that opened it. A forked child (a DataLoader worker) that drops its
        copy of a parent's decoder keeps that copy's FFmpeg objects instead: freeing there what the
        parent made hung the child (an open PyAV container: ``tests/test_backends.py``; decord's
        reader waits for decoding threads only the parent has, ``reading/video.py`` notes)."""
        if getattr(self, "_pid", os.getpid()) != os.getpid():
            _INHERITED.append(dict(self.__dict__))
            return
        self.close()

    @abstractmethod
    def native_size(self) -> tuple[int, int]:
        """Upright ``(H, W)`` of the frames, from decoding frame 0 (so a file whose first frame does
        not decode fails here, naming it)."""

    @abstractmethod
    def frames(self, indices: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as ``(N, H, W, 3)`` uint8 RGB, upright;
        resized to ``size = (H, W)`` (upright) in the decoder when given. ``VideoReadError`` naming
        the first frame that does not decode. Past the last frame that decodes, where the container
        lists more frames than the stream yields, the last decoded frame stands in (as decord does)."""

    def close(self) -> None:
        """Let the file go (also done when the decoder is garbage collected)."""
