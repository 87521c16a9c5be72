"""The video tower's inference loop, shared by retrieval evaluation, feature extraction and the
captioning pipeline: videos decoded in DataLoader workers, batched through the stage-1 tower, each
video once. Unreadable videos come back as ``(path, reason)`` failures, never dropped.

For pairwise models (``model.PairwiseScorer``) ``video_states`` keeps each video's scoring state
and ``pair_score_matrix`` scores every (video, text) pair from those, in blocks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retrieval_pretrain.modeling.model import PairwiseScorer
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.stage1.data import Preprocess, VideoClipDataset, collate_videos
from retrieval_pretrain.stage1.kept_frames import FrameCache


@torch.no_grad()
def encode_video_batches(model: StageOneModel, videos: list[tuple[str, Path]], pre: Preprocess, device: torch.device,
                         batch_size: int, num_workers: int, method: str = "uniform", desc: str = "videos",
                         timer: Any = None, progress: bool = True, encode: Callable[..., Any] | None = None,
                         frames: FrameCache | None = None) -> Iterator[tuple[list[str], Any, torch.Tensor, list]]:
    """Decode videos in DataLoader workers and run the video tower on each batch.

    Yields ``(video_ids, seq (B, T, D), mask (B, T), failures)``; ``seq`` is the temporal head's
    per-frame output before pooling - or, with ``encode``, what ``encode(frames, mask)`` returns
    (e.g. a pairwise model's ``encode_video_state``). ``timer`` (a ``StepTimer``) splits data wait
    from compute; ``progress``: show a progress bar on stderr; ``frames``: stage 1's decoded training
    videos, read from memory where they are exactly what decoding would give (``FrameCache.decoded``).
    """
    encode = encode or model.encode_frames
    loader = DataLoader(VideoClipDataset(videos, pre, method, frames), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_videos, shuffle=False, pin_memory=device.type == "cuda")
    model.eval()
    for batch in tqdm(loader, desc=desc, file=sys.stderr, unit="batch", disable=not progress):
        if timer is not None:
            timer.data_ready()
        if not batch["video_ids"]:
            yield [], None, None, batch["failures"]
            continue
        frames = batch["frames"].to(device, non_blocking=True)
        mask = batch["mask"].to(device)
        seq = encode(frames, mask)  # (B, T, D), or the batch's state dict
        if device.type == "cuda":
            torch.cuda.synchronize()
        if timer is not None:
            timer.step_done()
        yield batch["video_ids"], seq, mask, batch["failures"]


@torch.no_grad()
def embed_videos(model: StageOneModel, videos: list[tuple[str, Path]], pre: Preprocess, device: torch.device,
                 batch_size: int, num_workers: int, method: str = "uniform",
                 desc: str = "videos") -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Embed each video once: ``{video_id: normalised embedding (D,)}`` and the failures."""
    out: dict[str, torch.Tensor] = {}
    failures: list[tuple[str, str]] = []
    for ids, seq, mask, failed in encode_video_batches(model, videos, pre, device, batch_size, num_workers,
                                                       method, desc):
        failures.extend(failed)
        if ids:
            out.update(zip(ids, model.pool(seq, mask).float().cpu()))  # (B, D)
    return out, failures


@torch.no_grad()
def video_states(model: StageOneModel, videos: list[tuple[str, Path]], pre: Preprocess, device: torch.device,
                 batch_size: int, num_workers: int, method: str = "uniform",
                 desc: str = "videos") -> tuple[dict[str, dict[str, torch.Tensor]], list[tuple[str, str]]]:
    """A pairwise model's scoring state of each video, once: ``{video_id: {name: tensor}}`` (each
    tensor one video's row of ``model.encode_video_state``, on the CPU) and the failures."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    failures: list[tuple[str, str]] = []
    for ids, state, _, failed in encode_video_batches(model, videos, pre, device, batch_size, num_workers, method,
                                                      desc, encode=model.encode_video_state):
        failures.extend(failed)
        for i, vid in enumerate(ids):
            out[vid] = {k: v[i].float().cpu() for k, v in state.items()}
    return out, failures


@torch.no_grad()
def pair_score_matrix(model: PairwiseScorer, states: list[dict[str, torch.Tensor]], texts: torch.Tensor,
                      device: torch.device, pairs_per_block: int = 16384) -> torch.Tensor:
    """``model.pair_scores`` of every (video, text) pair: (V, N_text) on the CPU, float32.

    Args:
        states: one video state per video (``video_states``' values), in the matrix's row order.
        texts: (N_text, ...) the captions' ``encode_text_state``, in column order.
        pairs_per_block: pairs scored per call (videos x texts); bounds the memory of the
            model's per-pair work (X-CLIP's prompt generator holds a few (pairs, D) activations).
    """
    n_text = texts.shape[0]
    text_block = max(1, min(n_text, pairs_per_block))
    video_block = max(1, pairs_per_block // text_block)
    rows = []
    for v0 in range(0, len(states), video_block):
        chunk = states[v0:v0 + video_block]
        state = {k: torch.stack([s[k] for s in chunk]).to(device) for k in chunk[0]}  # (bv, ...)
        cols = [model.pair_scores(state, texts[t0:t0 + text_block].to(device)).float().cpu()  # (bv, bt)
                for t0 in range(0, n_text, text_block)]
        rows.append(torch.cat(cols, dim=1))  # (bv, N_text)
    return torch.cat(rows) if rows else torch.zeros(0, n_text)


@torch.no_grad()
def batch_pair_scores(model: PairwiseScorer, state: dict[str, torch.Tensor], texts: torch.Tensor, device: torch.device,
                      pairs_per_block: int = 16384) -> torch.Tensor:
    """``model.pair_scores`` of one batch of video states against every text: (B, N_text) on the
    CPU, float32. The batched counterpart of ``pair_score_matrix`` for states that come batched
    (``encode_video_batches(..., encode=model.encode_video_state)``), with the same blocks.

    Args:
        state: ``{name: (B, ...)}``, as ``encode_video_state`` returns it (on any device).
        texts: (N_text, ...) the texts' ``encode_text_state``, in column order.
        pairs_per_block: pairs scored per call (videos x texts), as in ``pair_score_matrix``.
    """
    n_video = next(iter(state.values())).shape[0]
    n_text = texts.shape[0]
    text_block = max(1, min(n_text, pairs_per_block))
    video_block = max(1, pairs_per_block // text_block)
    rows = []
    for v0 in range(0, n_video, video_block):
        chunk = {k: v[v0:v0 + video_block].to(device) for k, v in state.items()}  # (bv, ...)
        rows.append(torch.cat([model.pair_scores(chunk, texts[t0:t0 + text_block].to(device)).float().cpu()
                               for t0 in range(0, n_text, text_block)], dim=1))  # (bv, N_text)
    return torch.cat(rows) if rows else torch.zeros(0, n_text)
