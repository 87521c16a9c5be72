"""The video tower's inference loop, shared by retrieval evaluation, feature extraction and the
captioning pipeline: videos decoded in DataLoader workers, batched through the stage-1 tower, each
video once. Unreadable videos come back as ``(path, reason)`` failures, never dropped."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retrieval_pretrain.data import Preprocess, VideoClipDataset, collate_videos


@torch.no_grad()
def encode_video_batches(model: Any, videos: list[tuple[str, Path]], pre: Preprocess, device: torch.device,
                         batch_size: int, num_workers: int, method: str = "uniform", desc: str = "videos",
                         timer: Any = None, progress: bool = True
                         ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor, list]]:
    """Decode videos in DataLoader workers and run the video tower on each batch.

    Yields ``(video_ids, seq (B, T, D), mask (B, T), failures)``; ``seq`` is the temporal head's
    per-frame output before pooling. ``timer`` (a ``StepTimer``) splits data wait from compute;
    ``progress``: show a progress bar on stderr.
    """
    loader = DataLoader(VideoClipDataset(videos, pre, method), batch_size=batch_size, num_workers=num_workers,
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
        seq = model.encode_frames(frames, mask)  # (B, T, D)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if timer is not None:
            timer.step_done()
        yield batch["video_ids"], seq, mask, batch["failures"]


@torch.no_grad()
def embed_videos(model: Any, videos: list[tuple[str, Path]], pre: Preprocess, device: torch.device,
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
