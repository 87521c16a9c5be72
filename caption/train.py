"""Stage 2: train the caption model on cached video features (CLIP4Caption, Tang et al. 2021).

Teacher forcing with label-smoothed cross-entropy, AdamW, linear warm-up then linear decay,
gradient clipping, bf16/fp16 via Accelerate (``accelerate launch`` for several GPUs). After each
epoch, on every process (its share of the val split; the shares' loss sums and captions combined):
validation loss and CIDEr with the configured decoding; the best epoch (by
``caption.select_by``: val CIDEr, as CLIP4Caption, val loss, or simply the last) becomes
``RUN2/model``, a self-contained caption model folder (model, ``tokenizer.model``, and the stage-1
``video_tower/`` the features came from).

``vcap train --config C --features FEATS --output RUN2 [--resume] [--init-from DIR]``
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from caption.config import Config
from caption.data import CaptionPairs
from caption.evaluate import caption_batches, feature_loader
from caption.metrics import score_captions
from caption.pipeline import TOWER_DIR
from caption.scst import scst_step_loss
from caption.tokenizer import CaptionTokenizer, normalize_caption
from caption.train_setup import Stage2, setup
from decoders.loss import caption_loss, caption_loss_sums
from decoders.model import CaptionModel
from retrieval_pretrain.foundation.accelerate_setup import make_accelerator, mean_over_processes
from retrieval_pretrain.foundation.atomic import write_folder
from retrieval_pretrain.foundation.checkpoints import epoch_batches, load_checkpoint, save_checkpoint, stop_if_diverged
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.foundation.run_log import JsonlLogger, StepTimer
from retrieval_pretrain.reading.features import FeatureStore


@torch.no_grad()
def loss_sums(model: CaptionModel, loader: DataLoader, label_smoothing: float, pad_id: int) -> tuple[float, float]:
    """``(sum of the token losses, number of tokens)`` over a loader of (video, caption) pairs."""
    model.eval()
    total, tokens = 0.0, 0.0
    for batch in loader:
        logits = model(frame_features=batch["frame_features"], frame_mask=batch["frame_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits
        sums, counts = caption_loss_sums(logits, batch["labels"], label_smoothing, pad_id)  # (B,), (B,)
        total += float(sums.double().sum())
        tokens += float(counts.sum())
    return total, tokens


def validation_loss(model: CaptionModel, loader: DataLoader, label_smoothing: float, pad_id: int) -> float:
    """Label-smoothed cross-entropy per non-pad token over the whole loader."""
    total, tokens = loss_sums(model, loader, label_smoothing, pad_id)
    return total / max(tokens, 1.0)


def validate(run: Stage2, cfg: Config) -> dict[str, float]:
    """``val_loss`` and ``val_CIDEr`` of the current weights. Every process validates its share of
    the val split (``split_between_processes``); the shares are combined (loss sums reduced,
    captions gathered), so every process gets the whole split's numbers."""
    val, acc = run.val, run.accelerator
    if val is None:
        return {}
    model = acc.unwrap_model(run.model)
    with acc.split_between_processes(val.pairs) as pairs:
        loader = DataLoader(CaptionPairs(val.store, pairs, val.max_frames), batch_size=val.batch_size,
                            collate_fn=val.collate)
        sums = torch.tensor(loss_sums(model, loader, cfg.caption.label_smoothing, run.tokenizer.PAD),
                            dtype=torch.float64, device=acc.device)
    total, tokens = acc.reduce(sums, reduction="sum").tolist()
    with acc.split_between_processes([e.video_id for e in val.entries]) as ids:
        loader = feature_loader(val.store, ids, model.config.max_frames, cfg.decode.batch_size)
        mine = caption_batches(model, run.tokenizer, loader, cfg.decode, acc.device, progress=False)
    preds = dict(gather_object(mine))
    refs = {e.video_id: [normalize_caption(x) for x in e.captions] for e in val.entries}
    return {"val_loss": round(total / max(tokens, 1.0), 5),
            "val_CIDEr": round(score_captions(preds, refs, metrics=("CIDEr",))["CIDEr"], 5)}


