"""Stage-1 retrieval evaluation: text-to-video and video-to-text R@1/5/10, median and mean rank.

Each video and caption of the split is embedded once; the similarity matrix is texts x videos;
``--dsl`` adds the dual-softmax re-weighted results (CLIP2TV / CAMoE) beside the plain ones. For a
pairwise model (``model.PairwiseScorer``: X-CLIP) each video and caption is encoded once into its
scoring state and the model scores every (text, video) pair, in blocks (``encode.pair_score_matrix``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from retrieval_pretrain.foundation.accelerate_setup import pick_device
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, read_spec, warn_if_video_differs
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.reading.annotation_table import splits_found
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.stage1.config import RetrievalConfig, check_batch_memory
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import embed_videos, pair_score_matrix, video_states
from retrieval_pretrain.stage1.retrieval_metrics import dsl_retrieval_metrics, retrieval_metrics


@torch.no_grad()
def embed_texts(model: StageOneModel, tokenize: Callable[[list[str]], torch.Tensor], texts: list[str],
                device: torch.device, batch_size: int = 256,
                encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Normalised caption embeddings (N, D) on the CPU, ``batch_size`` captions at a time (or, with
    ``encode``, what it gives for a batch of token ids, e.g. ``encode_text_state``)."""
    encode = encode or model.encode_text
    chunks = [encode(tokenize(texts[i:i + batch_size]).to(device)).float().cpu()
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


def split_entries(ann: Any, split: str, annotations: str) -> list[Any]:
    """The entries of ``split``; ``DatasetError`` naming the file and the splits it has when empty."""
    entries = ann.split(split)
    if not entries:
        raise DatasetError(f"{annotations}: split '{split}' has no videos ({splits_found(ann, split)})")
    return entries


def evaluate_retrieval(model_dir: Path, cfg: RetrievalConfig, split: str | None = None, dsl: bool = False,
                       output: Path | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Retrieval metrics of the stage-1 model in ``model_dir`` on a split; writes ``metrics.json``."""
    split = split or cfg.data.test_split
    batch_key = "batch_size" if batch_size else "pretrain.eval_batch_size"  # the setting the caller chose it by
    batch_size = batch_size or cfg.pretrain.eval_batch_size
    spec = read_spec(model_dir)  # the frames and size it encodes: one batch must fit, checked before any work
    check_batch_memory(spec.num_frames, spec.image_size, batch_size, batch_key)
    device = pick_device(cfg.run.device)
    model, spec = from_pretrained(model_dir, device=device)
    warn_if_video_differs(cfg.video.num_frames, spec.num_frames, model_dir, cfg.video.eval_sampling, spec.eval_sampling)
    entries = split_entries(load_annotations(cfg.data), split, cfg.data.annotations)
    pre = Preprocess.for_model(spec)
    videos = [(e.video_id, e.clip) for e in entries]
    pairwise = scores_pairwise(model)
    encode = video_states if pairwise else embed_videos  # {video_id: state} or {video_id: embedding (D,)}
    emb, failures = encode(model, videos, pre, device, batch_size,
                           cfg.run.num_workers, method=spec.eval_sampling)
    for _, reason in failures:
        print(f"warning: cannot evaluate on unreadable video {reason}", file=sys.stderr)
    kept = [e for e in entries if e.video_id in emb]
    if not kept:
        raise DatasetError(f"{cfg.data.annotations}: none of the {len(entries)} videos of split '{split}' "
                           "could be read (each is named above)")
    texts = [c for e in kept for c in e.captions]
    text_to_video = np.asarray([vi for vi, e in enumerate(kept) for _ in e.captions])
    tokenize = tokenizer_from_spec(spec)
    if pairwise:
        text_states = embed_texts(model, tokenize, texts, device, encode=model.encode_text_state)  # (N_text, D)
        sim = pair_score_matrix(model, [emb[e.video_id] for e in kept], text_states, device).T.numpy()  # (N_text, V)
    else:
        sim = (embed_texts(model, tokenize, texts, device)
               @ torch.stack([emb[e.video_id] for e in kept]).T).numpy()  # (N_text, V)
    metrics: dict[str, Any] = {"split": split, "videos": len(kept), "captions": len(texts),
                               "unreadable_videos": len(failures)}
    metrics.update(retrieval_metrics(sim, text_to_video))
    if dsl:
        scale = float(model.logit_scale.detach().exp().clamp(max=100))
        metrics.update({f"dsl_{k}": v for k, v in dsl_retrieval_metrics(sim, text_to_video, scale).items()})
    out_dir = Path(output) if output else Path(model_dir).parent / f"eval_retrieval_{split}"
    write_json(out_dir / "metrics.json", metrics)
    if failures:
        write_json(out_dir / "failures.json", [{"path": p, "reason": r} for p, r in failures])
    return metrics
