"""Stage 1: fine-tune CLIP into a video-text model by contrastive video-text retrieval.

The CLIP4Clip recipe (Luo et al., 2021) as CLIP4Caption's first stage (Tang et al., 2021): TSN-
sampled frames through CLIP's image tower and a temporal head, one caption per video per epoch
through the text tower, the configured loss (symmetric InfoNCE over the global batch), AdamW with a
small learning rate for CLIP and a larger one for new layers, warm-up then cosine. The model, loss
and training mode are stage 1's parts (``retrieval_pretrain.modeling.parts``); the loop knows none of them.

``vcap pretrain --config C --output RUN [--resume]`` writes ``RUN/log.jsonl``,
``RUN/checkpoints/step_N`` (Accelerate ``save_state``) and the model folder ``RUN/model``.
Open-VCLIP's training options (``retrieval_pretrain.stage1.interpolate``): ``pretrain.interpolation`` adds
the gradient at interpolated weights to each step; ``pretrain.swa`` makes ``RUN/model`` the average
of the end-of-epoch weights (the last epoch's in ``RUN/model_last``). CLIP2TV's momentum
distillation (``retrieval_pretrain.modeling.distill``, ``pretrain.distill``) replaces the loss by soft targets
from an EMA teacher with queued negatives; teacher and queues are checkpointed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from retrieval_pretrain.foundation.accelerate_setup import make_accelerator, mean_over_processes, scheduler_length
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.checkpoints import epoch_batches, load_checkpoint, save_checkpoint, stop_if_diverged
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.foundation.hub import resolve_model_folder
from retrieval_pretrain.foundation.run_folder import claim
from retrieval_pretrain.foundation.run_log import JsonlLogger, StepTimer
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer
from retrieval_pretrain.modeling.distill import MomentumDistiller
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import init_weights_from, save_pretrained
from retrieval_pretrain.modeling.parts import build_loss, build_training_mode, build_video_text_model, param_groups
from retrieval_pretrain.modeling.spec import SwaRecord
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.stage1.config import (
    RetrievalConfig,
    check_batch_memory,
    check_training_choices,
    config_to_dict,
    configured_image_size,
)
from retrieval_pretrain.stage1.data import steps_per_epoch
from retrieval_pretrain.stage1.interpolate import InterpolationRegulariser, WeightAverage, load_base
from retrieval_pretrain.stage1.kept_frames import FrameCache
from retrieval_pretrain.stage1.training_set import train_loader, training_entries


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
    for name, params, lr in (("clip", clip_params, cfg.pretrain.clip_lr), ("new", new_params, cfg.pretrain.lr)):
        decay = [p for p in params if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
        groups.append({"params": decay, "lr": lr, "weight_decay": cfg.pretrain.weight_decay, "name": name})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98), eps=1e-6)


@dataclass
class Stage1:
    """Everything one stage-1 run trains with (built by ``setup``)."""

    accelerator: Accelerator
    model: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: Any
    loss_fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    videos: int
    skipped: int
    total_steps: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    interp: InterpolationRegulariser | None = None  # pretrain.interpolation (Open-VCLIP)
    swa: WeightAverage | None = None  # pretrain.swa
    distill: MomentumDistiller | None = None  # pretrain.distill (CLIP2TV)
    channels_last: bool = False  # run.channels_last


def _select_videos(cfg: RetrievalConfig, output: Path, main: bool) -> tuple[list[Any], int]:
    """The training entries with files; malformed entries and missing files listed in skipped.json."""
    ann = load_annotations(cfg.data)
    entries, skipped = training_entries(ann, cfg)
    if main:  # written every run (empty lists when nothing was skipped): `vcap pretrain` reads it
        write_json(output / "skipped.json", {"annotation_problems": [vars(q) for q in ann.problems],
                                             "missing_videos": skipped})
    if ann.problems or skipped:
        print(f"warning: skipping {len(ann.problems)} malformed annotation entries and {len(skipped)} "
              f"missing videos (listed in {output / 'skipped.json'})", file=sys.stderr)
    if len(entries) < 2:
        raise DatasetError(f"{cfg.data.annotations}: stage 1 needs at least 2 training videos with files, "
                           f"found {len(entries)}")
    return entries, len(skipped)


def _frozen_image_tower(model: torch.nn.Module, accelerator: Accelerator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Prompt tuning's one pass of the frozen image tower over the training frames: on the
    accelerator's device, in eval mode (a ResNet tower's batch norm uses its running statistics,
    as at inference), under the run's mixed precision, without gradients."""
    model.to(accelerator.device)

    def encode(frames: torch.Tensor) -> torch.Tensor:
        visual = model.clip.visual
        was_training = visual.training
        visual.eval()
        try:
            with torch.no_grad(), accelerator.autocast():
                return model.clip.encode_image(frames.to(accelerator.device))
        finally:
            visual.train(was_training)

    return encode


