"""Stage-1 retrieval evaluation: text-to-video and video-to-text R@1/5/10, median and mean rank.

Each video and caption of the split is embedded once; the similarity matrix is texts x videos;
``--dsl`` adds the dual-softmax re-weighted results (CLIP2TV / CAMoE) beside the plain ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retrieval_pretrain.annotations import load_annotations
from retrieval_pretrain.config import RetrievalConfig
from retrieval_pretrain.data import Preprocess, VideoClipDataset, collate_videos
from retrieval_pretrain.hub import build_tokenizer_from_info, from_pretrained
from retrieval_pretrain.retrieval_metrics import dsl_retrieval_metrics, retrieval_metrics
from retrieval_pretrain.runtime import atomic_write_json


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def encode_video_batches(model: Any, videos: list[tuple[str, Path]], pre: Preprocess, device: torch.device,
                         batch_size: int, num_workers: int, method: str = "uniform", desc: str = "videos",
                         timer: Any = None) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor, list]]:
    """Decode videos in DataLoader workers and run the video tower on each batch.

    Yields ``(video_ids, seq (B, T, D), mask (B, T), failures)``; ``seq`` is the temporal head's
    per-frame output before pooling. ``timer`` (a ``StepTimer``) splits data wait from compute.
    """
    loader = DataLoader(VideoClipDataset(videos, pre, method), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_videos, shuffle=False, pin_memory=device.type == "cuda")
    model.eval()
    for batch in tqdm(loader, desc=desc, file=sys.stderr, unit="batch"):
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


def evaluate_retrieval(model_dir: Path, cfg: RetrievalConfig, split: str | None = None, dsl: bool = False,
                       output: Path | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Retrieval metrics of the stage-1 model in ``model_dir`` on a split; writes ``metrics.json``."""
    split = split or cfg.data.test_split
    device = pick_device(cfg.run.device)
    model, info = from_pretrained(model_dir, device=device)
    tokenize = build_tokenizer_from_info(info)
    ann = load_annotations(cfg.data)
    entries = ann.split(split)
    if not entries:
        raise ValueError(f"split '{split}' has no videos in {cfg.data.annotations} (splits: {', '.join(ann.splits())})")
    pre = Preprocess(info["num_frames"], model.image_size, model.image_mean, model.image_std)
    videos = [(e.video_id, Path(e.path)) for e in entries]
    emb, failures = embed_videos(model, videos, pre, device, batch_size or cfg.pretrain.eval_batch_size,
                                 cfg.run.num_workers, method=info.get("eval_sampling", cfg.video.eval_sampling))
    for _, reason in failures:
        print(f"warning: cannot evaluate on unreadable video {reason}", file=sys.stderr)
    kept = [e for e in entries if e.video_id in emb]
    if not kept:
        raise RuntimeError(f"none of the {len(entries)} videos of split '{split}' could be read")
    video_matrix = torch.stack([emb[e.video_id] for e in kept])  # (V, D)
    texts, text_to_video = [], []
    for vi, e in enumerate(kept):
        texts.extend(e.captions)
        text_to_video.extend([vi] * len(e.captions))
    text_chunks = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            tokens = tokenize(texts[i:i + 256]).to(device)
            text_chunks.append(model.encode_text(tokens).float().cpu())
    text_matrix = torch.cat(text_chunks)  # (N_text, D)
    sim = text_matrix @ video_matrix.T  # (N_text, V)
    metrics: dict[str, Any] = {"split": split, "videos": len(kept), "captions": len(texts),
                               "unreadable_videos": len(failures)}
    metrics.update(retrieval_metrics(sim.numpy(), np.asarray(text_to_video)))
    if dsl:
        scale = float(model.logit_scale.detach().exp().clamp(max=100)) if hasattr(model, "logit_scale") else 100.0
        dsl_metrics = dsl_retrieval_metrics(sim.numpy(), np.asarray(text_to_video), scale)
        metrics.update({f"dsl_{k}": v for k, v in dsl_metrics.items()})
    out_dir = Path(output) if output else Path(model_dir).parent / f"eval_retrieval_{split}"
    atomic_write_json(out_dir / "metrics.json", metrics)
    if failures:
        atomic_write_json(out_dir / "failures.json", [{"path": p, "reason": r} for p, r in failures])
    return metrics
