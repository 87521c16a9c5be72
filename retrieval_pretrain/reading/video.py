"""Frame sampling from video files with decord: decode only the frames a model will see.

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

``read_frames`` opens one decord ``VideoReader`` per call (safe in DataLoader worker processes)
and decodes only the sampled indices with ``get_batch``. Facts about decord 0.6 it relies on
(each checked by ``tests/test_video.py`` on real files):

* Frame ``i`` is the ``i``-th frame in presentation order (decord sorts packets by pts), so files
  whose frames are stored out of timestamp order read correctly; ``get_batch`` returns the same
  pixels as decoding every frame in sequence.
* Rotation metadata (the display matrix of phone videos) is applied by decord itself: frames come
  out upright, and the ``width``/``height`` it resizes to are those of the upright frame.
* Of several video streams decord reads the one ffmpeg's ``av_find_best_stream`` picks (for
  ``torchcodec/nasa_13013.mp4`` the 480x270 stream, not the 320x180 one); it cannot be chosen.
* ``get_frame_timestamp`` gives per-frame start/stop seconds from packet pts (exact for
  variable-frame-rate files, to float32 precision). Where a container has no pts (AVI), decord
  reports a huge negative constant; such timestamps are replaced by ``index / fps``.
* If the last packets of a stream yield no frame (the container lists more frames than decode),
  decord substitutes the last decoded frame for them. We keep that: the substitute is the
  neighbouring frame and rejecting the video would lose it. Any other decoding error raises.
* Its frame index comes from reading every packet at open, up to wherever the file ends: a file
  cut short with its header intact (faststart mp4, Matroska, AVI) opens as a shorter clip.
  ``video_integrity.check_complete`` compares the frames found with what the header lists (one
  header-only PyAV open, about 1 ms) and refuses the file as truncated.

Every failure raises ``VideoReadError`` (message ``"{path}: {reason}"``); when decord cannot open a
file, PyAV looks at it to say why (no video stream, a codec decord lacks, not a video, truncated).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.clips import Clip, as_clip, frames_in_range
from retrieval_pretrain.reading.video_integrity import check_complete, decord_detail, diagnose_open, probe_indices

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


# ---------------------------------------------------------------- decord plumbing and diagnosis

_QUIET = False


def _decord() -> Any:
    """Import decord and silence ffmpeg's own log lines once (errors still reach us as exceptions)."""
    global _QUIET
    import decord  # deferred: decord (FFmpeg) loads on the first read

    if not _QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _QUIET = True
    return decord


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


def _open(path: str, num_threads: int, width: int = -1, height: int = -1) -> Any:
    """A fresh decord ``VideoReader`` (frames resized in the decoder when width/height are set)."""
    decord = _decord()
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height,
                                    num_threads=num_threads)
    except Exception as e:  # DECORDError, RuntimeError("Error reading ..."), AssertionError (0 frames)
        raise VideoReadError(path, diagnose_open(path, e)) from None
    if len(reader) < 1:
        raise VideoReadError(path, "no video frames")
    if len(reader) < MIN_VIDEO_FRAMES:
        raise VideoReadError(path, f"only {len(reader)} frame: a still image, not a video "
                                   f"(at least {MIN_VIDEO_FRAMES} frames are needed)")
    return reader


