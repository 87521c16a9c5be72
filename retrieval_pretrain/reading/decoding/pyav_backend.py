"""PyAV (FFmpeg's Python bindings) as a backend: the frame index from the packets
(``stream_index.scan``), then decoding forward from the nearest key frame.

Frames come out of an FFmpeg decoder in presentation order; each is placed by its pts in the index
(for an untimed stream, by counting from the start). For the next wanted frame ``j`` the decoder
either keeps decoding forward or seeks to the last key frame at or before ``j``: it seeks when that
key frame lies more than ``SEEK_GAP`` frames past the current position, so a dense read is one
sequential pass and a sparse one jumps from key frame to key frame. Measured (BENCHMARKS.md,
"Decoder backends"): on 12 frames of a 3-minute 720p clip seeking is 4.5-5.5x faster than one
sequential pass keeping only the wanted frames; on the real clips (1-4 key frames each) and on dense
reads the two are the same. A seek that lands past ``j`` (a container whose index points later than
asked) is retried from the key frame before, then from the start. Untimed streams (AVI) cannot be
sought by pts and are decoded from the start in sequence.

Rotation: ``frame.rotation`` is the display matrix's counter-clockwise angle; the frame is turned
upright with ``np.rot90`` (a resize is applied before, to the swapped size). Colour: FFmpeg's
swscale converts to RGB24 with bilinear scaling, the conversion decord's FFmpeg applies, so 8-bit
clips give decord's pixels exactly (``tests/test_backends.py`` measures the rest).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval_pretrain.reading.decoding.base import Decoder, decode_failure
from retrieval_pretrain.reading.decoding.stream_index import StreamIndex, scan

SEEK_GAP = 2  # seek forward only when that skips decoding more than this many frames (a seek flushes the decoder)


def _av() -> Any:
    import av  # deferred: PyAV (FFmpeg) loads when the first video is opened, not with the command line

    return av


def _decoded(container: Any, stream: Any) -> Any:
    """The stream's frames from the container's position on. A function, not a method: a generator
    holding its decoder would make a reference cycle, and a decoder left for the garbage collector
    can outlive a fork into a DataLoader worker."""
    for packet in container.demux(stream):
        yield from packet.decode()  # the final empty packet flushes the decoder


def _turns(frame: Any) -> int:
    """Quarter turns counter-clockwise that make ``frame`` upright (its display matrix)."""
    return (int(round(frame.rotation)) // 90) % 4


def to_rgb(frame: Any, size: tuple[int, int] | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a decoded frame, upright, resized to ``size`` (upright ``(H, W)``)."""
    turns = _turns(frame)
    kwargs = {}
    if size is not None:
        h, w = size if turns % 2 == 0 else size[::-1]
        if (h, w) != (frame.height, frame.width):
            kwargs = {"width": w, "height": h, "interpolation": "BILINEAR"}
    rgb = frame.to_ndarray(format="rgb24", **kwargs)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class PyAVDecoder(Decoder):
    """One PyAV container kept open between calls, decoding forward from where it stopped."""

    name = "pyav"

    def __init__(self, path: str, num_threads: int = 1, index: StreamIndex | None = None):
        self.index = index if index is not None else scan(path, "pyav")
        super().__init__(path, self.index.timing)
        self.num_threads = num_threads
        self._position = None if self.index.untimed else {int(p): i for i, p in enumerate(self.index.pts)}
        self._container: Any = None
        self._frames: Any = None  # decoded frames from the current position on
        self._pos = -1  # index of the last frame out of the decoder since the last start
        self._last: Any = None  # that frame
        self._key, self._first = 0, False  # where decoding last started; no frame out since
        self._native: tuple[int, int] | None = None

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:  # None too when __init__ failed
            self._container.close()
        self._container = self._frames = self._last = None

    def _start(self, key: int) -> None:
        """Decode from the key frame at index ``key`` on (from the file's start when 0 or untimed)."""
        if self._container is None or key == 0 or self._position is None:
            self.close()
            self._container = _av().open(self.path, metadata_errors="ignore")
            stream = self._container.streams[self.index.stream]
            if self.num_threads > 1:
                stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.num_threads
        stream = self._container.streams[self.index.stream]
        if key > 0 and self._position is not None:
            self._container.seek(int(self.index.pts[key]), backward=True, any_frame=False, stream=stream)
        self._frames, self._pos, self._last = _decoded(self._container, stream), key - 1, None
        self._key, self._first = key, True  # the first frame out tells whether the seek landed where asked

    def _key_before(self, j: int) -> int:
        keys = self.index.keyframes
        at = int(np.searchsorted(keys, j, side="right")) - 1
        return int(keys[at]) if at >= 0 and self._position is not None else 0

    def _next(self, j: int) -> Any:
        """The next decoded frame (None at the end of the stream); a decoding error names ``j``."""
        try:
            return next(self._frames, None)
        except _av().FFmpegError as e:
            self.close()  # the decoder's state is unknown now: start afresh next time
            raise decode_failure(self.path, j, self.timing.n, e.strerror or str(e)) from None

    def _frame(self, j: int) -> Any:
        """The decoded frame at index ``j``."""
        key = self._key_before(j)
        if self._frames is None or j < self._pos or (j > self._pos and key > self._pos + SEEK_GAP):
            self._start(key)
        elif j == self._pos and self._last is not None:
            return self._last
        while True:
            frame = self._next(j)
            if frame is None:  # the stream ended before j: the last frame stands in (as decord does)
                if self._last is None:
                    raise decode_failure(self.path, j, self.timing.n, "the decoder returned no frame")
                self._pos = j
                return self._last
            pos = self._pos + 1 if self._position is None or frame.pts is None else self._position.get(int(frame.pts))
            if pos is None:
                raise decode_failure(self.path, j, self.timing.n, f"the decoder returned a frame the index does "
                                                                  f"not list (pts {frame.pts})")
            if pos > j and self._first and self._key > 0:  # the seek landed past j: one key frame earlier
                self._start(self._key_before(self._key - 1))
                continue
            self._first = False
            if pos > j:
                raise decode_failure(self.path, j, self.timing.n, "the decoder skipped this frame")
            self._pos, self._last = pos, frame
            if pos == j:
                return frame

    def native_size(self) -> tuple[int, int]:
        if self._native is None:
            frame = self._frame(0)
            h, w = frame.height, frame.width
            self._native = (h, w) if _turns(frame) % 2 == 0 else (w, h)
        return self._native

    def frames(self, indices: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        rgb = {int(j): to_rgb(self._frame(int(j)), size) for j in np.unique(indices)}
        return np.stack([rgb[int(j)] for j in indices])
