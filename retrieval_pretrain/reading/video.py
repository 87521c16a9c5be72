"""Frame sampling from video files: decode only the frames a model will see.

Three ways to pick ``num_frames`` frame indices from a clip of ``n`` frames (``sample_indices``):

* ``uniform`` - the frame under the centre of each of ``num_frames`` equal segments, TSN's test
  mode (Wang et al., "Temporal Segment Networks", ECCV 2016) and the evaluation sampling of
  CLIP4Clip / CLIP4Caption.
* ``tsn`` - one random frame inside each segment, TSN's training mode. Segment ``i`` is the frames
  ``[ceil(i*n/k), ceil((i+1)*n/k))``: the segments partition the clip, so the picks never repeat.
* ``fps`` - CLIP4Clip's rule (Luo et al., 2021, ``dataloaders/rawvideo_util.py``): one frame per
  second, i.e. every ``int(fps)``-th frame from frame 0, then, if more than ``num_frames``,
  thinned with ``np.linspace(0, m - 1, num_frames, dtype=int)`` as its data loaders do. For a
  variable-frame-rate clip ``fps`` is the average rate, so "per second" holds on average.

Short clips (fewer real frames than asked for, any method): every frame once, in order, then the
last index repeated with ``mask`` False. A file with a single frame is not a video (a still image
in a video container: nothing moves, and a captioner would describe a picture); ``read_frames``
and ``probe_video`` reject it with ``VideoReadError`` (``MIN_VIDEO_FRAMES``).

Decoding is a backend's (``decoding/``: decord, torchcodec or PyAV; ``video.backend``). ``auto``, the
default, takes decord where it installs (the pixels every model so far was trained on), else PyAV,
else torchcodec; PyAV measured as fast as decord or faster everywhere (BENCHMARKS.md, "Decoder
backends"), so ``video.backend=pyav`` is the faster choice; ``decoding.choice`` holds the rule.
Each opens the file once per call (safe in
DataLoader worker processes; a time range reuses the thread's last reader) and decodes only the
sampled indices. Every backend gives the same frame count, indices and start times (frame ``i`` is
the ``i``-th in presentation order of the stream ffmpeg's ``av_find_best_stream`` picks; starts
from the packets' pts, ``index / fps`` where there are none), applies rotation metadata, and
refuses a file cut short (``video_integrity.check_complete`` compares the frames found with what
the header lists). Pixels: identical across backends for 8-bit video at native size; resized in the
decoder and 10-bit video differ by a few levels (``tests/test_backends.py`` states the bounds).

Every failure raises ``VideoReadError`` (message ``"{path}: {reason}"``); when a backend lacks the
codec of a file, the message names the installed backends that decode it.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.clips import Clip, as_clip, frames_in_range
from retrieval_pretrain.reading.decoding.base import REENCODE, CodecNotSupported, Decoder, resized
from retrieval_pretrain.reading.decoding.choice import current, open_decoder, who_decodes
from retrieval_pretrain.reading.decoding.decord_backend import open_reader as _open  # noqa: F401  (old name: tests)
from retrieval_pretrain.reading.decoding.decord_backend import to_numpy as _to_numpy  # noqa: F401  (old name: tests)
from retrieval_pretrain.reading.video_integrity import check_complete, probe_indices

METHODS = ("uniform", "fps", "tsn")
MIN_VIDEO_FRAMES = 2  # fewer is a still image, rejected (see the module docstring)


@dataclass
class SampledFrames:
    """What ``read_frames`` returns; ``N`` is the ``num_frames`` asked for."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, upright
    timestamps: np.ndarray  # (N,) float64 start time of each sampled frame, seconds
    mask: np.ndarray  # (N,) bool, False for padding
    indices: np.ndarray  # (N,) int64 frame indices (presentation order)
    num_video_frames: int
    fps: float  # average frame rate; nan if the file states none


