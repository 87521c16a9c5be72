"""Stage 1: fine-tune CLIP into a video-text model by contrastive video-text retrieval.

The CLIP4Clip recipe (Luo et al., 2021) as CLIP4Caption's first stage (Tang et al., 2021): TSN-
sampled frames through CLIP's image tower and a temporal head, one caption per video per epoch
through the text tower, symmetric InfoNCE over the batch (the global batch across processes),
AdamW with a small learning rate for CLIP and a larger one for new layers, warm-up then cosine.

``vcap pretrain --config C --output RUN [--resume]`` writes ``RUN/log.jsonl``,
``RUN/checkpoints/step_N`` (Accelerate ``save_state``) and the model folder ``RUN/model``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from retrieval_pretrain.annotations import Annotations, load_annotations
from retrieval_pretrain.config import RetrievalConfig, config_to_dict
from retrieval_pretrain.data import (
    ContrastiveTrainSet,
    EpochShuffleSampler,
    FrameCache,
    Preprocess,
    collate_videos,
    estimate_cache_bytes,
    steps_per_epoch,
)
from retrieval_pretrain.hub import build_model, build_tokenizer, save_pretrained
from retrieval_pretrain.loss import info_nce
from retrieval_pretrain.model import freeze_parameters, param_groups
from retrieval_pretrain.runtime import (
    JsonlLogger,
    StepTimer,
    atomic_write_json,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    scheduler_length,
)


class SplitOverlapError(ValueError):
    """Stage 1 was asked to train on videos of an evaluation split."""


def training_entries(ann: Annotations, cfg: RetrievalConfig) -> tuple[list[Any], list[dict[str, str]]]:
    """The train split's entries whose video file exists, plus the skipped ones (with reasons).

    Refuses (``SplitOverlapError``) when a training video is also in the val or test split:
    stage 1 for captioning must never see evaluation videos (e.g. CLIP4Clip's 9k retrieval-train
    list overlaps MSR-VTT's caption test split). ``pretrain.allow_eval_overlap=true`` overrides.
    """
    train = ann.split(cfg.data.train_split)
    if not train:
        raise ValueError(
            f"no videos in split '{cfg.data.train_split}' of {cfg.data.annotations} "
            f"(splits found: {', '.join(ann.splits()) or 'none'})"
        )
    held_out = {cfg.data.val_split, cfg.data.test_split} - {cfg.data.train_split}
    eval_keys = {}
    for split in held_out:
        for e in ann.split(split):
            eval_keys[e.video_id] = split
            eval_keys[str(Path(e.path).resolve())] = split
    overlap = [e.video_id for e in train
               if e.video_id in eval_keys or str(Path(e.path).resolve()) in eval_keys]
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
    kept, skipped = [], []
    for e in train:
        if Path(e.path).is_file():
            kept.append(e)
        else:
            skipped.append({"video_id": e.video_id, "path": str(e.path), "reason": "video file not found"})
    return kept, skipped


def _enough_to_contrast(accelerator: Any, local_videos: int) -> bool:
    """Whether every process can take this step: InfoNCE needs 2 videos in the global batch, and
    a process left with none (all its videos unreadable) cannot run the forward pass. Decided
    together (one tiny all-gather), so no process waits in a collective the others skipped."""
    if accelerator.num_processes == 1:
        return local_videos >= 2
    counts = accelerator.gather(torch.tensor([local_videos], device=accelerator.device))
    return int(counts.min()) > 0 and int(counts.sum()) >= 2


def _optimizer(model: torch.nn.Module, cfg: RetrievalConfig) -> torch.optim.Optimizer:
    """AdamW with CLIP at ``clip_lr`` and the new layers at ``lr``; weight decay on matrices only
    (not on biases, norms and the logit scale, as open_clip); frozen parameters are left out."""
    clip_params, new_params = param_groups(model)
    groups = []
    for params, lr in ((clip_params, cfg.pretrain.clip_lr), (new_params, cfg.pretrain.lr)):
        decay = [p for p in params if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
        groups.append({"params": decay, "lr": lr, "weight_decay": cfg.pretrain.weight_decay})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98), eps=1e-6)


def _frame_cache(entries: list[Any], cfg: RetrievalConfig, image_size: int, main: bool) -> FrameCache:
    """Decode the training videos once into memory (``video.cache_frames``), refusing a cache
    that would take more than half of this machine's memory."""
    n = cfg.video.cache_frames
    need = estimate_cache_bytes(len(entries), n, image_size)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram // 2:
        raise ValueError(f"video.cache_frames={n}: {len(entries)} videos x {n} frames at {image_size} px take up to "
                         f"{need / 1e9:.1f} GB, more than half of this machine's {ram / 1e9:.1f} GB; "
                         f"lower it, or set video.cache_frames=0 to decode every step")
    cache = FrameCache([e.path for e in entries], n, image_size, cfg.run.num_workers, progress=main)
    bad = sum(1 for e in cache.errors if e)
    print(f"stage 1: {len(entries) - bad} training videos decoded once into memory ({cache.nbytes / 1e6:.0f} MB)"
          + (f"; {bad} could not be read and are reported when drawn" if bad else ""), file=sys.stderr)
    return cache


def train(cfg: RetrievalConfig, output: Path, resume: bool = False, max_steps: int | None = None) -> Path:
    """Run stage 1 and write ``output/model``; returns that folder.

    ``max_steps`` stops after that many optimizer steps (for tests of interruption and resume);
    the model folder is then not written.
    """
    output = Path(output)
    p = cfg.pretrain
    accelerator = make_accelerator(cfg.run.mixed_precision, p.grad_accum, cfg.run.device, cfg.run.seed)
    main = accelerator.is_main_process
    if main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output / "config.json", config_to_dict(cfg))

    ann = load_annotations(cfg.data)
    entries, skipped = training_entries(ann, cfg)
    if ann.problems or skipped:
        if main:
            atomic_write_json(output / "skipped.json", {
                "annotation_problems": [vars(q) for q in ann.problems], "missing_videos": skipped})
        print(f"warning: skipping {len(ann.problems)} malformed annotation entries and {len(skipped)} "
              f"missing videos (listed in {output / 'skipped.json'})", file=sys.stderr)
    if len(entries) < 2:
        raise ValueError(f"stage 1 needs at least 2 training videos with files, found {len(entries)}")

    model = build_model(cfg)
    if p.freeze:
        frozen = freeze_parameters(model, p.freeze)
        total_params = sum(q.numel() for q in model.parameters())
        print(f"stage 1: {frozen:,} of {total_params:,} parameters frozen ({', '.join(p.freeze)})", file=sys.stderr)
    tokenize = build_tokenizer(cfg)
    pre = Preprocess(cfg.video.num_frames, model.image_size, model.image_mean, model.image_std)
    cache = _frame_cache(entries, cfg, model.image_size, main) if cfg.video.cache_frames else None
    dataset = ContrastiveTrainSet(entries, pre, tokenize, method=cfg.video.train_sampling, seed=cfg.run.seed,
                                  cache=cache)
    sampler = EpochShuffleSampler(len(dataset), seed=cfg.run.seed)
    loader = DataLoader(dataset, batch_size=p.batch_size, sampler=sampler, num_workers=cfg.run.num_workers,
                        collate_fn=collate_videos, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False, prefetch_factor=4 if cfg.run.num_workers else None)
    optimizer = _optimizer(model, cfg)
    per_epoch = steps_per_epoch(len(dataset), p.batch_size, p.grad_accum, accelerator.num_processes)
    total = per_epoch * p.epochs  # optimizer steps of this run
    scheduler = get_cosine_schedule_with_warmup(optimizer, *scheduler_length(total, p.warmup_ratio, accelerator))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    start_epoch, skip_batches, global_step = 0, 0, 0
    if resume:
        state = load_checkpoint(accelerator, output)
        if state is None:
            print(f"--resume: no checkpoint in {output / 'checkpoints'}; starting fresh", file=sys.stderr)
        else:
            start_epoch, skip_batches, global_step = state["epoch"], state["batches_done"], state["global_step"]
    log = JsonlLogger(output / "log.jsonl", enabled=main)
    failures: list[tuple[str, str]] = []
    timer = StepTimer()
    bar = tqdm(total=total, initial=global_step, desc="stage 1", disable=not main, file=sys.stderr)
    t0 = time.perf_counter()
    seen = 0
    stop = False
    for epoch in range(start_epoch, p.epochs):
        sampler.use_epoch(epoch)
        model.train()
        batches = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batches_done = skip_batches
        skip_batches = 0
        timer.reset()
        for batch in batches:
            timer.data_ready()
            batches_done += 1
            if batch["failures"]:
                failures.extend(batch["failures"])
                for path, reason in batch["failures"]:
                    print(f"warning: skipped unreadable video {reason}", file=sys.stderr)
            if not _enough_to_contrast(accelerator, batch["frames"].shape[0]):
                continue
            with accelerator.accumulate(model):
                out = model(frames=batch["frames"], mask=batch["mask"], tokens=batch["tokens"])
                loss = info_nce(out["video"], out["text"], out["logit_scale"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and p.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), p.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            seen += batch["frames"].shape[0]
            timer.step_done()
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            if global_step % cfg.run.log_every == 0 or global_step == 1:
                data_s, compute_s = timer.reset()
                elapsed = time.perf_counter() - t0
                log.log(step=global_step, epoch=epoch, loss=loss.item(),
                        lr_new=scheduler.get_last_lr()[-1], lr_clip=scheduler.get_last_lr()[0],
                        logit_scale=float(out["logit_scale"].detach()), data_s=round(data_s, 4),
                        compute_s=round(compute_s, 4), videos_per_s=round(seen / max(elapsed, 1e-9), 3))
            if p.save_every > 0 and global_step % p.save_every == 0:
                save_checkpoint(accelerator, output, global_step, {"epoch": epoch, "batches_done": batches_done})
            if max_steps is not None and global_step >= max_steps:
                stop = True
                break
        if stop:
            break
    bar.close()
    if failures and main:
        atomic_write_json(output / "failures.json", [{"path": pth, "reason": r} for pth, r in failures])
        print(f"warning: {len(failures)} unreadable videos were skipped (listed in {output / 'failures.json'})",
              file=sys.stderr)
    if stop:
        save_checkpoint(accelerator, output, global_step, {"epoch": epoch, "batches_done": batches_done})
        return output / "checkpoints"
    accelerator.wait_for_everyone()
    model_dir = output / "model"
    if main:
        save_pretrained(accelerator.unwrap_model(model), model_dir, extra={
            "num_frames": cfg.video.num_frames, "eval_sampling": cfg.video.eval_sampling,
            "trained_on": {"annotations": cfg.data.annotations, "split": cfg.data.train_split,
                           "videos": len(entries), "steps": global_step},
        })
        summary = {"steps": global_step, "videos": len(entries), "skipped": len(skipped),
                   "unreadable": len(failures), "seconds": round(time.perf_counter() - t0, 1),
                   "model": str(model_dir)}
        print(f"stage 1 done: {json.dumps(summary)}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return model_dir
