"""Stage 1's training videos kept in memory: ``FrameCache`` (every training video decoded once, as
uint8 frames at the model's input size) and ``FeatureCache`` (the frozen image tower's features of
those frames, for prompt tuning). Training draws each item's frames among the kept ones with the
decoder's own sampling and random draws (``sample``), or a whole batch's at once (``sample_many``:
one gather and one normalisation, the same values), so an item is what decoding would give."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from retrieval_pretrain.reading.clips import Clip, as_clip
from retrieval_pretrain.reading.decoding.choice import current
from retrieval_pretrain.reading.transforms import normalise_frames, resize_crop_frames
from retrieval_pretrain.reading.video import file_stamp, read_frames, sample_indices
from retrieval_pretrain.stage1.preprocess import Preprocess, failure_reason


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
        if not drawn:
            return out
        try:
            finished: list[Any] = list(self._finish(torch.stack([r for r, _ in drawn]), pre).unbind(0))
        except Exception:  # (a normalisation that fits no frame) each item then fails as it would alone
            finished = [_attempt(self._finish, r, pre) for r, _ in drawn]
        done = iter(zip(finished, (m for _, m in drawn)))
        for n, got in enumerate(out):
            if isinstance(got, dict):
                frames, mask = next(done)
                out[n] = frames if isinstance(frames, Exception) else {"frames": frames, "mask": mask}
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


def _attempt(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or the exception it raised."""
    try:
        return fn(*args)
    except Exception as e:  # handed to the item it belongs to
        return e


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
