"""Video-text retrieval metrics: R@1/5/10, median and mean rank, both directions; dual softmax.

The metrics of CLIP4Clip (Luo et al., 2021) and the video-retrieval literature, on a similarity
matrix of texts (rows) by videos (columns):

* text-to-video: each caption is a query; its rank is the position of its video among all videos.
* video-to-text: each video is a query; its rank is the position of the *first* of its captions
  among all texts (multi-caption aware: MSR-VTT has 20 captions per video, so a video counts as
  found at the best rank any of its captions reaches).

Conventions, stated once: ranks are 1-based (1 = the correct item is first). ``R@K`` is a
**fraction** in [0, 1] (0.443, not 44.3 as papers print it). Ties are counted *against* the query:
an item scored equal to the correct one ranks ahead of it, so a collapsed model that gives every
pair the same score gets the worst rank, never the best.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

KS = (1, 5, 10)
_CHUNK = 4096  # texts per block: bounds the temporary (chunk, num_videos) comparison arrays


def dual_softmax(sim: Any, temperature: float = 100.0, dim: int = 0) -> Any:
    """Dual-softmax re-weighting of a similarity matrix at inference.

    ``sim * softmax(temperature * sim, dim)``. With ``sim`` as texts x videos and ``dim=0`` (the
    default) the softmax runs over the *texts* of each video column: a video that is close to many
    captions (a "hub") has its similarity to each of them scaled down, which sharpens
    text-to-video retrieval. This is the inference form of the dual softmax of CAMoE (Cheng et al.,
    "Improving Video-Text Retrieval by Multi-Stream Corpus Alignment and Dual Softmax Loss", 2021,
    arXiv:2109.04290) as used by CLIP2TV (Gao et al., 2021, arXiv:2111.05610); the constant factor
    some implementations add (``* len(sim)``) changes no ranking and is left out. For
    video-to-text, re-weight over the other axis (``dim=1``, the videos of each text row).
    Note that it uses the whole test set's statistics (every query at once).

    Args:
        sim: (num_texts, num_videos) cosine similarities, numpy array or tensor.
        temperature: the logit scale (CLIP's learned ``exp(logit_scale)``, 100 for trained CLIP).
        dim: the axis the softmax normalises over.
    Returns:
        the re-weighted matrix, of the input's type (numpy in, numpy out).
    """
    t = torch.as_tensor(sim)
    if not t.is_floating_point():
        t = t.double()
    if t.ndim != 2 or dim not in (0, 1):
        raise ValueError(f"expected a 2-D matrix and dim 0 or 1, got shape {tuple(t.shape)} and dim {dim}")
    out = torch.empty_like(t)
    other = 1 - dim
    step = max(1, (1 << 24) // max(1, t.shape[dim]))  # blocks along the other axis bound the temporaries
    for s in range(0, t.shape[other], step):
        block = t.narrow(other, s, min(step, t.shape[other] - s))
        out.narrow(other, s, block.shape[other]).copy_(block * torch.softmax(block * temperature, dim=dim))
    return out.numpy() if isinstance(sim, np.ndarray) else out


def _ranks(sim: np.ndarray, text_to_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks: per text (t2v) and per video with at least one caption (v2t)."""
    n_text, n_video = sim.shape
    rows = np.arange(n_text)
    target = sim[rows, text_to_video]  # (Nt,) each caption's score with its own video
    # v2t: the best score any own caption reaches, per video
    best = np.full(n_video, -np.inf, dtype=sim.dtype)
    np.maximum.at(best, text_to_video, target)
    t2v = np.empty(n_text, dtype=np.int64)
    ahead = np.zeros(n_video, dtype=np.int64)  # other videos' captions scored >= the best own one
    for s in range(0, n_text, _CHUNK):
        block = sim[s: s + _CHUNK]  # (c, Nv)
        own = text_to_video[s: s + _CHUNK]  # (c,)
        r = np.arange(block.shape[0])
        # t2v: videos scored >= the own video, the own one included (= 1 + others ahead)
        t2v[s: s + _CHUNK] = (block >= target[s: s + _CHUNK, None]).sum(axis=1)
        ge = block >= best[None, :]  # (c, Nv)
        ge[r, own] = False  # a video's own captions are not ahead of its first caption
        ahead += ge.sum(axis=0)
    has_caption = np.isfinite(best)
    return t2v, (ahead + 1)[has_caption]


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_R@{k}": float(np.mean(ranks <= k)) for k in KS}
    out[f"{prefix}_MedR"] = float(np.median(ranks))
    out[f"{prefix}_MeanR"] = float(np.mean(ranks))
    return out


def retrieval_metrics(sim: Any, text_to_video: Any) -> dict[str, float]:
    """Retrieval metrics of a texts x videos similarity matrix.

    Args:
        sim: (num_texts, num_videos) scores, numpy array or tensor; higher = more similar.
        text_to_video: (num_texts,) the column index of each text's video.
    Returns:
        ``t2v_R@1, t2v_R@5, t2v_R@10, t2v_MedR, t2v_MeanR`` and the same with ``v2t_``. R@K are
        fractions in [0, 1]; MedR / MeanR are 1-based ranks. Videos without any caption are left
        out of video-to-text (they cannot be found).
    """
    if isinstance(sim, torch.Tensor):
        sim = sim.detach().float().cpu().numpy()
    sim = np.asarray(sim)
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    t2v_index = np.asarray(text_to_video, dtype=np.int64)
    if sim.ndim != 2 or t2v_index.shape != (sim.shape[0],):
        raise ValueError(f"sim must be (num_texts, num_videos) and text_to_video (num_texts,); got "
                         f"{sim.shape} and {t2v_index.shape}")
    if sim.shape[0] == 0 or t2v_index.min() < 0 or t2v_index.max() >= sim.shape[1]:
        raise ValueError("text_to_video must index columns of sim, and there must be at least one text")
    if np.isnan(sim).any():
        raise ValueError("the similarity matrix contains NaN")
    t2v, v2t = _ranks(sim, t2v_index)
    return {**_summary(t2v, "t2v"), **_summary(v2t, "v2t")}


def dsl_retrieval_metrics(sim: Any, text_to_video: Any, temperature: float = 100.0) -> dict[str, float]:
    """Retrieval metrics after dual-softmax re-weighting, each direction with its own softmax axis.

    Text-to-video ranks videos for a text query, so the re-weighting normalises over the *texts*
    of each video (``dim=0``: a hub video close to many captions is scaled down); video-to-text
    ranks texts for a video query and normalises over the *videos* of each text (``dim=1``).
    Returns the keys of ``retrieval_metrics``: ``t2v_*`` from the first, ``v2t_*`` from the second.
    """
    if isinstance(sim, torch.Tensor):
        sim = sim.detach().float().cpu().numpy()
    sim = np.asarray(sim, dtype=np.float64)
    t2v = retrieval_metrics(dual_softmax(sim, temperature, dim=0), text_to_video)
    v2t = retrieval_metrics(dual_softmax(sim, temperature, dim=1), text_to_video)
    return {**{k: v for k, v in t2v.items() if k.startswith("t2v_")},
            **{k: v for k, v in v2t.items() if k.startswith("v2t_")}}
