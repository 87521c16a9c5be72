"""Whole-file checks for ``retrieval_pretrain.reading.video``: refuse a video cut short, and pick the frames
a deep probe decodes.

Truncation. When a backend opens a file it reads every packet to index the frames (decord 0.6 does;
the PyAV and torchcodec backends do it through ``decoding.stream_index``) and stops quietly at end
of file. A file cut short whose header survives - an mp4 with its ``moov`` box first
(``-movflags +faststart``), a Matroska/WebM file, an AVI - therefore opens as a shorter clip
whenever ffmpeg meets a clean end of file there (nearly always for Matroska and AVI; for mp4 when
the cut falls between two packets, or past its read buffer inside a large one): a ten-second clip
downloaded to 10% reads as its first second and would be trained on and captioned without a word.
(Other cuts make the open fail; ``decoding.decord_backend.diagnose_open`` and
``decoding.stream_index.scan`` name them.) ``check_complete`` compares the frames the backend found
with what the header lists, read by PyAV from the header alone (a 32-byte probe,
no frame decoded):

* mp4/mov: the demuxer's sample table (``index_entries``, edit lists applied) - exactly the packets
  every backend reads from a whole file, so a trimming edit list is no false alarm.
* other containers that state a frame count (AVI's stream header): that count.
* Matroska/WebM (no frame count): the video track's ``DURATION`` tag against the end of the backend's
  last frame; without the tag, the segment duration, which covers the audio too (often a little
  longer), so a looser tolerance applies.

A file is truncated when the backend found fewer frames than listed by more than ``max(2, 2%)`` frames (or
ends earlier than the track duration by more than ``max(2 frames, 2%)``; than the segment duration
by more than ``max(1 s, 10%)``). On every readable real clip in ``../shared/data/videos`` the counts
match exactly and the Matroska clip's track duration equals the end of its last frame (its segment
duration, audio included, is 0.5% longer). Containers that state neither (MPEG-TS, FLV, fragmented
mp4) are not checked. The cost is one header-only PyAV open per call: 0.7-2.3 ms measured on those
clips (the most for the six-stream nasa_13013.mp4), against 12-770 ms for ``read_frames`` of 12
frames at 224 pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError

MAX_MISSING_FRACTION = 0.02  # of the listed frames / track duration, at least 2 frames
MAX_MISSING_FRACTION_LOOSE = 0.10  # of a segment duration that includes other streams, at least 1 s
# Header only: read as few packets as the format allows and decode none of them.
_HEADER_ONLY = {"container_options": {"probesize": "32", "analyzeduration": "0", "fpsprobesize": "0"},
                "options": {"skip_frame": "all", "threads": "1"}}


@dataclass
class Listed:
    """What a file's header says its video stream holds (``None``: not stated)."""

    frames: int | None = None  # frame count (mp4/mov: sample table entries)
    seconds: float | None = None  # length of the video from its first frame, seconds (Matroska/WebM)
    loose: bool = False  # ``seconds`` is the segment's duration, audio included
    data_end: int | None = None  # byte just past the last video sample the index lists (mp4/mov)


def _hms(text: str | None) -> float | None:
    """``"00:00:10.333000000"`` (a Matroska DURATION tag) in seconds; None if absent or malformed."""
    try:
        h, m, s = str(text).split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (TypeError, ValueError):
        return None


def listed_in_header(path: str) -> Listed | None:
    """What the header of ``path`` lists for the video stream decord reads (the one ffmpeg's
    ``av_find_best_stream`` picks); None when PyAV cannot open it or there is nothing to compare."""
    try:
        import av  # deferred: PyAV (FFmpeg) loads when a header is read

        with av.open(path, metadata_errors="ignore", **_HEADER_ONLY) as container:
            if not container.streams.video:
                return None
            stream = container.streams.best("video")
            formats = container.format.name.split(",")
            if "mp4" in formats or "mov" in formats:
                entries = stream.index_entries
                last = entries[len(entries) - 1] if len(entries) else None
                return Listed(frames=len(entries), data_end=last.pos + last.size if last else None)
            if stream.frames > 0:
                return Listed(frames=int(stream.frames))
            if "matroska" in formats or "webm" in formats:
                # decord's timestamps count from the video stream's start: so do these
                start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
                track = _hms(stream.metadata.get("DURATION"))
                if track:
                    return Listed(seconds=track - start)
                if container.duration:
                    end = ((container.start_time or 0) + container.duration) / 1e6
                    return Listed(seconds=end - start, loose=True)
    except Exception:  # PyAV missing or unable to read what decord read: no second opinion
        return None
    return None


def truncation(listed: Listed, num_frames: int, end: float, fps: float, size: int) -> str | None:
    """Why the decodable stream (``num_frames`` frames, the last ending ``end`` seconds after the
    stream's first frame) is a truncated copy of what ``listed`` states; None when it is not.
    ``size``: the file's size in bytes."""
    n = num_frames
    if listed.frames:
        if listed.frames - n <= max(2, MAX_MISSING_FRACTION * listed.frames):
            return None
        at = f" ({end:.2f} s)" if math.isfinite(end) else ""
        cut = (f"; the file has {size} bytes, its index lists frame data up to byte {listed.data_end}"
               if listed.data_end and listed.data_end > size else "")
        return f"truncated: the stream ends after {n}{at} of the {listed.frames} frames the header lists{cut}"
    if listed.seconds and math.isfinite(end):
        frame = 1.0 / fps if math.isfinite(fps) and fps > 0 else 0.0
        allowed = (max(1.0, MAX_MISSING_FRACTION_LOOSE * listed.seconds) if listed.loose
                   else max(2 * frame, MAX_MISSING_FRACTION * listed.seconds))
        if listed.seconds - end > allowed:
            what = "the file's duration" if listed.loose else "the video track's duration"
            return (f"truncated: the stream ends at {end:.2f} s (after {n} frames) of the "
                    f"{listed.seconds:.2f} s the header states as {what}")
    return None


def check_complete(path: str, num_frames: int, end: float, fps: float) -> None:
    """Raise ``VideoReadError(path, "truncated: ...")`` when the file's header lists clearly more
    video than the backend found (see the module docstring). ``end``: the last frame's end in seconds
    after the first frame's start, as every backend counts (nan if unknown); ``fps``: the average frame
    rate (nan if unknown)."""
    listed = listed_in_header(path)
    if listed is not None:
        reason = truncation(listed, num_frames, end, fps, os.path.getsize(path))
        if reason:
            raise VideoReadError(path, reason)


def probe_indices(num_video_frames: int, picks: list[np.ndarray], segments: list[int]) -> np.ndarray:
    """The frames a deep probe decodes, sorted and unique: every array of ``picks`` (what
    ``read_frames`` samples), the first and last frame of each TSN segment for each count in
    ``segments`` (training's random picks lie between them), and the video's first and last frame."""
    n = int(num_video_frames)
    parts = [np.array([0, n - 1], dtype=np.int64)] + [np.asarray(p, dtype=np.int64) for p in picks]
    for k in segments:
        bounds = (np.arange(k + 1, dtype=np.int64) * n + k - 1) // k  # as in video.sample_indices
        parts += [bounds[:-1], bounds[1:] - 1] if n > k else [np.arange(n, dtype=np.int64)]
    return np.unique(np.concatenate(parts))
