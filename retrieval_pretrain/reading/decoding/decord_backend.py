"""decord 0.6 as a backend: its ``VideoReader`` indexes the file at open and ``get_batch`` seeks to
the frames asked for. Facts it relies on (each checked by ``tests/test_video.py`` on real files):

* Frame ``i`` is the ``i``-th frame in presentation order (decord sorts packets by pts), so files
  whose frames are stored out of timestamp order read correctly; ``get_batch`` returns the same
  pixels as decoding every frame in sequence.
* Rotation metadata (the display matrix of phone videos) is applied by decord itself: frames come
  out upright, and the ``width``/``height`` it resizes to are those of the upright frame.
* Of several video streams decord reads the one ffmpeg's ``av_find_best_stream`` picks; it cannot
  be chosen.
* ``get_frame_timestamp`` gives per-frame start/stop seconds from packet pts (to float32 precision).
  Where a container has no pts (AVI), decord reports a huge negative constant; ``base.timing``
  replaces such timestamps by ``index / fps``.
* If the last packets of a stream yield no frame (the container lists more frames than decode),
  decord substitutes the last decoded frame for them. Any other decoding error raises.
* Its frame index comes from reading every packet at open, up to wherever the file ends (so a file
  cut short opens as a shorter clip: ``video_integrity.check_complete`` catches that).

* After a read, decord's reader goes on decoding the frames that follow in a background thread,
  keeping them all until the next call: left alone for a few seconds, a reader of a 10-minute 480p
  video held 3.2 GB (measured; decord issues #157, #197, #208). ``seek(0)`` after each read stops
  that (52 MB), so every read here ends with one (``_rest``); the next read seeks where it needs.

When decord cannot open a file, PyAV looks at it to say why (``diagnose_open``: no video stream, a
codec decord's FFmpeg 4.1 lacks - AV1 -, not a video, truncated).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from PIL import Image

from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.decoding.base import CodecNotSupported, Decoder, decode_failure, timing

_QUIET = False


def _decord() -> Any:
    """Import decord and silence ffmpeg's own log lines once (errors still reach us as exceptions)."""
    global _QUIET
    import decord  # deferred: decord (FFmpeg) loads on the first read, and may not be installed

    if not _QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _QUIET = True
    return decord


def _ffmpeg_strerror(code: int) -> str:
    """ffmpeg's text for an error code (either sign), via PyAV; the number if PyAV cannot say."""
    try:
        import av.error  # deferred: PyAV (FFmpeg), only on a decord error

        av.error.err_check(-abs(code))
    except Exception as e:  # err_check raises the matching FFmpegError subclass
        text = getattr(e, "strerror", None)
        if text:
            return str(text)
    return f"ffmpeg error {code}"


def decord_detail(err: BaseException) -> str:
    """decord's message without its ``[hh:mm:ss] file.cc:line:`` prefixes, C++ check text and trace."""
    lines = str(err).strip().splitlines()
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", lines[0] if lines else type(err).__name__)
    code = re.search(r"\((-?\d{4,}) vs\. 0\)|failed with (-?\d{4,})", text)
    text = re.sub(r"Check failed: .*? \(-?\d+ vs\. -?\d+\) ?", "", text).strip()
    if code:
        text = f"{text} ({_ffmpeg_strerror(int(code.group(1) or code.group(2)))})"
    return text or type(err).__name__


def diagnose_open(path: str, err: BaseException) -> VideoReadError:
    """Why decord could not open ``path``: ask PyAV what is in the file."""
    detail = decord_detail(err)
    try:
        import av  # deferred: PyAV (FFmpeg), only to diagnose a failed open
    except ImportError:
        return VideoReadError(path, f"decord cannot open it: {detail}")
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                return VideoReadError(path, "no video stream (audio only)" if container.streams.audio
                                      else "no video stream")
            codec = container.streams.best("video").codec_context.codec.canonical_name
    except av.FFmpegError as e:
        return VideoReadError(path, f"not a video file, or a truncated/corrupt one: ffmpeg cannot read the "
                                    f"container ({e.strerror})")
    except Exception as e:  # PyAV itself failed; decord's reason is the best we have
        return VideoReadError(path, f"decord cannot open it: {detail} (PyAV: {type(e).__name__}: {e})")
    if "cannot find video stream" in detail:  # a video stream exists, but decord's ffmpeg has no decoder
        return CodecNotSupported(path, f"decord cannot decode codec {codec}")
    if "frame count" in detail.lower() or "frame-count" in detail:
        return VideoReadError(path, f"the {codec} video stream has no frames ({detail})")
    if "av_read_frame" in detail:
        return VideoReadError(path, f"reading packets failed, the file is probably truncated or corrupt: {detail}")
    return VideoReadError(path, f"decord cannot open this {codec} video: {detail}")