def _selection_score(select_by: str, record: dict[str, Any], epoch: int) -> float:
    """Higher is better: val CIDEr, minus the val loss, or the epoch (``last``; also without a val split)."""
    if select_by == "CIDEr" and "val_CIDEr" in record:
        return float(record["val_CIDEr"])
    if select_by == "loss" and "val_loss" in record:
        return -float(record["val_loss"])
    return float(epoch)


def save_caption_model(model: CaptionModel, tokenizer_path: Path, folder: Path, tower: Path | None = None) -> Path:
    """A caption model folder (``config.json``, ``model.safetensors``, ``tokenizer.model`` and, with
    ``tower``, a copy of the stage-1 model as ``video_tower/``), swapped in whole."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        shutil.copy2(tokenizer_path, tmp / CaptionTokenizer.FILENAME)
        if tower is not None:
            shutil.copytree(tower, tmp / TOWER_DIR)

    return write_folder(folder, fill)


def _end_of_epoch(run: Stage2, cfg: Config, output: Path, epoch: int, step: int, log: JsonlLogger) -> None:
    """Validate, keep the epoch if it is the best so far (``output/best``), log, checkpoint."""
    acc = run.accelerator
    if cfg.caption.objective == "scst" and run.scst_signal == 0 and acc.is_main_process:
        print(f"warning: SCST epoch {epoch}: every sampled caption had its baseline's reward, so the epoch learned "
              "nothing (weight decay aside). Causes: one training video or identical references (CIDEr-D's "
              "document frequencies are then 0), caption.scst.max_new_tokens too small, caption.scst.temperature "
              "too low (identical samples)", file=sys.stderr)
    run.scst_signal = 0.0
    record: dict[str, Any] = {"epoch": epoch, "step": step, **validate(run, cfg)}
    score = _selection_score(cfg.caption.select_by, record, epoch)
    if run.best["score"] is None or score > run.best["score"]:
        run.best = {"score": score, "epoch": epoch}
        if acc.is_main_process:
            save_caption_model(acc.unwrap_model(run.model), run.tokenizer_path, output / "best")
    record["best_epoch"] = run.best["epoch"]
    log.log(**record)
    if acc.is_main_process:
        print(f"epoch {epoch}: {json.dumps(record)}", file=sys.stderr)
    acc.wait_for_everyone()
    save_checkpoint(acc, output, step, {"epoch": epoch + 1, "batches_done": 0, "best": run.best, "log_lines": log.lines})


def _token_mean_loss(acc: Accelerator, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                     pad_id: int) -> torch.Tensor:
    """The loss per non-pad token of the *global* batch. Several processes: each returns its token
    losses' sum x processes / all processes' tokens, so DDP's gradient mean is the gradient of the
    global per-token mean, as one process with the whole batch computes (a per-process mean would
    weight a caption by its process's token count)."""
    if acc.num_processes == 1:
        return caption_loss(logits, labels, label_smoothing, pad_id)
    sums, counts = caption_loss_sums(logits, labels, label_smoothing, pad_id)  # (B,), (B,)
    tokens = acc.reduce(counts.sum().float().reshape(1), reduction="sum")
    return sums.sum() * acc.num_processes / tokens.clamp(min=1.0).squeeze(0)


def _step(run: Stage2, batch: dict[str, Any], cfg: Config) -> tuple[torch.Tensor, dict[str, Any]]:
    """One forward/backward (an optimizer step when accumulation is complete): teacher-forced
    cross-entropy, or SCST's policy gradient on sampled captions (``caption.scst``). Returns the
    loss and what the objective reports besides it (SCST: rewards and timings)."""
    acc, c = run.accelerator, cfg.caption
    extra: dict[str, Any] = {}
    with acc.accumulate(run.model):
        if c.objective == "scst":
            loss, stats = scst_step_loss(acc, run.model, batch, cfg, run.tokenizer, run.rewarder)
            extra = {k: round(v, 5) for k, v in vars(stats).items() if v is not None}
            run.scst_signal = max(run.scst_signal, stats.advantage_max)
        else:
            logits = run.model(frame_features=batch["frame_features"], frame_mask=batch["frame_mask"],
                               decoder_input_ids=batch["decoder_input_ids"]).logits  # (B, L, V)
            loss = _token_mean_loss(acc, logits, batch["labels"], c.label_smoothing, run.tokenizer.PAD)
        acc.backward(loss)
        if acc.sync_gradients and c.max_grad_norm > 0:
            acc.clip_grad_norm_(run.model.parameters(), c.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return loss, extra


def _resume(run: Stage2, output: Path) -> tuple[int, int, int]:
    """``(epoch, batches done in it, global step)`` of the newest checkpoint (and its best epoch), or zeros."""
    state = load_checkpoint(run.accelerator, output)
    if state is None:
        return 0, 0, 0
    run.best = dict(state["best"])
    return state["epoch"], state["batches_done"], state["global_step"]


def train(cfg: Config, features: Path, output: Path, resume: bool = False, init_from: Path | None = None) -> Path:
    """Train stage 2; returns ``output/model``. The folder is locked while it runs."""
    FeatureStore(features).meta()  # not a feature folder: refused before the output folder is made
    acc = make_accelerator(cfg.run.mixed_precision, cfg.caption.grad_accum, cfg.run.device, cfg.run.seed)
    with folder_lock(output, "vcap train", acc):
        return _train(cfg, Path(features), Path(output), acc, resume, init_from)


def _train(cfg: Config, features: Path, output: Path, acc: Accelerator, resume: bool, init_from: Path | None) -> Path:
    c = cfg.caption
    run = setup(cfg, features, output, acc, init_from, resume)
    start_epoch, skip, step = _resume(run, output) if resume else (0, 0, 0)
    log, timer, t0 = JsonlLogger(output / "log.jsonl", enabled=acc.is_main_process), StepTimer(), time.perf_counter()
    bar = tqdm(total=run.total_steps, initial=step, desc="stage 2", disable=not acc.is_main_process, file=sys.stderr)
    try:  # the bar is closed before an error reaches the user, so the error line is last
        for epoch in range(start_epoch, c.epochs):
            run.sampler.use_epoch(epoch)
            run.model.train()
            batches_done, batches = skip, epoch_batches(acc, run.loader, skip)
            skip = 0
            timer.restart()  # not reset: the last epoch's steps after its last record go in the next
            for batch in batches:
                timer.data_ready()
                batches_done += 1
                loss, extra = _step(run, batch, cfg)
                stop_if_diverged(acc, loss, step + 1, epoch, output)
                timer.step_done()
                if not acc.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
                if step % cfg.run.log_every == 0 or step == 1:
                    data_s, compute_s = timer.reset()
                    log.log(step=step, epoch=epoch, loss=mean_over_processes(acc, loss), lr=run.scheduler.get_last_lr()[0],
                            data_s=round(data_s, 4), compute_s=round(compute_s, 4),
                            steps_per_s=round(step / max(time.perf_counter() - t0, 1e-9), 3), **extra)
                if c.save_every > 0 and step % c.save_every == 0:
                    save_checkpoint(acc, output, step, {"epoch": epoch, "batches_done": batches_done, "best": run.best,
                                                        "log_lines": log.lines})
            _end_of_epoch(run, cfg, output, epoch, step, log)
    finally:
        bar.close()
    return _finish(run, cfg, output, time.perf_counter() - t0)


def _finish(run: Stage2, cfg: Config, output: Path, seconds: float) -> Path:
    """``RUN2/model`` = the best epoch's model + a copy of the stage-1 tower (captioning then needs
    nothing else)."""
    final = output / "model"
    if run.accelerator.is_main_process:
        best = output / "best"
        write_folder(final, lambda tmp: (shutil.copytree(best, tmp, dirs_exist_ok=True),
                                         shutil.copytree(run.tower, tmp / TOWER_DIR)))
        print(f"stage 2 done in {seconds:.0f}s; best epoch {run.best['epoch']} (selected by "
              f"{cfg.caption.select_by}); model in {final}", file=sys.stderr)
    run.accelerator.wait_for_everyone()
    return final