def _to_numpy(batch: Any) -> np.ndarray:
    """decord's output as a numpy array, whatever bridge another module may have set."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def _decode(reader: Any, path: str, indices: np.ndarray, num_video_frames: int,
            num_threads: int, size: tuple[int, int]) -> np.ndarray:
    """``reader.get_batch(indices)`` as ``(N, H, W, 3)`` uint8; on failure name the first bad frame."""
    try:
        return _to_numpy(reader.get_batch(indices.tolist()))
    except Exception as e:
        detail = decord_detail(e)
    # error path only: decode the wanted frames one at a time with a fresh reader to find which fails
    bad = None
    try:
        probe = _open(path, num_threads, width=size[1], height=size[0])
        for i in sorted(set(indices.tolist())):
            try:
                probe.get_batch([i])
            except Exception as e:
                bad, detail = i, decord_detail(e)
                break
    except VideoReadError:
        pass
    where = f"at frame {bad} " if bad is not None else ""
    raise VideoReadError(path, f"decoding failed {where}(the container lists {num_video_frames} "
                               f"frames): {detail}") from None


def _timing(reader: Any, num_video_frames: int) -> tuple[np.ndarray, float]:
    """Start time of every frame (seconds, float64 ``(n,)``) and the average frame rate.

    decord's timestamps are used when they are finite, non-negative and strictly increasing;
    otherwise (AVI without pts) frame ``i`` starts at ``i / fps``. ``fps`` is the container's
    average rate, or ``(n - 1) / last start`` when it states none; nan if neither is known.
    """
    n = num_video_frames
    try:
        starts = np.asarray(reader.get_frame_timestamp(list(range(n))), dtype=np.float64)[:, 0]
    except Exception:
        starts = np.full(n, np.nan)
    valid = bool(np.isfinite(starts).all() and starts.min() >= -1e-3 and (np.diff(starts) > 0).all())
    fps = float(reader.get_avg_fps())
    if not (math.isfinite(fps) and fps > 0):
        fps = (n - 1) / starts[-1] if valid and n > 1 and starts[-1] > 0 else math.nan
    if not valid:
        starts = np.arange(n, dtype=np.float64) / fps
    return starts, fps


def _resized(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side ``short_side`` and the aspect ratio kept (rounded)."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def _first_frame_shape(reader: Any, path: str) -> tuple[int, int]:
    """Upright ``(H, W)`` of the video, from decoding its first frame (decord has no shape query)."""
    try:
        frame = _to_numpy(reader.next())
    except StopIteration:  # e.g. a text file that ffmpeg's tty demuxer took for a video
        raise VideoReadError(path, "decoding failed at frame 0: the decoder returned no frame") from None
    except Exception as e:
        raise VideoReadError(path, f"decoding failed at frame 0: {decord_detail(e)}") from None
    return int(frame.shape[0]), int(frame.shape[1])


@dataclass
class _Opened:
    """A checked reader of one file: its frame count, every frame's start, the average rate, the
    video's end (seconds) and the size frames come out at (``(-1, -1)``: native)."""

    reader: Any
    n: int
    starts: np.ndarray
    fps: float
    end: float
    size: tuple[int, int]


def _end_time(reader: Any, n: int, starts: np.ndarray, fps: float) -> float:
    """The last frame's end (seconds): its stop timestamp, or its start + 1 / fps where there is none."""
    try:
        end = float(np.asarray(reader.get_frame_timestamp([n - 1]), dtype=np.float64)[0, 1])
    except Exception:
        end = math.nan
    return end if math.isfinite(end) and end > starts[-1] else float(starts[-1]) + 1.0 / fps


def _open_checked(p: str, num_threads: int, short_side: int | None) -> _Opened:
    """Open ``p``, time its frames, refuse it if truncated, and reopen at ``short_side`` if asked."""
    reader = _open(p, num_threads)
    n = len(reader)
    starts, fps = _timing(reader, n)
    check_complete(p, n, float(starts[-1]) + (1.0 / fps if math.isfinite(fps) else 0.0), fps)
    size = (-1, -1)
    if short_side is not None:
        native = _first_frame_shape(reader, p)
        size = _resized(*native, short_side)
        if size != native:
            reader = _open(p, num_threads, width=size[1], height=size[0])
    return _Opened(reader, n, starts, fps, _end_time(reader, n, starts, fps), size)


_LAST = threading.local()  # per thread: (key, _Opened) of the last file read by range


def _opened(p: str, num_threads: int, short_side: int | None, reuse: bool) -> _Opened:
    """A checked reader of ``p``. With ``reuse`` (reads by time range) the thread's last reader is
    kept, so the many windows of one long video open and index it once per process, not once per
    window; it is reopened when the file changes (size, mtime, inode) and one reader is held at most."""
    if not reuse:
        return _open_checked(p, num_threads, short_side)
    st = os.stat(p)
    key = (p, st.st_ino, st.st_size, st.st_mtime_ns, num_threads, short_side)
    last = getattr(_LAST, "value", None)
    if last is not None and last[0] == key:
        return last[1]
    _LAST.value = None  # let the previous reader go before opening the next
    opened = _open_checked(p, num_threads, short_side)
    _LAST.value = (key, opened)
    return opened


