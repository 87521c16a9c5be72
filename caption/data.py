"""Stage-2 datasets over cached per-frame features: (video, caption) pairs for teacher forcing,
and one item per video for decoding. Features are memory-mapped fp16 [n, D]; batches are padded
to the longest video with a frame mask (True = real frame)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from retrieval_pretrain.reading.features import FeatureStore


def fit_frames(feats: np.ndarray, max_frames: int) -> np.ndarray:
    """Keep at most ``max_frames`` rows, thinned uniformly (segment centres) when longer."""
    n = feats.shape[0]
    if n <= max_frames:
        return feats
    idx = ((np.arange(max_frames) + 0.5) * n / max_frames).astype(np.int64)
    return feats[idx]


def pad_features(feats: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [n_i, D] -> features (B, T, D) float32 zero-padded, mask (B, T) bool."""
    t = max(int(f.shape[0]) for f in feats)
    d = int(feats[0].shape[1])
    out = torch.zeros(len(feats), t, d)  # (B, T, D)
    mask = torch.zeros(len(feats), t, dtype=torch.bool)  # (B, T)
    for i, f in enumerate(feats):
        f = torch.as_tensor(np.asarray(f, dtype=np.float32)) if not torch.is_tensor(f) else f.float()
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask


# What CaptionPairs keeps in memory: a video's features are read once, not once per caption and epoch.
CACHE_BYTES = 256 * 2**20


class CaptionPairs(Dataset):
    """Every (video, caption) pair of a split, once per epoch. Keys from ``EpochShuffleSampler``
    (``epoch * n + i``) are reduced to ``i``. Captions are tokenised once, up front.

    A video's (thinned) features are kept in memory after its first caption, up to ``cache_bytes``
    in all (later videos are read memory-mapped each time): a video has several captions, so
    otherwise its file is opened that many times an epoch (the demo's stage 2: 5 a video, 0.24 ms
    each, ~1 s of a 9.5-s epoch). The same values either way. A DataLoader worker fills a copy of
    its own, dropped with the worker."""

    def __init__(self, store: FeatureStore, pairs: Sequence[tuple[str, list[int]]], max_frames: int,
                 cache_bytes: int = CACHE_BYTES):
        self.store, self.pairs, self.max_frames = store, list(pairs), max_frames
        self.cache_left, self._cache = cache_bytes, {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _features(self, vid: str) -> np.ndarray:
        feats = self._cache.get(vid)
        if feats is None:
            feats = fit_frames(self.store.load(vid), self.max_frames)
            if feats.nbytes <= self.cache_left:
                feats = np.array(feats)  # read into memory (the store's arrays are memory-mapped)
                feats.flags.writeable = False  # shared by the video's captions: read-only, as the mapped file was
                self._cache[vid], self.cache_left = feats, self.cache_left - feats.nbytes
        return feats

    def __getitem__(self, key: int) -> dict[str, Any]:
        vid, ids = self.pairs[int(key) % len(self.pairs)]
        return {"video_id": vid, "features": self._features(vid), "ids": ids}


def collate_pairs(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Teacher forcing: ``decoder_input_ids`` = tokens[:-1], ``labels`` = tokens[1:] (pad = ``pad_id``)."""
    feats, mask = pad_features([it["features"] for it in items])
    length = max(len(it["ids"]) for it in items)
    tokens = torch.full((len(items), length), pad_id, dtype=torch.long)  # (B, L)
    for i, it in enumerate(items):
        tokens[i, : len(it["ids"])] = torch.tensor(it["ids"])
    return {"frame_features": feats, "frame_mask": mask,
            "decoder_input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


class VideoFeatures(Dataset):
    """One item per video id (for decoding, and SCST's training videos). Keys beyond the length
    (``EpochShuffleSampler``'s ``epoch * n + i``) are reduced to ``i``."""

    def __init__(self, store: FeatureStore, video_ids: Sequence[str], max_frames: int):
        self.store, self.video_ids, self.max_frames = store, list(video_ids), max_frames

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vid = self.video_ids[int(i) % len(self.video_ids)]
        return {"video_id": vid, "features": fit_frames(self.store.load(vid), self.max_frames)}


def collate_videos(items: list[dict[str, Any]]) -> dict[str, Any]:
    feats, mask = pad_features([it["features"] for it in items])
    return {"video_ids": [it["video_id"] for it in items], "frame_features": feats, "frame_mask": mask}
