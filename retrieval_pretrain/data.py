"""Torch datasets that decode videos in DataLoader workers (CLIP4Clip's data pipeline).

Two datasets:

* ``VideoClipDataset`` - one item per video file: sampled, preprocessed frames and their mask.
  Used by retrieval evaluation, feature extraction and the caption pipeline.
* ``ContrastiveTrainSet`` - one item per training video, with one caption drawn at random per
  epoch (CLIP4Clip trains on (video, caption) pairs; drawing per video per epoch keeps every
  video equally weighted whatever its caption count).

A video that cannot be decoded never kills a run: its item carries ``ok=False`` and the reason,
``collate_videos`` drops it from the batch and lists it under ``"failures"``, and the caller
counts and reports it. Randomness (TSN offsets, caption choice) is a pure function of
``(seed, epoch, index)``, so worker count and resuming do not change what a step sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from retrieval_pretrain.transforms import preprocess_frames
from retrieval_pretrain.video import read_frames


@dataclass
class Preprocess:
    """How frames become model input: ``num_frames`` sampled by ``method`` and resized/cropped
    to ``image_size`` with CLIP's mean/std."""

    num_frames: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, path: str | Path, method: str, rng: np.random.Generator | None = None) -> dict[str, Any]:
        sampled = read_frames(path, self.num_frames, method=method, short_side=self.image_size, rng=rng)
        frames = preprocess_frames(sampled.frames, self.image_size, self.mean, self.std)  # (T, 3, S, S)
        return {"frames": frames, "mask": torch.from_numpy(np.asarray(sampled.mask, dtype=bool))}


def _load(pre: Preprocess, path: Path, method: str, rng: np.random.Generator | None) -> dict[str, Any]:
    """Decode one video; on any failure return a placeholder with ``ok=False`` and the reason."""
    try:
        item = pre(path, method, rng)
        item["ok"] = True
        item["error"] = ""
    except Exception as e:  # a bad file must never kill a run: name it and move on
        reason = str(e) if str(Path(path)) in str(e) else f"{path}: {type(e).__name__}: {e}"
        s = pre.image_size
        item = {
            "frames": torch.zeros(pre.num_frames, 3, s, s),
            "mask": torch.zeros(pre.num_frames, dtype=torch.bool),
            "ok": False,
            "error": reason,
        }
    return item


class VideoClipDataset(Dataset):
    """One item per video: ``{"video_id", "path", "frames" (T,3,S,S), "mask" (T,), "ok", "error"}``."""

    def __init__(self, videos: Sequence[tuple[str, str | Path]], pre: Preprocess, method: str = "uniform"):
        self.videos = [(vid, Path(p)) for vid, p in videos]
        self.pre = pre
        self.method = method

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid, path = self.videos[index]
        item = _load(self.pre, path, self.method, rng=np.random.default_rng(index))
        item.update(video_id=vid, path=str(path))
        return item


class ContrastiveTrainSet(Dataset):
    """Training pairs for stage 1. The sampler passes ``epoch * len(self) + i``; the item is video
    ``i`` with TSN-sampled frames and one of its captions, both drawn from ``(seed, epoch, i)``.

    Args:
        entries: objects with ``video_id``, ``path`` and ``captions``.
        pre: frame preprocessing.
        tokenize: list of strings -> LongTensor (N, L).
        method: frame sampling while training (``tsn``).
        seed: run seed.
    """

    def __init__(self, entries: Sequence[Any], pre: Preprocess, tokenize: Callable[[list[str]], torch.Tensor],
                 method: str = "tsn", seed: int = 0):
        self.entries = list(entries)
        self.pre = pre
        self.tokenize = tokenize
        self.method = method
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), len(self.entries))
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        caption = entry.captions[int(rng.integers(len(entry.captions)))]
        item = _load(self.pre, Path(entry.path), self.method, rng)
        item.update(video_id=entry.video_id, path=str(entry.path), caption=caption,
                    tokens=self.tokenize([caption])[0])
        return item


class EpochShuffleSampler(Sampler[int]):
    """A seeded permutation per epoch, yielding ``epoch * n + i`` so the dataset knows the epoch
    inside worker processes. The trainer calls ``use_epoch`` before each epoch. (Deliberately not
    named ``set_epoch``: Accelerate's prepared loader calls ``sampler.set_epoch(n)`` with its own
    count of passes, which restarts at 0 after a resume and would replay epoch 0's order.)"""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        base = self.epoch * self.n
        return iter(base + i for i in order)


def collate_videos(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decodable items; list the others under ``failures`` as ``(path, reason)``.

    Returns ``frames`` (B, T, 3, S, S), ``mask`` (B, T), ``video_ids``, ``paths``, and when the
    items carry text, ``tokens`` (B, L) and ``captions``. B may be 0 when every video failed.
    """
    good = [it for it in items if it["ok"]]
    batch: dict[str, Any] = {
        "failures": [(it["path"], it["error"]) for it in items if not it["ok"]],
        "video_ids": [it["video_id"] for it in good],
        "paths": [it["path"] for it in good],
    }
    if good:
        batch["frames"] = torch.stack([it["frames"] for it in good])  # (B, T, 3, S, S)
        batch["mask"] = torch.stack([it["mask"] for it in good])  # (B, T)
    else:
        ref = items[0]
        batch["frames"] = ref["frames"].new_zeros((0, *ref["frames"].shape))
        batch["mask"] = ref["mask"].new_zeros((0, *ref["mask"].shape))
    if "tokens" in items[0]:
        batch["captions"] = [it["caption"] for it in good]
        batch["tokens"] = (torch.stack([it["tokens"] for it in good]) if good
                           else items[0]["tokens"].new_zeros((0, *items[0]["tokens"].shape)))
    return batch


def steps_per_epoch(num_items: int, batch_size: int, grad_accum: int, num_processes: int = 1) -> int:
    """Optimizer steps in one epoch (the last partial batch is kept)."""
    batches = math.ceil(num_items / (batch_size * num_processes))
    return max(1, math.ceil(batches / grad_accum))