def setup(cfg: RetrievalConfig, output: Path, accelerator: Accelerator, resume: bool = False) -> Stage1:
    """Data, model (from its parts), optimizer and schedule, prepared by Accelerate."""
    main = accelerator.is_main_process
    check_training_choices(cfg)
    if cfg.pretrain.batch_size * accelerator.num_processes < 2:
        raise ConfigError(f"pretrain.batch_size={cfg.pretrain.batch_size} on {accelerator.num_processes} process: a "
                          "contrastive step needs at least 2 videos, so every step would be skipped")
    # a Hub id (foundation.hub) is fetched before the run folder is claimed: one that cannot be had leaves nothing
    init_from = resolve_model_folder(cfg.pretrain.init_from, "pretrain.init_from") if cfg.pretrain.init_from else None
    claim(output, "pretrain", cfg, resume, accelerator)
    if main:
        write_json(output / "config.json", config_to_dict(cfg))
    entries, skipped = _select_videos(cfg, output, main)
    model = build_video_text_model(cfg)
    if init_from is not None:
        init_weights_from(model, init_from)
    model = build_training_mode(cfg, model)
    encode = _frozen_image_tower(model, accelerator) if cfg.pretrain.mode == "prompt" else None
    loader, sampler = train_loader(entries, cfg, model, build_tokenizer(cfg), main, encode)
    optimizer = _optimizer(model, cfg)
    p = cfg.pretrain
    total = steps_per_epoch(len(entries), p.batch_size, p.grad_accum, accelerator.num_processes) * p.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, *scheduler_length(total, p.warmup_ratio, accelerator))
    i = cfg.pretrain.interpolation  # its default base: the weights this run starts from, kept now
    start = {n: q.detach().clone() for n, q in model.named_parameters()} if i.enabled and not i.base else {}
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    run = Stage1(accelerator, model, optimizer, scheduler, loader, sampler, build_loss(cfg), len(entries),
                 skipped, total, channels_last=cfg.run.channels_last)
    _open_vclip_parts(run, cfg, start)
    return run


def _open_vclip_parts(run: Stage1, cfg: RetrievalConfig, start: dict[str, torch.Tensor]) -> None:
    """The interpolation regulariser and the weight average, when the config asks for them; both
    are registered for checkpointing (in this order), so a resumed run continues them exactly."""
    acc, p = run.accelerator, cfg.pretrain
    if p.interpolation.enabled:
        i = p.interpolation
        base = load_base(i.base, acc.unwrap_model(run.model), "pretrain.interpolation.base") if i.base else start
        run.interp = InterpolationRegulariser(acc.unwrap_model(run.model), base, i.low, i.high, i.weight, cfg.run.seed)
        acc.register_for_checkpointing(run.interp)
    if p.swa.enabled:
        run.swa = WeightAverage(p.swa.start_epoch)
        acc.register_for_checkpointing(run.swa)
    if p.distill.enabled:
        inner = acc.unwrap_model(run.model)
        if scores_pairwise(inner):
            raise ConfigError("pretrain.distill needs a model that embeds videos and captions apart; this one scores "
                              "pairs (X-CLIP, tightTransf), so there is nothing to queue")
        if acc.num_processes > 1:
            raise ConfigError("pretrain.distill runs on one process (its queues and teacher are not shared "
                              "across processes); launch without several processes")
        d = p.distill
        run.distill = MomentumDistiller(inner, d.momentum, d.queue_size, d.alpha, inner.embed_dim)
        acc.register_for_checkpointing(run.distill)


