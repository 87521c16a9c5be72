"""Torch datasets that decode videos in DataLoader workers (CLIP4Clip's data pipeline).

Two datasets:

* ``VideoClipDataset`` - one item per video file: sampled, preprocessed frames and their mask.
  Used by retrieval evaluation, feature extraction and the caption pipeline.
* ``ContrastiveTrainSet`` - one item per training video, with one caption drawn at random per
  epoch (CLIP4Clip trains on (video, caption) pairs; drawing per video per epoch keeps every
  video equally weighted whatever its caption count). With a ``FrameCache`` (``video.cache_frames``)
  its frames come from memory instead of the decoder; with a ``FeatureCache`` (prompt tuning) its
  "frames" are the frozen image tower's features of those frames, (T, D).

A video that cannot be decoded never kills a run: its item carries ``ok=False`` and the reason,
``collate_videos`` drops it from the batch and lists it under ``"failures"``, and the caller
counts and reports it. Randomness (TSN offsets, caption choice) is a pure function of
``(seed, epoch, index)``, so worker count and resuming do not change what a step sees.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading.clips import Clip, as_clip
from retrieval_pretrain.reading.decoding.choice import current
from retrieval_pretrain.reading.label_lists import TEMPLATES
from retrieval_pretrain.reading.transforms import normalise_frames, resize_crop_frames
from retrieval_pretrain.reading.video import file_stamp, read_frames, sample_indices
from retrieval_pretrain.stage1.preprocess import Preprocess, failure_reason, load_item


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


class _KeptPerVideo:
    """Rows kept in memory for each training video (``rows[i]``: its frames or their features; None
    when it could not be read, ``errors[i]`` saying why), drawn from as the decoder samples frames."""

    rows: list[torch.Tensor | None]
    errors: list[str]

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows if r is not None)

    def __len__(self) -> int:
        return len(self.rows)

    def _draw(self, index: int, pre: Preprocess, method: str,
              rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows at the sampled frame indices, mask)``; the reason of an unreadable video as a RuntimeError."""
        kept = self.rows[index]
        if kept is None:
            raise RuntimeError(self.errors[index])  # the reason names the file
        indices, mask = sample_indices(len(kept), pre.num_frames, method, rng=rng)
        return kept.index_select(0, torch.from_numpy(indices)), torch.from_numpy(mask)

    def _finish(self, rows: torch.Tensor, pre: Preprocess) -> torch.Tensor:
        """What an item carries of drawn rows (..., *row shape): the rows themselves, or normalised frames."""
        return rows

    def sample(self, index: int, pre: Preprocess, method: str, rng: np.random.Generator | None) -> dict[str, Any]:
        """What ``Preprocess`` returns for video ``index`` (``frames`` (T, ...), ``mask`` (T,)), its rows
        picked from memory with the decoder's draws from ``rng``."""
        rows, mask = self._draw(index, pre, method, rng)
        return {"frames": self._finish(rows, pre), "mask": mask}

    def sample_many(self, picks: Sequence[tuple[int, np.random.Generator | None]], pre: Preprocess,
                    method: str) -> list[dict[str, Any] | Exception]:
        """``sample`` of each ``(index, rng)`` - or the exception it raised - with the rows of all of them
        gathered and finished in one go: the same values, bit for bit (the finishing is element-wise),
        for a fraction of the calls (stage 1's steps wait for this without loader workers)."""
        out: list[dict[str, Any] | Exception] = []
        drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, rng in picks:
            try:
                drawn.append(self._draw(index, pre, method, rng))
                out.append({})
            except Exception as e:  # the item's failure, reported by the caller as sample's would be
                out.append(e)
        if drawn:
            rows = iter(self._finish(torch.stack([r for r, _ in drawn]), pre).unbind(0))
            masks = iter(m for _, m in drawn)
            for got in out:
                if isinstance(got, dict):
                    got.update(frames=next(rows), mask=next(masks))
        return out


class FrameCache(_KeptPerVideo):
    """Every training video decoded once, at the model's input size, kept in memory as uint8.

    Stage 1 decodes ``num_frames`` frames of every video in every epoch; on a small dataset (the
    demo: 1,092 clips of 16 frames at 64 px, 215 MB) holding all frames in memory instead frees
    the CPU the decoder took. Up to ``max_frames`` frames per video are kept (all of them when the
    video has no more; otherwise ``max_frames`` spread uniformly), resized and centre cropped as
    ``preprocess_frames`` does. Training then samples its frames among the kept ones with the same
    ``sample_indices`` and random draws as the decoder would use, so for videos of at most
    ``max_frames`` frames an item is bit-identical to a decoded one. A video that cannot be read
    keeps its reason and is reported every epoch, as without the cache.
    """

    def __init__(self, paths: Sequence[str | Path], max_frames: int, image_size: int, num_workers: int = 0,
                 progress: bool = True):
        if max_frames < 1:
            raise ValueError(f"video.cache_frames must be >= 1 to cache, got {max_frames}")
        self.rows: list[torch.Tensor | None] = [None] * len(paths)  # (n_i, 3, S, S) uint8
        self.errors: list[str] = [""] * len(paths)
        # for ``decoded``: the image size and decoder, each row's clip (its path and exact range), and
        # the file it read (taken before decoding, so a file changed since no longer matches)
        self.image_size, self.backend, clips = image_size, current(), [as_clip(p) for p in paths]
        self.whole = [False] * len(paths)  # every frame of the video (or range) is kept
        self._index, self._stamps = {c: i for i, c in enumerate(clips)}, [file_stamp(c.path) for c in clips]
        loader = DataLoader(_CacheFill(paths, max_frames, image_size), batch_size=1, num_workers=num_workers,
                            collate_fn=_only_item)
        for index, frames, error, whole in tqdm(loader, desc="decode once", unit="video", file=sys.stderr,
                                                disable=not progress):
            # clone: a tensor from a worker lives in shared memory, one open file per tensor otherwise
            self.rows[index], self.errors[index] = (frames.clone() if frames is not None else None), error
            self.whole[index] = whole

    @property
    def frames(self) -> list[torch.Tensor | None]:
        """Each video's kept frames, (n_i, 3, S, S) uint8 (None: unreadable)."""
        return self.rows

    def _finish(self, rows: torch.Tensor, pre: Preprocess) -> torch.Tensor:
        """Drawn uint8 frames (..., 3, S, S) as the model's float input (``Preprocess``'s normalisation)."""
        return normalise_frames(rows, pre.mean, pre.std)

    def decoded(self, path: str | Path | Clip, pre: Preprocess, method: str) -> Callable[..., dict[str, Any]] | None:
        """For another reader of these videos (extraction after stage 1): a function returning from
        memory what ``pre(path, method)`` decodes - where the row holds every frame of that clip, read
        from the file still there, by the decoder this process uses, and the sampling is ``uniform`` at
        this cache's size (bit for bit the same, as long as the decoder returns the same frames for the
        same request: decord does not on two of ../shared/data's clips, BENCHMARKS.md); else None."""
        clip = as_clip(path)
        index = self._index.get(clip)
        if (index is None or not self.whole[index] or method != "uniform" or pre.image_size != self.image_size
                or self.backend != current() or self._stamps[index] is None or file_stamp(clip.path) != self._stamps[index]):
            return None
        return lambda method, rng: self.sample(index, pre, method, None)


