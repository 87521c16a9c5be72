"""The frame index of a video stream read by PyAV from its packets (no frame decoded): what the
PyAV and torchcodec backends open a file with, so both count and time frames as decord does.

decord reads every packet of the stream ffmpeg's ``av_find_best_stream`` picks when it opens a file,
counts them, sorts them by pts and times frame ``i`` by the ``i``-th smallest pts minus the stream's
start time. ``scan`` does the same with PyAV's demuxer (``container.streams.best("video")`` is that
ffmpeg call), keeping each packet's pts, duration and key-frame flag. A stream is *untimed* when
its pts cannot order the frames: a packet without pts, two packets with one pts, or an AVI file,
whose demuxer numbers packets in decode order (decord's build reports no pts there at all; on the
two real AVI clips, sorting those numbers does not give the order frames come out of the decoder).
An untimed stream is decoded in sequence and timed ``index / fps`` (``base.timing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.decoding.base import CodecNotSupported, Timing, timing


@dataclass
class StreamIndex:
    """The packets of one video stream, sorted by pts (decode order when ``untimed``)."""

    stream: int  # the stream's index in the container
    codec: str  # ffmpeg's name of the codec (``av1``, ``h264``)
    time_base: Fraction
    pts: np.ndarray  # (n,) int64 pts in presentation order (unusable when untimed)
    durations: np.ndarray  # (n,) int64 packet durations, same order
    keyframes: np.ndarray  # sorted frame indices of the key frames
    untimed: bool
    timing: Timing


def _open_error(path: str, e: Exception) -> VideoReadError:
    strerror = getattr(e, "strerror", None) or str(e)
    return VideoReadError(path, f"not a video file, or a truncated/corrupt one: ffmpeg cannot read the container "
                                f"({strerror})")


def _av() -> Any:
    import av  # deferred: PyAV (FFmpeg) loads when the first video is opened, not with the command line

    return av


def _packets(path: str, container: Any, stream: Any) -> np.ndarray:
    """``(n, 3)`` int64 rows ``pts, duration, key`` of the stream's packets in file order (pts
    ``INT64_MIN`` where there is none)."""
    av, rows = _av(), []
    try:
        for packet in container.demux(stream):
            if packet.size:  # the demuxer's final empty packet is no frame
                pts = packet.pts if packet.pts is not None else np.iinfo(np.int64).min
                rows.append((pts, packet.duration or 0, 1 if packet.is_keyframe else 0))
    except av.FFmpegError as e:
        raise VideoReadError(path, f"reading packets failed, the file is probably truncated or corrupt: "
                                   f"{e.strerror}") from None
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def check_decodable(path: str, stream: Any, backend: str) -> str:
    """The codec's name (``av1``, ``h264``); ``CodecNotSupported`` when PyAV's FFmpeg has no decoder
    for it (PyAV then gives the stream no codec context)."""
    context = stream.codec_context
    if context is None:
        raise CodecNotSupported(path, f"{backend} cannot decode this video stream's codec")
    return str(context.codec.canonical_name)


def scan(path: str, backend: str = "pyav") -> StreamIndex:
    """Index the best video stream of ``path`` from its packets. ``VideoReadError`` when the file is
    no video, holds no video stream, or its packets cannot be read; ``CodecNotSupported`` when
    PyAV's FFmpeg cannot decode the stream (``backend`` names who asked)."""
    av = _av()
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise _open_error(path, e) from None
    with container:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream (audio only)" if container.streams.audio else "no video stream")
        stream = container.streams.best("video")
        codec = check_decodable(path, stream, backend)
        rows = _packets(path, container, stream)
        tb = stream.time_base or Fraction(1, 1)
        start = stream.start_time if stream.start_time is not None else 0
        rate = float(stream.average_rate) if stream.average_rate else math.nan
        avi = "avi" in container.format.name.split(",")
        index = stream.index
    pts, durations, keys = rows[:, 0], rows[:, 1], rows[:, 2].astype(bool)
    untimed = avi or bool((pts == np.iinfo(np.int64).min).any()) or len(np.unique(pts)) < len(pts)
    order = np.arange(len(pts)) if untimed else np.argsort(pts, kind="stable")
    pts, durations, keys = pts[order], durations[order], keys[order]
    starts = np.full(len(pts), np.nan) if untimed else (pts - start).astype(np.float64) * float(tb)
    timed_end = len(pts) and not untimed and durations[-1]
    last_stop = float((pts[-1] + durations[-1] - start) * tb) if timed_end else math.nan
    return StreamIndex(stream=index, codec=codec, time_base=tb, pts=pts, durations=durations,
                       keyframes=np.flatnonzero(keys), untimed=untimed, timing=timing(starts, last_stop, rate))
