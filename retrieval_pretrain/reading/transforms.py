"""CLIP's image preprocessing for a whole clip of frames at once, in torch.

The same steps as open_clip's evaluation transform (``image_transform(..., is_train=False)`` with
``resize_mode='shortest'``, the OpenAI/LAION CLIP setting): resize the shorter side to
``image_size`` with antialiased bicubic interpolation, centre crop to ``image_size`` square, scale
to [0, 1], normalise with CLIP's mean and std. open_clip runs these on one PIL image at a time;
here the N frames of a video go through as one (N, 3, H, W) tensor.

Output sizes and crop offsets follow torchvision's ``Resize``/``CenterCrop`` integer arithmetic
exactly. After resizing, values are clamped to [0, 255] and rounded, as PIL's uint8 result is.
The remaining difference to PIL is its fixed-point bicubic kernel arithmetic: at most one or two
grey levels on a small share of pixels (tests/test_retrieval_model.py measures it).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Shorter side to ``image_size``, longer side scaled and truncated (torchvision ``Resize(int)``)."""
    if height <= width:
        return image_size, int(image_size * width / height)
    return int(image_size * height / width), image_size


def preprocess_frames(frames_uint8: np.ndarray | torch.Tensor, image_size: int, mean: Sequence[float],
                      std: Sequence[float]) -> torch.Tensor:
    """Frames (N, H, W, 3) uint8 RGB -> CLIP input (N, 3, image_size, image_size) float32.

    Args:
        frames_uint8: decoded RGB frames of one video, all the same size.
        image_size: CLIP's input resolution.
        mean / std: CLIP's per-channel normalisation (on the [0, 1] scale).
    """
    return normalise_frames(resize_crop_frames(frames_uint8, image_size), mean, std)


def resize_crop_frames(frames_uint8: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """The uint8 half of ``preprocess_frames``: (N, H, W, 3) uint8 -> (N, 3, image_size, image_size)
    uint8, shorter side resized and centre cropped. Each frame is processed on its own, so
    selecting frames before or after this step gives the same pixels (the stage-1 frame cache
    relies on it)."""
    if isinstance(frames_uint8, np.ndarray) and not frames_uint8.flags.writeable:
        frames_uint8 = frames_uint8.copy()  # torch warns on read-only arrays (decoders return some)
    x = torch.as_tensor(frames_uint8)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {x.dtype}")
    n, h, w, _ = x.shape
    x = x.permute(0, 3, 1, 2)  # (N, 3, H, W), channels-last in memory
    rh, rw = resized_size(h, w, image_size)
    if (rh, rw) != (h, w):
        # torch's uint8 antialiased bicubic is Pillow-SIMD's algorithm (a=-0.5 kernel, separable
        # passes, uint8 result), several times faster than the float path on a CPU.
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
    top = int(round((rh - image_size) / 2.0))  # torchvision CenterCrop offsets
    left = int(round((rw - image_size) / 2.0))
    return x[:, :, top: top + image_size, left: left + image_size]  # (N, 3, S, S) uint8


@functools.lru_cache(maxsize=8)
def _scaled(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` times 255 as (1, 3, 1, 1) float32, made once per pair: stage 1 normalises
    every training item's frames, and building these each time was a third of that cost (cProfile)."""
    with torch.inference_mode(False):  # made under inference mode, they could not be used with autograd later
        return (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)


def normalise_frames(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> float32 CLIP input: scale to [0, 1] and normalise with ``mean`` / ``std``."""
    mean_t, std_t = _scaled(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return ((x_uint8.float() - mean_t) / std_t).contiguous()  # not in place: a float input is not copied by .float()