class FeatureCache(_KeptPerVideo):
    """Prompt tuning's training input (``pretrain.mode=prompt``): the frozen image tower's features
    of up to ``max_frames`` frames of every training video, computed once.

    Each video is decoded once as ``FrameCache`` does (the same kept frames), its frames normalised
    with ``mean``/``std`` and passed through ``encode`` ((N, 3, S, S) -> (N, D), the frozen image
    tower), in batches of about ``batch_frames`` frames; (n_i, D) float32 rows are kept per video.
    Training samples frames among them with the same ``sample_indices`` and draws as the decoder,
    so an item's features are exactly the image tower's features of the frames a decoded item
    would hold (for videos of at most ``max_frames`` frames). An unreadable video keeps its reason
    and is reported whenever it is drawn.
    """

    def __init__(self, paths: Sequence[str | Path], max_frames: int, image_size: int, mean: Sequence[float],
                 std: Sequence[float], encode: Callable[[torch.Tensor], torch.Tensor], num_workers: int = 0,
                 progress: bool = True, batch_frames: int = 256):
        if max_frames < 1:
            raise ValueError(f"the feature cache needs max_frames >= 1, got {max_frames}")
        self.rows: list[torch.Tensor | None] = [None] * len(paths)  # (n_i, D) float32
        self.errors: list[str] = [""] * len(paths)
        self.mean, self.std, self.encode, self.width = tuple(mean), tuple(std), encode, 0
        loader = DataLoader(_CacheFill(paths, max_frames, image_size), batch_size=1, num_workers=num_workers,
                            collate_fn=_only_item)
        pending: list[tuple[int, torch.Tensor]] = []
        waiting = 0  # frames in pending
        for index, frames, error, _ in tqdm(loader, desc="encode once", unit="video", file=sys.stderr,
                                            disable=not progress):
            if frames is None:
                self.errors[index] = error
                continue
            pending.append((index, frames.clone()))
            waiting += len(frames)
            if waiting >= batch_frames:
                self._encode(pending)
                pending, waiting = [], 0
        if pending:
            self._encode(pending)

    def _encode(self, pending: list[tuple[int, torch.Tensor]]) -> None:
        frames = normalise_frames(torch.cat([f for _, f in pending]), self.mean, self.std)  # (N, 3, S, S)
        feats = self.encode(frames).detach().float().cpu()  # (N, D)
        self.width = feats.shape[-1]
        for (index, _), rows in zip(pending, feats.split([len(f) for _, f in pending])):
            self.rows[index] = rows.clone()

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """One item's row shape: (D,)."""
        return (self.width,)


def estimate_cache_bytes(num_videos: int, max_frames: int, image_size: int) -> int:
    """Upper bound of a ``FrameCache``'s memory: videos x frames x 3 x size^2 bytes."""
    return num_videos * max_frames * 3 * image_size * image_size


def _only_item(items: list[Any]) -> Any:
    return items[0]


class _CacheFill(Dataset):
    def __init__(self, paths: Sequence[str | Path | Clip], max_frames: int, image_size: int):
        self.paths, self.max_frames, self.image_size = [as_clip(p) for p in paths], max_frames, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str, bool]:
        """``(index, kept frames or None, error, whether they are all the video's frames)``."""
        path = self.paths[index]
        try:
            got = read_frames(path, self.max_frames, "uniform", short_side=self.image_size)
            n_real = int(got.mask.sum())
            real = got.frames[:n_real]  # padding repeats the last frame: keep real ones
            # fewer than asked: all of them; exactly as many: all of them only if the file (not a range) has no more
            whole = n_real < self.max_frames or (not path.is_range and got.num_video_frames == n_real)
            return index, resize_crop_frames(real, self.image_size).contiguous(), "", whole
        except Exception as e:  # named and reported by every epoch that draws this video
            return index, None, failure_reason(path, e), False


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
        same, bit for bit, as alone): the demo's loader 1.3x faster (BENCHMARKS.md)."""
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