def _pad(real: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``real`` indices followed by copies of the last one, and the mask marking the real ones."""
    indices = np.full(num_frames, real[-1], dtype=np.int64)
    indices[: len(real)] = real
    mask = np.zeros(num_frames, dtype=bool)
    mask[: len(real)] = True
    return indices, mask


def sample_indices(num_video_frames: int, num_frames: int, method: str = "uniform",
                   fps: float | None = None, rng: np.random.Generator | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``num_frames`` frame indices of a clip with ``num_video_frames`` frames. Pure, no I/O.

    Args:
        num_video_frames: frames in the clip (``n``, at least 1).
        num_frames: frames to return (``k``, at least 1).
        method: ``uniform`` (index ``floor((i + 0.5) * n / k)``), ``tsn`` (a uniformly random frame
            of segment ``[ceil(i*n/k), ceil((i+1)*n/k))``), or ``fps`` (CLIP4Clip: every
            ``int(fps)``-th frame, uniformly thinned to at most ``k``). See the module docstring.
        fps: the clip's frame rate; required by ``fps``.
        rng: the random generator; required by ``tsn`` (pass a seeded one for reproducibility).

    Returns:
        ``(indices, mask)``: int64 ``(k,)`` indices, non-decreasing, in ``[0, n)``, and bool ``(k,)``.
        When fewer than ``k`` real frames are picked (``n < k``, or ``fps`` on a clip shorter than
        ``k`` seconds) the last real index is repeated with ``mask`` False.

    Raises:
        ValueError: a bad argument (``n < 1``, ``k < 1``, unknown method, missing fps/rng).
    """
    n, k = int(num_video_frames), int(num_frames)
    if n < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if k < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    seg = np.arange(k, dtype=np.int64)
    if method == "uniform":
        # integer form of floor((i + 0.5) * n / k): exact for any n, k
        real = np.arange(n, dtype=np.int64) if n <= k else ((2 * seg + 1) * n) // (2 * k)
    elif method == "tsn":
        if rng is None:
            raise ValueError("method 'tsn' needs rng, e.g. numpy.random.default_rng(seed)")
        if n <= k:
            real = np.arange(n, dtype=np.int64)
        else:
            bounds = (np.arange(k + 1, dtype=np.int64) * n + k - 1) // k  # ceil(i * n / k), (k+1,)
            real = rng.integers(bounds[:-1], bounds[1:]).astype(np.int64)  # one per segment
    elif method == "fps":
        if fps is None or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"method 'fps' needs a positive frame rate, got fps={fps}")
        per_second = np.arange(0, n, max(1, int(fps)), dtype=np.int64)  # CLIP4Clip: int(fps) step
        m = len(per_second)
        real = per_second if m <= k else per_second[np.linspace(0, m - 1, num=k).astype(np.int64)]
    else:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    return _pad(real, k)


# ---------------------------------------------------------------- opening a file


def _check_file(path: str | os.PathLike) -> str:
    """The path as a string, after the checks that need no decoder."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoReadError(p, "file not found")
    if not os.path.isfile(p):
        raise VideoReadError(p, "not a regular file")
    if os.path.getsize(p) == 0:
        raise VideoReadError(p, "file is empty (0 bytes)")
    return p


def _open_checked(p: str, num_threads: int, backend: str) -> Decoder:
    """Open ``p`` with ``backend``, refuse it if it is no video (fewer than ``MIN_VIDEO_FRAMES``) or
    truncated. A codec the backend lacks is named with the backends that decode it."""
    try:
        decoder = open_decoder(p, backend, num_threads)
    except CodecNotSupported as e:
        able = who_decodes(p, backend)
        other = f"video.backend={' or '.join(able)} decodes it" if able else "no installed decoder reads it"
        raise VideoReadError(p, f"{e.reason}; {other}, or {REENCODE}") from None
    n = decoder.timing.n
    if n < 1:
        raise VideoReadError(p, "no video frames")
    if n < MIN_VIDEO_FRAMES:
        raise VideoReadError(p, f"only {n} frame: a still image, not a video (at least {MIN_VIDEO_FRAMES} frames "
                                "are needed)")
    check_complete(p, n, decoder.timing.end, decoder.timing.fps)
    return decoder


_LAST = threading.local()  # per thread: (key, Decoder) of the last file read by range
_INHERITED: list[threading.local] = []  # a forked child's copies of its parent's decoders: never destroyed


def _after_fork_in_child() -> None:
    """A forked process (a DataLoader worker) must not reuse or destroy the decoder it inherited: its
    decoding threads live only in the parent, and decord's destructor waits for them forever. Keep
    the inherited one aside for the child's lifetime and start with none."""
    global _LAST
    _INHERITED.append(_LAST)
    _LAST = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)