def _resume(run: Stage1, output: Path) -> tuple[int, int, int]:
    """``(epoch, batches done in it, global step)`` of the newest checkpoint, or zeros."""
    state = load_checkpoint(run.accelerator, output)
    if state is None:
        return 0, 0, 0
    run.failures = [tuple(f) for f in state.get("failures", [])]  # unreadable videos met before the checkpoint
    return state["epoch"], state["batches_done"], state["global_step"]


def channels_last_frames(frames: torch.Tensor) -> torch.Tensor:
    """The same (B, T, 3, H, W) frames stored channels-last (each pixel's 3 values together), so
    that the image tower's (B*T, 3, H, W) view of them is ``torch.channels_last``, which oneDNN's
    convolutions run faster on a CPU; their layers' outputs keep the layout. Cached features
    (B, T, D) are returned as they are."""
    if frames.dim() != 5:
        return frames
    return frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _step(run: Stage1, batch: dict[str, Any], max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward/backward (an optimizer step when accumulation is complete); returns the loss and
    the temperature the loss used."""
    acc = run.accelerator
    frames = channels_last_frames(batch["frames"]) if run.channels_last else batch["frames"]
    with acc.accumulate(run.model):
        if run.interp is not None:  # first, so the ordinary backward all-reduces both gradients
            run.interp.backward(acc, run.model, lambda: run.loss_fn(run.model(
                frames=frames, mask=batch["mask"], tokens=batch["tokens"]), batch["tokens"]))
        out = run.model(frames=frames, mask=batch["mask"], tokens=batch["tokens"])
        if run.distill is not None:  # soft targets from the EMA teacher, queued negatives
            loss = run.distill.loss(out, frames, batch["mask"], batch["tokens"], batch["video_ids"])
        else:
            loss = run.loss_fn(out, batch["tokens"])
        acc.backward(loss)
        if acc.sync_gradients and max_grad_norm > 0:
            acc.clip_grad_norm_(run.model.parameters(), max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
        if run.distill is not None and acc.sync_gradients:
            run.distill.update_teacher(acc.unwrap_model(run.model))
    return loss, out["logit_scale"].detach()


def _log_record(run: Stage1, loss: torch.Tensor, scale: torch.Tensor, step: int, epoch: int, timer: StepTimer,
                seen: int, t0: float) -> dict[str, Any]:
    data_s, compute_s = timer.reset()
    lrs = dict(zip([g.get("name") for g in run.optimizer.param_groups], run.scheduler.get_last_lr()))
    interp = {"loss_interp": run.interp.last_loss} if run.interp is not None else {}
    return {"step": step, "epoch": epoch, "loss": mean_over_processes(run.accelerator, loss), "lr_new": lrs.get("new", 0.0), "lr_clip": lrs.get("clip", 0.0),
            "logit_scale": float(scale), "data_s": round(data_s, 4), "compute_s": round(compute_s, 4),
            "videos_per_s": round(seen / max(time.perf_counter() - t0, 1e-9), 3), **interp}


def _note_failures(run: Stage1, batch: dict[str, Any]) -> None:
    for _, reason in batch["failures"]:
        print(f"warning: skipped unreadable video {reason}", file=sys.stderr)
    run.failures.extend(batch["failures"])


def _all_failures(run: Stage1) -> list[tuple[str, str]]:
    """Every process's unreadable videos, each once (a bad video fails again every epoch)."""
    found = run.failures if run.accelerator.num_processes == 1 else gather_object(list(run.failures))
    return list({path: (path, reason) for path, reason in found}.values())


def _finish(run: Stage1, cfg: RetrievalConfig, output: Path, step: int, seconds: float) -> Path:
    """Write the model folder (and failures.json, every process's); returns the folder."""
    acc = run.accelerator
    acc.wait_for_everyone()
    model_dir = output / "model"
    run.failures = _all_failures(run)
    if acc.is_main_process:
        write_json(output / "failures.json", [{"path": p, "reason": r} for p, r in run.failures])
        if run.failures:
            print(f"warning: {len(run.failures)} unreadable videos were skipped (listed in "
                  f"{output / 'failures.json'})", file=sys.stderr)
        model = acc.unwrap_model(run.model)
        spec = replace(model.spec, trained_on={"annotations": cfg.data.annotations, "split": cfg.data.train_split,
                                               "videos": run.videos, "steps": step})
        if run.swa is not None:  # the last epoch's weights beside the average, which becomes the model
            save_pretrained(model, output / "model_last", spec)
            model.load_state_dict(run.swa.averaged(model), strict=True)
            spec = replace(spec, swa=SwaRecord(run.swa.start_epoch, run.swa.count))
        save_pretrained(model, model_dir, spec)
        print(f"stage 1 done: {step} steps on {run.videos} videos ({run.skipped} skipped, {len(run.failures)} "
              f"unreadable) in {seconds:.0f} s; model in {model_dir}", file=sys.stderr)
    acc.wait_for_everyone()
    return model_dir


def train(cfg: RetrievalConfig, output: Path, resume: bool = False, keep_frames: list[FrameCache] | None = None
          ) -> Path:
    """Run stage 1 and write ``output/model``; returns that folder. The folder is locked while it runs.
    ``keep_frames``: a list the training videos' decoded frames (``video.cache_frames``' ``FrameCache``)
    are appended to, for feature extraction to read instead of decoding them again (``vcap demo``)."""
    check_batch_memory(cfg.video.num_frames, configured_image_size(cfg.clip), cfg.pretrain.batch_size,
                       "pretrain.batch_size", "video.num_frames")  # before any folder, download or video
    acc = make_accelerator(cfg.run.mixed_precision, cfg.pretrain.grad_accum, cfg.run.device, cfg.run.seed)
    with folder_lock(output, "vcap pretrain", acc):
        return _train(cfg, Path(output), acc, resume, keep_frames)


def _train(cfg: RetrievalConfig, output: Path, acc: Accelerator, resume: bool,
           keep_frames: list[FrameCache] | None = None) -> Path:
    p = cfg.pretrain
    run = setup(cfg, output, acc, resume)
    cache = getattr(getattr(run.loader, "dataset", None), "cache", None)
    if keep_frames is not None and isinstance(cache, FrameCache):
        keep_frames.append(cache)
    start_epoch, skip, step = _resume(run, output) if resume else (0, 0, 0)
    log, timer, t0, seen = JsonlLogger(output / "log.jsonl", enabled=acc.is_main_process), StepTimer(), time.perf_counter(), 0
    bar = tqdm(total=run.total_steps, initial=step, desc="stage 1", disable=not acc.is_main_process, file=sys.stderr)
    try:  # the bar is closed before an error reaches the user, so the error line is last
        for epoch in range(start_epoch, p.epochs):
            run.sampler.use_epoch(epoch)
            run.model.train()
            batches_done, batches = skip, epoch_batches(acc, run.loader, skip)
            skip = 0
            timer.restart()  # not reset: the last epoch's steps after its last record go in the next
            for batch in batches:
                timer.data_ready()
                batches_done += 1
                _note_failures(run, batch)
                if not _enough_to_contrast(acc, batch["frames"].shape[0]):
                    continue
                loss, scale = _step(run, batch, p.max_grad_norm)
                stop_if_diverged(acc, loss, step + 1, epoch, output)
                seen += batch["frames"].shape[0]
                timer.step_done()
                if not acc.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
                if step % cfg.run.log_every == 0 or step == 1:
                    log.log(**_log_record(run, loss, scale, step, epoch, timer, seen, t0))
                if p.save_every > 0 and step % p.save_every == 0:
                    save_checkpoint(acc, output, step, {"epoch": epoch, "batches_done": batches_done,
                                                        "log_lines": log.lines, "failures": _all_failures(run)},
                                    keep=p.keep_checkpoints)
            if run.swa is not None:
                run.swa.update(acc.unwrap_model(run.model), epoch)
    finally:
        bar.close()
    return _finish(run, cfg, output, step, time.perf_counter() - t0)
