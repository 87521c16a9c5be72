"""What stage 1 trains on: the training split's videos (never an evaluation split's), and how they
reach the model - decoded in DataLoader workers every step, decoded once into memory
(``video.cache_frames``), or for prompt tuning encoded once by the frozen image tower - as batches of TSN-sampled frames with one caption per video per epoch."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.foundation.machine import check_fits_memory
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.reading.annotation_table import file_problem, splits_found
from retrieval_pretrain.reading.annotations import Annotations
from retrieval_pretrain.reading.label_formats import novel_labels
from retrieval_pretrain.stage1.config import RetrievalConfig
from retrieval_pretrain.stage1.data import ContrastiveTrainSet, EpochShuffleSampler, Preprocess, collate_videos
from retrieval_pretrain.stage1.kept_frames import FeatureCache, FrameCache, estimate_cache_bytes


class SplitOverlapError(DatasetError):
    """Stage 1 was asked to train on videos of an evaluation split."""


def training_entries(ann: Annotations, cfg: RetrievalConfig) -> tuple[list[Any], list[dict[str, str]]]:
    """The train split's entries whose video file exists, plus the skipped ones (with reasons).

    Refuses (``SplitOverlapError``) when a training video is also in the val or test split:
    stage 1 for captioning must never see evaluation videos (e.g. CLIP4Clip's 9k retrieval-train
    list overlaps MSR-VTT's caption test split). ``pretrain.allow_eval_overlap=true`` overrides.
    """
    train = ann.split(cfg.data.train_split)
    if not train:
        raise DatasetError(
            f"{cfg.data.annotations}: no videos in split '{cfg.data.train_split}' (data.train_split; "
            f"{splits_found(ann, cfg.data.train_split)})"
        )
    held_out = {cfg.data.val_split, cfg.data.test_split} - {cfg.data.train_split}
    eval_keys = {}
    for split in held_out:
        for e in ann.split(split):
            eval_keys[e.source] = split  # a time range: any part of an evaluation video is that video
            eval_keys[os.path.realpath(e.path)] = split  # realpath: a link loop is not an error here
    overlap = [e.video_id for e in train
               if e.source in eval_keys or os.path.realpath(e.path) in eval_keys]
    official = [e.video_id for e in train if e.official_split in held_out and e.video_id not in overlap]
    if (overlap or official) and not cfg.pretrain.allow_eval_overlap:
        parts = []
        if overlap:
            parts.append(f"{len(overlap)} training videos are also in an evaluation split of this config "
                         f"(e.g. {', '.join(overlap[:5])})")
        if official:
            parts.append(f"{len(official)} training videos belong to the benchmark's official caption val/test "
                         f"splits (e.g. {', '.join(official[:5])}; CLIP4Clip's MSRVTT_train.9k.csv includes "
                         "1,990 caption-test and 497 val videos)")
        raise SplitOverlapError(
            "; ".join(parts) + ". Stage 1 for captioning must train on the caption-train split only: use the "
            "caption splits (e.g. data.format=msrvtt with the official videodatainfo file), or set "
            "pretrain.allow_eval_overlap=true for retrieval-only experiments."
        )
    novel = novel_labels(cfg.data, {e.label for e in ann.entries})
    if novel:  # base-to-novel: the novel labels' videos are held out of training, on purpose
        train = [e for e in train if e.label not in novel]
        print(f"stage 1: training on {len(train)} videos of base labels; those of the {len(novel)} labels in "
              f"data.novel_labels are held out", file=sys.stderr)
    kept, skipped = [], []
    for e in train:
        why = file_problem(Path(e.path))
        if why is None:
            kept.append(e)
        else:
            skipped.append({"video_id": e.video_id, "path": str(e.path), "reason": why})
    return kept, skipped


def _warn_if_fewer(cfg: RetrievalConfig) -> None:
    if 0 < cfg.video.cache_frames < cfg.video.num_frames:
        print(f"warning: video.cache_frames={cfg.video.cache_frames} keeps fewer frames of each video than "
              f"video.num_frames={cfg.video.num_frames}: training items hold at most {cfg.video.cache_frames} real "
              f"frames (the rest padding), while evaluation decodes {cfg.video.num_frames}", file=sys.stderr)


def frame_cache(entries: list[Any], cfg: RetrievalConfig, image_size: int, main: bool) -> FrameCache:
    """Decode the training videos once into memory (``video.cache_frames``), refusing a cache
    that would take more than half of this machine's memory."""
    n = cfg.video.cache_frames
    _warn_if_fewer(cfg)
    check_fits_memory(estimate_cache_bytes(len(entries), n, image_size),
                      f"video.cache_frames={n}: {len(entries)} videos x {n} frames at {image_size} px",
                      "or set video.cache_frames=0 to decode every step", settings={"video.cache_frames": n})
    cache = FrameCache([e.clip for e in entries], n, image_size, cfg.run.num_workers, progress=main)
    bad = sum(1 for e in cache.errors if e)
    print(f"stage 1: {len(entries) - bad} training videos decoded once into memory ({cache.nbytes / 1e6:.0f} MB)"
          + (f"; {bad} could not be read and are reported when drawn" if bad else ""), file=sys.stderr)
    return cache


FEATURE_CACHE_FRAMES = 32  # frames per video prompt tuning encodes when video.cache_frames is 0 (or num_frames)


def feature_cache(entries: list[Any], cfg: RetrievalConfig, model: StageOneModel, encode: Callable[[torch.Tensor], torch.Tensor],
                  main: bool) -> FeatureCache:
    """Prompt tuning's frame features: every training video decoded once and its kept frames
    (``video.cache_frames``; when 0, 32 or ``video.num_frames`` if more) encoded by the frozen image
    tower through ``encode``."""
    n = cfg.video.cache_frames or max(FEATURE_CACHE_FRAMES, cfg.video.num_frames)
    _warn_if_fewer(cfg)
    chose = (f"video.cache_frames={n}" if cfg.video.cache_frames else
             f"video.cache_frames=0 (so max({FEATURE_CACHE_FRAMES}, video.num_frames={cfg.video.num_frames}) frames)")
    check_fits_memory(len(entries) * n * model.embed_dim * 4,
                      f"pretrain.mode=prompt with {chose}: the features of {len(entries)} videos x {n} frames",
                      settings={"video.cache_frames": n})  # a cache_frames > 0 sets the frames kept, whatever num_frames
    start = time.perf_counter()
    cache = FeatureCache([e.clip for e in entries], n, model.image_size, model.image_mean, model.image_std, encode,
                         cfg.run.num_workers, progress=main, batch_frames=max(64, 4 * cfg.pretrain.batch_size))
    bad = sum(1 for e in cache.errors if e)
    if len(entries) - bad < 2:
        shown = "; ".join(e for e in cache.errors if e)[:2000]
        raise DatasetError(f"{cfg.data.annotations}: prompt tuning needs at least 2 readable training videos, "
                           f"{len(entries) - bad} of {len(entries)} could be read ({shown})")
    print(f"stage 1: {len(entries) - bad} training videos encoded once by the frozen image tower "
          f"({cache.nbytes / 1e6:.1f} MB of features, {time.perf_counter() - start:.0f} s)"
          + (f"; {bad} could not be read and are reported when drawn" if bad else ""), file=sys.stderr)
    return cache


def train_loader(entries: list[Any], cfg: RetrievalConfig, model: StageOneModel, tokenize: Callable[[list[str]], torch.Tensor],
                 main: bool, encode: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[DataLoader, EpochShuffleSampler]:
    """The training loader (one item per video, shuffled per epoch by the returned sampler). With
    ``encode`` (prompt tuning: the frozen image tower) its items carry image-tower features."""
    pre = Preprocess.for_model(model.spec)  # the frames, size and normalisation the model was built for
    if encode is not None:
        cache = feature_cache(entries, cfg, model, encode, main)
    else:
        cache = frame_cache(entries, cfg, model.image_size, main) if cfg.video.cache_frames else None
    dataset = ContrastiveTrainSet(entries, pre, tokenize, method=cfg.video.train_sampling, seed=cfg.run.seed,
                                  cache=cache)
    sampler = EpochShuffleSampler(len(dataset), seed=cfg.run.seed)
    workers = cfg.run.num_workers
    loader = DataLoader(dataset, batch_size=cfg.pretrain.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_videos, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    return loader, sampler