def open_reader(path: str, num_threads: int, width: int = -1, height: int = -1) -> Any:
    """A fresh decord ``VideoReader`` (frames resized in the decoder when width/height are set)."""
    decord = _decord()
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=num_threads)
    except Exception as e:  # DECORDError, RuntimeError("Error reading ..."), AssertionError (0 frames)
        raise diagnose_open(path, e) from None


def to_numpy(batch: Any) -> np.ndarray:
    """decord's output as a numpy array, whatever bridge another module may have set."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def _rest(reader: Any) -> None:
    """Stop ``reader`` decoding ahead in the background (module docstring): ``seek(0)``."""
    reader.seek(0)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 frames resized to ``size`` ``(H, W)``, PIL's bilinear: within a few levels
    of the other backends' resizing, not the same pixels (tests/test_backends.py states the bound)."""
    return np.stack([np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BILINEAR)) for f in frames])


class DecordDecoder(Decoder):
    """A decord ``VideoReader`` per output size (the native one opened first)."""

    name = "decord"

    def __init__(self, path: str, num_threads: int = 1):
        reader = open_reader(path, num_threads)
        n = len(reader)
        starts, last_stop = np.full(n, np.nan), np.nan
        if n:
            try:
                stamps = np.asarray(reader.get_frame_timestamp(list(range(n))), dtype=np.float64)  # (n, 2)
                starts, last_stop = stamps[:, 0], float(stamps[-1, 1])
            except Exception:  # no timestamps at all: base.timing numbers the frames
                pass
        super().__init__(path, timing(starts, last_stop, float(reader.get_avg_fps())))
        self.num_threads = num_threads
        self._readers: dict[tuple[int, int] | None, Any] = {None: reader}
        self._native: tuple[int, int] | None = None
        self._resize_here: set[tuple[int, int]] = set()  # sizes decord's resizing failed at (``frames``)

    def native_size(self) -> tuple[int, int]:
        """decord has no shape query: decode frame 0 (once)."""
        if self._native is None:
            reader = self._readers[None]
            try:
                reader.seek(0)
                frame = to_numpy(reader.next())
                _rest(reader)
            except StopIteration:  # e.g. a text file that ffmpeg's tty demuxer took for a video
                raise VideoReadError(self.path, "decoding failed at frame 0: the decoder returned no frame") from None
            except Exception as e:
                raise VideoReadError(self.path, f"decoding failed at frame 0: {decord_detail(e)}") from None
            self._native = (int(frame.shape[0]), int(frame.shape[1]))
        return self._native

    def _reader(self, size: tuple[int, int] | None) -> Any:
        if size is not None and size == self._native:
            size = None
        if size not in self._readers:
            self._readers = {None: self._readers[None]}  # one resized reader at most
            self._readers[size] = open_reader(self.path, self.num_threads, width=size[1], height=size[0])
        return self._readers[size]

    def frames(self, indices: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """``get_batch``; on failure decode the wanted frames one at a time with a fresh reader to
        name the first that fails."""
        if size in self._resize_here:
            return resize_frames(self.frames(indices, None), size)
        reader = self._reader(size)
        try:
            out = to_numpy(reader.get_batch(np.asarray(indices).tolist()))
            _rest(reader)
            return out
        except Exception as e:
            detail = decord_detail(e)
        if size is not None and size != self._native and "size must exactly match" in detail:
            # decord's own resizing fails at some output sizes of some files (48 px of a 128x128 clip,
            # of a rotated .mov: DECORDArrayCopyFromTo) though the file decodes: resize here instead
            self._readers.pop(size, None)
            self._resize_here.add(size)  # a reader kept for a file's time ranges: not opened again to fail
            return resize_frames(self.frames(indices, None), size)
        bad = None
        try:  # error path only; one decoding thread: with several, a frame decoded ahead in another
            # thread can fail first and be reported at an earlier frame (27 for 31, under load)
            probe = open_reader(self.path, 1, *((size[1], size[0]) if size else (-1, -1)))
            for i in sorted(set(np.asarray(indices).tolist())):
                try:
                    probe.get_batch([i])
                except Exception as e:
                    bad, detail = i, decord_detail(e)
                    break
        except VideoReadError:
            pass
        raise decode_failure(self.path, bad, self.timing.n, detail) from None
