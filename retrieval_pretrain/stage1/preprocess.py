"""How a video file becomes model input: ``Preprocess`` (frames sampled, resized and centre cropped
to the model's size, normalised with its mean/std), and ``load_item``, which never lets a bad file
kill a run - it returns a placeholder item with ``ok=False`` and the reason, naming the file (or the
time range of it), for the caller to report. The datasets of ``stage1.data`` are built on both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from retrieval_pretrain.modeling.spec import ModelSpec
from retrieval_pretrain.reading.clips import Clip, as_clip
from retrieval_pretrain.reading.transforms import preprocess_frames
from retrieval_pretrain.reading.video import read_frames


@dataclass
class Preprocess:
    """How frames become model input: ``num_frames`` sampled by ``method`` and resized/cropped
    to ``image_size`` with CLIP's mean/std."""

    num_frames: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]

    @classmethod
    def for_model(cls, spec: ModelSpec) -> "Preprocess":
        """The input a trained stage-1 model takes (``spec`` as ``from_pretrained`` returns it, or
        ``model.spec``): its frame count, image size and normalisation. Sample with
        ``spec.eval_sampling``."""
        return cls(spec.num_frames, spec.image_size, spec.image_mean, spec.image_std)

    def __call__(self, path: str | Path | Clip, method: str, rng: np.random.Generator | None = None) -> dict[str, Any]:
        sampled = read_frames(path, self.num_frames, method=method, short_side=self.image_size, rng=rng)
        frames = preprocess_frames(sampled.frames, self.image_size, self.mean, self.std)  # (T, 3, S, S)
        return {"frames": frames, "mask": torch.from_numpy(np.asarray(sampled.mask, dtype=bool))}


def load_item(pre: Preprocess, path: Path | Clip, method: str, rng: np.random.Generator | None,
              cached: Callable[[str, np.random.Generator | None], dict[str, Any]] | None = None,
              frame_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Decode one video (or take its frames from ``cached``); on any failure return a placeholder
    with ``ok=False`` and the reason (frames of ``frame_shape`` each, default (3, S, S))."""
    try:
        item = cached(method, rng) if cached is not None else pre(path, method, rng)
        item["ok"] = True
        item["error"] = ""
    except Exception as e:  # a bad file must never kill a run: name it and move on
        reason = failure_reason(path, e)
        s = pre.image_size
        item = {
            "frames": torch.zeros(pre.num_frames, *(frame_shape or (3, s, s))),
            "mask": torch.zeros(pre.num_frames, dtype=torch.bool),
            "ok": False,
            "error": reason,
        }
    return item


def failure_reason(path: str | Path | Clip, e: BaseException) -> str:
    """The error's message, prefixed with the file unless it already names it; a time range's
    file is named with its range (``a.mp4 [12-20 s]``)."""
    clip = as_clip(path)
    text = str(e)
    if str(clip.path) not in text:
        return f"{clip}: {type(e).__name__}: {e}"
    return text.replace(str(clip.path), str(clip), 1) if clip.is_range and str(clip) not in text else text
