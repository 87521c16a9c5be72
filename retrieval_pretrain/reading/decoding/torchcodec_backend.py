"""torchcodec (PyTorch's own decoder, on FFmpeg's shared libraries) as a backend.

The frame index comes from ``stream_index.scan`` (PyAV, packets only) and is handed to torchcodec
as its ``custom_frame_mappings`` (pts, duration, key frame of every frame), so torchcodec skips its
own scan and frame ``i`` is by construction the frame decord and PyAV call ``i``. torchcodec finds a
frame by its pts; an untimed stream (AVI, see ``stream_index``) has no usable pts - torchcodec's own
index of the real AVI clips returns the wrong frames or fails - so such a file is decoded in sequence
by the PyAV backend instead (same FFmpeg decoders, the same frames). Rotation metadata is applied
by torchcodec itself; a resize is its ``Resize`` transform (bilinear, in FFmpeg's filter graph),
given the upright size. It decodes on the CPU here (``device`` for CUDA decoding is not exposed:
untested without a GPU).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.decoding.base import Decoder, decode_failure
from retrieval_pretrain.reading.decoding.pyav_backend import PyAVDecoder
from retrieval_pretrain.reading.decoding.stream_index import StreamIndex, scan

_END = "no more frames left to decode"  # torchcodec's words when the stream ends before a listed frame


def load() -> Any:
    """``torchcodec.decoders`` and ``torchcodec.transforms``; raises ImportError (no package) or
    RuntimeError/OSError (its FFmpeg libraries missing)."""
    import torchcodec.decoders  # deferred: optional, loads torch and FFmpeg's shared libraries
    import torchcodec.transforms  # deferred: optional, as above

    return torchcodec


def _mappings(index: StreamIndex) -> str:
    """The index as torchcodec's ``custom_frame_mappings`` JSON (ffprobe's frame fields)."""
    keys = np.zeros(len(index.pts), dtype=bool)
    keys[index.keyframes] = True
    return json.dumps({"frames": [{"pts": int(p), "duration": int(d), "key_frame": int(k)}
                                  for p, d, k in zip(index.pts, index.durations, keys)]})


def _detail(e: BaseException) -> str:
    """torchcodec's message without its ``function, file.cpp:line,`` prefix."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"^\w+, \S+:\d+, ", "", text)


class TorchCodecDecoder(Decoder):
    """A torchcodec ``VideoDecoder`` per output size (native first), or PyAV for an untimed stream."""

    name = "torchcodec"

    def __init__(self, path: str, num_threads: int = 1):
        self.index = scan(path, "torchcodec")
        super().__init__(path, self.index.timing)
        self.num_threads = num_threads
        self._pyav = PyAVDecoder(path, num_threads, self.index) if self.index.untimed else None
        self._decoders: dict[tuple[int, int] | None, Any] = {}
        self._native: tuple[int, int] | None = None

    def _decoder(self, size: tuple[int, int] | None) -> Any:
        if size is not None and size == self._native:
            size = None
        if size not in self._decoders:
            tc = load()
            self._decoders = {k: v for k, v in self._decoders.items() if k is None}  # one resized at most
            try:
                self._decoders[size] = tc.decoders.VideoDecoder(
                    self.path, stream_index=self.index.stream, dimension_order="NHWC",
                    num_ffmpeg_threads=self.num_threads, custom_frame_mappings=_mappings(self.index),
                    transforms=[tc.transforms.Resize(size)] if size else None)
            except Exception as e:  # RuntimeError / ValueError from its FFmpeg
                raise VideoReadError(self.path, f"torchcodec cannot open it: {_detail(e)}") from None
        return self._decoders[size]

    def native_size(self) -> tuple[int, int]:
        if self._pyav is not None:
            return self._pyav.native_size()
        if self._native is None:
            self._native = tuple(self.frames(np.zeros(1, dtype=np.int64)).shape[1:3])
        return self._native

    def _get(self, decoder: Any, j: int) -> tuple[np.ndarray | None, str]:
        """Frame ``j`` alone, or None and why it failed."""
        try:
            return decoder.get_frame_at(j).data.numpy(), ""
        except Exception as e:  # RuntimeError from its FFmpeg
            return None, _detail(e)

    def _one(self, decoder: Any, j: int) -> np.ndarray:
        """Frame ``j``; when the stream ends before it and it is one of the trailing frames that never
        come out, the last frame that decodes stands in (as decord and the PyAV backend do)."""
        frame, why = self._get(decoder, j)
        if frame is not None:
            return frame
        if _END not in why:
            raise decode_failure(self.path, j, self.timing.n, why)
        if j < self.timing.n - 1 and self._get(decoder, self.timing.n - 1)[0] is not None:
            raise decode_failure(self.path, j, self.timing.n, "the decoder skipped this frame")
        for k in range(j - 1, -1, -1):
            frame, why_k = self._get(decoder, k)
            if frame is not None:
                return frame
            if _END not in why_k:
                raise decode_failure(self.path, k, self.timing.n, why_k)
        raise decode_failure(self.path, j, self.timing.n, why)

    def frames(self, indices: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        if self._pyav is not None:
            return self._pyav.frames(indices, size)
        indices = np.asarray(indices, dtype=np.int64)
        decoder = self._decoder(size)
        try:
            return decoder.get_frames_at(indices.tolist()).data.numpy()
        except Exception:  # error path: one frame at a time, to name the one that fails
            got = {j: self._one(decoder, j) for j in np.unique(indices).tolist()}
        return np.stack([got[int(j)] for j in indices])