# ---------------------------------------------------------------- public readers


def read_frames(path: str | os.PathLike | Clip, num_frames: int, method: str = "uniform",
                short_side: int | None = None, rng: np.random.Generator | None = None,
                num_threads: int = 1) -> SampledFrames:
    """Decode ``num_frames`` frames of a video, picked by ``sample_indices``, and nothing else.

    Args:
        path: the video file, or a ``clips.Clip``: a time range of one, sampled inside the range
            only (the frames whose start lies in ``[start, end)``; see ``clips.frames_in_range``).
        num_frames: frames to return (padding included, see ``sample_indices``).
        method: ``uniform``, ``fps`` or ``tsn``.
        short_side: if given, decord resizes in the decoder so that the shorter side of the
            upright frame is ``short_side`` (up or down), aspect ratio kept. This costs one extra
            reader open and one native-size decode of frame 0, to learn the frame size. Frames
            still need a centre crop.
        rng: random generator for ``tsn``.
        num_threads: decoder threads for this call's reader (1 suits DataLoader workers).

    Returns:
        ``SampledFrames``; ``frames`` is ``(num_frames, H, W, 3)`` uint8 RGB; indices and
        timestamps are the file's own (a range's first frame is not index 0).

    Raises:
        VideoReadError: any file that cannot be read (message ``"{path}: {reason}"``), and a range
            that starts past the end of the video or holds no frame.
        ValueError: a bad argument (unknown method, ``tsn`` without ``rng``, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    clip = as_clip(path)
    p = _check_file(clip.path)
    got = _opened(p, num_threads, short_side, reuse=clip.is_range)
    if method == "fps" and not math.isfinite(got.fps):
        raise VideoReadError(p, "frame rate unknown, cannot sample one frame per second")
    lo, hi = frames_in_range(got.starts, clip, got.end) if clip.is_range else (0, got.n)
    indices, mask = sample_indices(hi - lo, num_frames, method, fps=got.fps, rng=rng)
    indices = indices + lo
    try:
        frames = _decode(got.reader, p, indices, got.n, num_threads, got.size)  # (N, H, W, 3)
    except VideoReadError:
        _LAST.value = None  # never reuse a reader that failed
        raise
    return SampledFrames(frames=frames, timestamps=got.starts[indices], mask=mask, indices=indices,
                         num_video_frames=got.n, fps=got.fps)


def probe_video(path: str | os.PathLike, num_threads: int = 1,
                samplings: Sequence[tuple[int, str]] = ()) -> dict[str, Any]:
    """Open a video, refuse it if truncated, and decode frame 0 - and, for each ``(num_frames,
    method)`` of ``samplings``, the frames ``read_frames`` picks with it and the first and last
    frame of each of the ``num_frames`` TSN segments (``tsn`` picks at random between them), plus
    the last frame (``video_integrity.probe_indices``; 8 frames in memory at a time). Returns
    ``{"num_frames", "fps", "height", "width", "duration"}`` (upright height/width; duration in
    seconds, last frame's end). Raises ``VideoReadError`` where ``read_frames`` would."""
    for _, method in samplings:
        if method not in METHODS:
            raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    p = _check_file(path)
    reader = _open(p, num_threads)
    n = len(reader)
    starts, fps = _timing(reader, n)
    end = _end_time(reader, n, starts, fps)
    check_complete(p, n, end, fps)
    height, width = _first_frame_shape(reader, p)
    if samplings:
        if any(m == "fps" for _, m in samplings) and not math.isfinite(fps):
            raise VideoReadError(p, "frame rate unknown, cannot sample one frame per second")
        picks = [sample_indices(n, k, m, fps=fps)[0] for k, m in samplings if m != "tsn"]
        wanted = probe_indices(n, picks, [k for k, _ in samplings])
        for chunk in np.array_split(wanted, -(-len(wanted) // 8)):
            _decode(reader, p, chunk, n, num_threads, (-1, -1))
    return {"num_frames": n, "fps": fps, "height": height, "width": width, "duration": end}
