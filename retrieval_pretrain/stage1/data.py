"""Torch datasets that decode videos in DataLoader workers (CLIP4Clip's data pipeline).

Two datasets:

* ``VideoClipDataset`` - one item per video file: sampled, preprocessed frames and their mask.
  Used by retrieval evaluation, feature extraction and the caption pipeline.
* ``ContrastiveTrainSet`` - one item per training video, with one caption drawn at random per
  epoch (CLIP4Clip trains on (video, caption) pairs; drawing per video per epoch keeps every
  video equally weighted whatever its caption count). With a ``FrameCache`` (``video.cache_frames``)
  its frames come from memory instead of the decoder; with a ``FeatureCache`` (prompt tuning) its
  "frames" are the frozen image tower's features of those frames, (T, D) (both in ``kept_frames``).

A video that cannot be decoded never kills a run: its item carries ``ok=False`` and the reason,
``collate_videos`` drops it from the batch and lists it under ``"failures"``, and the caller
counts and reports it. Randomness (TSN offsets, caption choice) is a pure function of
``(seed, epoch, index)``, so worker count and resuming do not change what a step sees.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading.clips import Clip, as_clip
from retrieval_pretrain.reading.label_lists import TEMPLATES
from retrieval_pretrain.stage1.kept_frames import FeatureCache, FrameCache
from retrieval_pretrain.stage1.preprocess import Preprocess, load_item


class VideoClipDataset(Dataset):
    """One item per video: ``{"video_id", "path", "frames" (T,3,S,S), "mask" (T,), "ok", "error"}``."""

    def __init__(self, videos: Sequence[tuple[str, str | Path | Clip]], pre: Preprocess, method: str = "uniform",
                 frames: FrameCache | None = None):
        self.videos = [(vid, as_clip(p)) for vid, p in videos]
        self.pre = pre
        self.method = method
        self.frames = frames  # stage 1's decoded training videos, used where they are exactly the decoder's

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid, path = self.videos[index]
        cached = self.frames.decoded(path, self.pre, self.method) if self.frames is not None else None
        item = load_item(self.pre, path, self.method, rng=np.random.default_rng(index), cached=cached)
        item.update(video_id=vid, path=str(path))  # a range: "a.mp4 [12-20 s]"
        return item


TOKEN_CACHE_CAPTIONS = 16_384  # captions whose tokens a training set keeps (~30 MB at CLIP's 77 tokens, measured)


class ContrastiveTrainSet(Dataset):
    """Training pairs for stage 1. The sampler passes ``epoch * len(self) + i``; the item is video
    ``i`` with TSN-sampled frames and one of its captions, both drawn from ``(seed, epoch, i)``; a
    labelled video (``entry.label``) gets its label in a prompt template drawn the same way.

    Args:
        entries: objects with ``video_id``, ``path`` and ``captions``.
        pre: frame preprocessing.
        tokenize: list of strings -> LongTensor (N, L).
        method: frame sampling while training (``tsn`` or ``uniform``).
        seed: run seed.
        cache: the entries' frames (``FrameCache``) or image-tower features (``FeatureCache``: items
            then carry (T, D) features as ``frames``) in memory, same order as ``entries``; None to decode.
    """

    def __init__(self, entries: Sequence[Any], pre: Preprocess, tokenize: Callable[[list[str]], torch.Tensor],
                 method: str = "tsn", seed: int = 0, cache: FrameCache | FeatureCache | None = None):
        self.entries = list(entries)
        self.pre = pre
        self.tokenize = tokenize
        self.method = method
        self.seed = seed
        if cache is not None:
            if len(cache) != len(self.entries):
                raise ValueError(f"the frame cache holds {len(cache)} videos, the training set {len(self.entries)}")
            if method not in ("tsn", "uniform"):
                fix = ("prompt tuning always trains from cached features" if isinstance(cache, FeatureCache)
                       else "set video.cache_frames=0")
                raise ConfigError(f"frames cached in memory work with video.train_sampling tsn or uniform, not "
                                  f"{method!r} (fps sampling needs the file's own frame rate); {fix}")
        self.cache = cache
        # each caption's tokens, made once: an epoch draws one caption per video, so a caption comes
        # back every few epochs, and the BPE tokenizer (ftfy, regex) was a quarter of an item's cost.
        # Without loader workers (the demo) that is the time the step waits; loader workers, started
        # again each epoch, each begin with what the main process holds (nothing), and tokenise
        # beside the step anyway.
        self._tokens: dict[str, torch.Tensor] = {}
        # what each item names, made once (a Clip parses its path)
        self._clips = [e.clip if hasattr(e, "clip") else Path(e.path) for e in self.entries]
        self._paths = [str(c) for c in self._clips]

    def __len__(self) -> int:
        return len(self.entries)

    def _tokens_of(self, caption: str) -> torch.Tensor:
        tokens = self._tokens.get(caption)
        if tokens is None:
            tokens = self.tokenize([caption])[0]
            if len(self._tokens) < TOKEN_CACHE_CAPTIONS:
                self._tokens[caption] = tokens
        return tokens.clone()  # an item's own: a caller writing into it must not change the next item

    def _pick(self, key: int) -> tuple[int, str, np.random.Generator]:
        """``(video index, caption, its random generator after the caption's draws)`` of ``key``."""
        epoch, index = divmod(int(key), len(self.entries))
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        caption = entry.captions[int(rng.integers(len(entry.captions)))]
        if getattr(entry, "label", None) is not None:  # a labelled video: the label in a random prompt (ActionCLIP)
            caption = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(entry.label)
        return index, caption, rng

    def __getitem__(self, key: int) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int]) -> list[dict[str, Any]]:
        """The items of ``keys`` (a DataLoader fetches a batch this way when the dataset has it). With a
        cache, the batch's rows are gathered and normalised in one go (``sample_many``: each item the
        same, bit for bit, as alone): the demo's loader 1.45x faster with ``vcap demo``'s allocator setting
        (BENCHMARKS.md)."""
        picks = [self._pick(k) for k in keys]
        drawn = (self.cache.sample_many([(i, rng) for i, _, rng in picks], self.pre, self.method)
                 if self.cache is not None else [None] * len(picks))
        items = []
        for (index, caption, rng), got in zip(picks, drawn):
            cached = functools.partial(_drawn, got) if got is not None else None
            item = load_item(self.pre, self._clips[index], self.method, rng, cached, getattr(self.cache, "frame_shape", None))
            item.update(video_id=self.entries[index].video_id, path=self._paths[index], caption=caption,
                        tokens=self._tokens_of(caption))
            items.append(item)
        return items


def _drawn(got: dict[str, Any] | Exception, method: str, rng: np.random.Generator | None) -> dict[str, Any]:
    """``load_item``'s ``cached`` for an item ``sample_many`` drew: the item, or its failure raised."""
    if isinstance(got, Exception):
        raise got
    return got


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