# Release the main thread's decoder while the interpreter is whole, not in module teardown.
atexit.register(lambda: setattr(_LAST, "value", None))


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int, int] | None:
    """What tells one file's content from another's without reading it - (device, inode, size,
    mtime and ctime in ns) of whatever ``path`` names now (a link followed) - or None when it cannot
    be read. The ctime: a file rewritten in place at its size, its mtime set back (``cp -p``,
    ``rsync --inplace -t``), keeps the rest (a hostile test's find); no process can set ctime back."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _opened(p: str, num_threads: int, backend: str, reuse: bool) -> Decoder:
    """A checked decoder of ``p``. With ``reuse`` (reads by time range) the thread's last decoder is
    kept, so the many windows of one long video open and index it once per process, not once per
    window; it is reopened when the file changes (size, mtime, inode) or the backend does; one is held
    at most."""
    if not reuse:
        return _open_checked(p, num_threads, backend)
    key = (p, file_stamp(p), num_threads, backend)
    last = getattr(_LAST, "value", None)
    if last is not None and last[0] == key:
        return last[1]
    _LAST.value = None  # let the previous decoder go before opening the next
    decoder = _open_checked(p, num_threads, backend)
    _LAST.value = (key, decoder)
    return decoder


# ---------------------------------------------------------------- public readers


def read_frames(path: str | os.PathLike | Clip, num_frames: int, method: str = "uniform",
                short_side: int | None = None, rng: np.random.Generator | None = None,
                num_threads: int = 1, backend: str | None = None) -> SampledFrames:
    """Decode ``num_frames`` frames of a video, picked by ``sample_indices``, and nothing else.

    Args:
        path: the video file, or a ``clips.Clip``: a time range of one, sampled inside the range
            only (the frames whose start lies in ``[start, end)``; see ``clips.frames_in_range``).
        num_frames: frames to return (padding included, see ``sample_indices``).
        method: ``uniform``, ``fps`` or ``tsn``.
        short_side: if given, the decoder resizes so that the shorter side of the upright frame is
            ``short_side`` (up or down), aspect ratio kept. This costs a native-size decode of
            frame 0, to learn the frame size (and with decord one extra reader open). Frames still
            need a centre crop.
        rng: random generator for ``tsn``.
        num_threads: decoder threads for this call's reader (1 suits DataLoader workers).
        backend: ``decord``, ``torchcodec``, ``pyav`` or ``auto``; default: this process's
            (``decoding.choice.current``: ``video.backend`` as ``vcap`` set it).

    Returns:
        ``SampledFrames``; ``frames`` is ``(num_frames, H, W, 3)`` uint8 RGB; indices and
        timestamps are the file's own (a range's first frame is not index 0).

    Raises:
        VideoReadError: any file that cannot be read (message ``"{path}: {reason}"``), and a range
            that starts past the end of the video or holds no frame.
        ValueError: a bad argument (unknown method, ``tsn`` without ``rng``, ...); ConfigError (a
            ValueError) for a backend that is unknown or not usable here.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    name = current(backend)
    clip = as_clip(path)
    p = _check_file(clip.path)
    got = _opened(p, num_threads, name, reuse=clip.is_range)
    timing = got.timing
    if method == "fps" and not math.isfinite(timing.fps):
        raise VideoReadError(p, "frame rate unknown, cannot sample one frame per second")
    lo, hi = frames_in_range(timing.starts, clip, timing.end) if clip.is_range else (0, timing.n)
    indices, mask = sample_indices(hi - lo, num_frames, method, fps=timing.fps, rng=rng)
    indices = indices + lo
    try:
        size = None if short_side is None else resized(*got.native_size(), short_side)
        frames = got.frames(indices, size)  # (N, H, W, 3)
    except VideoReadError:
        _LAST.value = None  # never reuse a reader that failed
        raise
    return SampledFrames(frames=frames, timestamps=timing.starts[indices], mask=mask, indices=indices,
                         num_video_frames=timing.n, fps=timing.fps)


def probe_video(path: str | os.PathLike, num_threads: int = 1,
                samplings: Sequence[tuple[int, str]] = (), backend: str | None = None) -> dict[str, Any]:
    """Open a video, refuse it if truncated, and decode frame 0 - and, for each ``(num_frames,
    method)`` of ``samplings``, the frames ``read_frames`` picks with it and the first and last
    frame of each of the ``num_frames`` TSN segments (``tsn`` picks at random between them), plus
    the last frame (``video_integrity.probe_indices``; 8 frames in memory at a time). Returns
    ``{"num_frames", "fps", "height", "width", "duration"}`` (upright height/width; duration in
    seconds, last frame's end). Raises ``VideoReadError`` where ``read_frames`` would; ``backend``
    as for ``read_frames``."""
    for _, method in samplings:
        if method not in METHODS:
            raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    p = _check_file(path)
    decoder = _open_checked(p, num_threads, current(backend))
    n, fps = decoder.timing.n, decoder.timing.fps
    height, width = decoder.native_size()
    if samplings:
        if any(m == "fps" for _, m in samplings) and not math.isfinite(fps):
            raise VideoReadError(p, "frame rate unknown, cannot sample one frame per second")
        picks = [sample_indices(n, k, m, fps=fps)[0] for k, m in samplings if m != "tsn"]
        wanted = probe_indices(n, picks, [k for k, _ in samplings])
        for chunk in np.array_split(wanted, -(-len(wanted) // 8)):
            decoder.frames(chunk)
    return {"num_frames": n, "fps": fps, "height": height, "width": width, "duration": decoder.timing.end}
