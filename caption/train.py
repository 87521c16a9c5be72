"""Stage 2: train the caption model on cached video features (CLIP4Caption, Tang et al. 2021).

Teacher forcing with label-smoothed cross-entropy, AdamW, linear warm-up then linear decay,
gradient clipping, bf16/fp16 via Accelerate (``accelerate launch`` for several GPUs). After each
epoch: validation loss and CIDEr with the configured decoding; the best epoch (by ``caption.select_by``:
val CIDEr, as CLIP4Caption, val loss, or simply the last) becomes
``RUN2/model``, a self-contained caption model folder (model, ``tokenizer.model``, and the stage-1
``video_tower/`` the features came from).

``vcap train --config C --features FEATS --output RUN2 [--resume] [--init-from DIR]``
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from caption.config import Config
from caption.data import CaptionPairs, collate_pairs
from caption.evaluate import caption_features
from caption.metrics import score_captions
from caption.pipeline import TOWER_DIR
from caption.tokenizer import CaptionTokenizer, normalize_caption
from decoders.loss import caption_loss
from decoders.model import CaptionModel, make_config
from retrieval_pretrain.annotations import load_annotations
from retrieval_pretrain.config import config_to_dict
from retrieval_pretrain.data import EpochShuffleSampler
from retrieval_pretrain.features import FeatureStore
from retrieval_pretrain.runtime import (
    JsonlLogger,
    StepTimer,
    atomic_write_json,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    scheduler_length,
)


def _tokenizer(cfg: Config, output: Path, init_from: Path | None, train_captions: list[str], main: bool,
               accelerator: Any) -> CaptionTokenizer:
    """The fine-tuned model's tokenizer, a given one, or a new one trained on the training captions."""
    if init_from is not None:
        return CaptionTokenizer.load(init_from / CaptionTokenizer.FILENAME)
    if cfg.caption.tokenizer:
        return CaptionTokenizer.load(cfg.caption.tokenizer)
    path = output / CaptionTokenizer.FILENAME
    if main and not path.is_file():
        CaptionTokenizer.train(train_captions, cfg.caption.vocab_size, path)
    accelerator.wait_for_everyone()
    return CaptionTokenizer.load(path)


def _save_model(model: CaptionModel, tokenizer_path: Path, folder: Path) -> None:
    """Write a caption model folder atomically (temporary folder, then rename)."""
    tmp = folder.with_name(f".tmp_{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copy2(tokenizer_path, tmp / CaptionTokenizer.FILENAME)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _finalise(best: Path, tower: Path, final: Path) -> None:
    """``RUN2/model`` = best checkpoint + a copy of the stage-1 tower (so captioning needs nothing else)."""
    tmp = final.with_name(f".tmp_{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best, tmp)
    shutil.copytree(tower, tmp / TOWER_DIR)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


@torch.no_grad()
def validation_loss(model: Any, loader: DataLoader, label_smoothing: float, pad_id: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for batch in loader:
        logits = model(frame_features=batch["frame_features"], frame_mask=batch["frame_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits
        total += caption_loss(logits, batch["labels"], label_smoothing, pad_id).item() * len(batch["labels"])
        n += len(batch["labels"])
    return total / max(n, 1)


SELECT_BY = ("CIDEr", "loss", "last")


def _selection_score(select_by: str, record: dict[str, Any], epoch: int) -> float:
    """Higher is better: val CIDEr, minus the val loss, or the epoch (``last``; also without a val split)."""
    if select_by == "CIDEr" and "val_CIDEr" in record:
        return float(record["val_CIDEr"])
    if select_by == "loss" and "val_loss" in record:
        return -float(record["val_loss"])
    return float(epoch)


def train(cfg: Config, features: Path, output: Path, resume: bool = False, init_from: Path | None = None,
          max_steps: int | None = None) -> Path:
    """Train stage 2; returns ``output/model``. ``max_steps`` stops early (tests of resuming)."""
    c = cfg.caption
    if c.select_by not in SELECT_BY:
        raise ValueError(f"caption.select_by must be one of {', '.join(SELECT_BY)}, got {c.select_by!r}")
    output = Path(output)
    accelerator = make_accelerator(cfg.run.mixed_precision, c.grad_accum, cfg.run.device, cfg.run.seed)
    main = accelerator.is_main_process
    if main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output / "config.json", config_to_dict(cfg))
    store = FeatureStore(features)
    meta = store.meta()
    ann = load_annotations(cfg.data)
    train_entries = ann.split(cfg.data.train_split)
    val_entries = ann.split(cfg.data.val_split)
    no_feats = [e.video_id for e in train_entries + val_entries if not store.has(e.video_id)]
    if no_feats:
        print(f"warning: {len(no_feats)} videos have no cached features and are left out "
              f"(e.g. {', '.join(no_feats[:5])}); see {store.folder / 'failures.json'}", file=sys.stderr)
        if main:
            atomic_write_json(output / "skipped.json", {"no_features": no_feats,
                                                        "annotation_problems": [vars(q) for q in ann.problems]})
    train_entries = [e for e in train_entries if store.has(e.video_id)]
    val_entries = [e for e in val_entries if store.has(e.video_id)]
    if not train_entries:
        raise ValueError(f"no training videos with features: split '{cfg.data.train_split}' in {features}")

    train_captions = [normalize_caption(cap) for e in train_entries for cap in e.captions]
    tokenizer = _tokenizer(cfg, output, init_from, train_captions, main, accelerator)
    tok_path = (init_from / CaptionTokenizer.FILENAME if init_from else
                Path(cfg.caption.tokenizer) if cfg.caption.tokenizer else output / CaptionTokenizer.FILENAME)
    tower_info = {"fingerprint": meta["tower_fingerprint"], "source": meta["tower"],
                  "num_frames": meta["num_frames"], "dim": meta["dim"]}
    decode = {"num_beams": cfg.decode.num_beams, "max_new_tokens": cfg.decode.max_new_tokens,
              "length_penalty": cfg.decode.length_penalty, "no_repeat_ngram_size": cfg.decode.no_repeat_ngram_size}
    if init_from is not None:
        model = CaptionModel.from_pretrained(init_from)
        if model.config.feature_dim != meta["dim"]:
            raise ValueError(f"{init_from} expects {model.config.feature_dim}-d features, {features} holds {meta['dim']}-d")
        model.config.video_tower, model.config.decode = tower_info, decode
    else:
        model = CaptionModel(make_config(
            feature_dim=meta["dim"], vocab_size=tokenizer.vocab_size, hidden_size=c.hidden_size,
            num_heads=c.num_heads, ffn_size=c.ffn_size, encoder_layers=c.encoder_layers,
            decoder_layers=c.decoder_layers, dropout=c.dropout, max_frames=c.max_frames, max_length=c.max_length,
            pad_token_id=tokenizer.PAD, bos_token_id=tokenizer.BOS, eos_token_id=tokenizer.EOS,
            video_tower=tower_info, decode=decode))

    def pairs(entries: list[Any]) -> list[tuple[str, list[int]]]:
        return [(e.video_id, tokenizer.encode(normalize_caption(cap), c.max_length)) for e in entries for cap in e.captions]

    train_set = CaptionPairs(store, pairs(train_entries), c.max_frames)
    sampler = EpochShuffleSampler(len(train_set), seed=cfg.run.seed)
    collate = lambda items: collate_pairs(items, tokenizer.PAD)  # noqa: E731
    loader = DataLoader(train_set, batch_size=c.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.run.num_workers)
    val_videos = val_entries[: c.val_max_videos] if c.val_max_videos > 0 else val_entries
    val_loader = DataLoader(CaptionPairs(store, pairs(val_videos), c.max_frames), batch_size=c.eval_batch_size,
                            collate_fn=collate) if val_videos else None
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, betas=(0.9, 0.98))
    per_epoch = max(1, math.ceil(math.ceil(len(train_set) / (c.batch_size * accelerator.num_processes)) / c.grad_accum))
    total = per_epoch * c.epochs  # optimizer steps of this run
    scheduler = get_linear_schedule_with_warmup(optimizer, *scheduler_length(total, c.warmup_ratio, accelerator))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    start_epoch, skip, global_step, best = 0, 0, 0, {"score": None, "epoch": -1}
    if resume:
        state = load_checkpoint(accelerator, output)
        if state is not None:
            start_epoch, skip, global_step = state["epoch"], state["batches_done"], state["global_step"]
            best = {"score": state["best"].get("score", state["best"].get("cider")), "epoch": state["best"]["epoch"]}
    log = JsonlLogger(output / "log.jsonl", enabled=main)
    timer = StepTimer()
    bar = tqdm(total=total, initial=global_step, desc="stage 2", disable=not main, file=sys.stderr)
    t0, stop = time.perf_counter(), False
    for epoch in range(start_epoch, c.epochs):
        sampler.use_epoch(epoch)
        model.train()
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        batches_done, skip = skip, 0
        timer.reset()
        for batch in batches:
            timer.data_ready()
            batches_done += 1
            with accelerator.accumulate(model):
                logits = model(frame_features=batch["frame_features"], frame_mask=batch["frame_mask"],
                               decoder_input_ids=batch["decoder_input_ids"]).logits  # (B, L, V)
                loss = caption_loss(logits, batch["labels"], c.label_smoothing, tokenizer.PAD)
                accelerator.backward(loss)
                if accelerator.sync_gradients and c.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), c.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            timer.step_done()
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            if global_step % cfg.run.log_every == 0 or global_step == 1:
                data_s, compute_s = timer.reset()
                log.log(step=global_step, epoch=epoch, loss=loss.item(), lr=scheduler.get_last_lr()[0],
                        data_s=round(data_s, 4), compute_s=round(compute_s, 4),
                        steps_per_s=round(global_step / max(time.perf_counter() - t0, 1e-9), 3))
            if c.save_every > 0 and global_step % c.save_every == 0:
                save_checkpoint(accelerator, output, global_step, {"epoch": epoch, "batches_done": batches_done, "best": best})
            if max_steps is not None and global_step >= max_steps:
                stop = True
                break
        if stop:
            save_checkpoint(accelerator, output, global_step, {"epoch": epoch, "batches_done": batches_done, "best": best})
            bar.close()
            return output / "checkpoints"
        # ---- end of epoch: validation loss and CIDEr; keep the best epoch by c.select_by
        if main:
            record: dict[str, Any] = {"epoch": epoch, "step": global_step}
            unwrapped = accelerator.unwrap_model(model)
            if val_loader is not None:
                record["val_loss"] = round(validation_loss(unwrapped, val_loader, c.label_smoothing, tokenizer.PAD), 5)
                preds = caption_features(unwrapped, tokenizer, store, [e.video_id for e in val_videos], cfg.decode,
                                         accelerator.device, progress=False)
                refs = {e.video_id: [normalize_caption(x) for x in e.captions] for e in val_videos}
                record["val_CIDEr"] = round(score_captions(preds, refs, metrics=("CIDEr",))["CIDEr"], 5)
            score = _selection_score(c.select_by, record, epoch)
            if best["score"] is None or score > best["score"]:
                best = {"score": score, "epoch": epoch}
                _save_model(unwrapped, tok_path, output / "best")
            record["best_epoch"] = best["epoch"]
            log.log(**record)
            print(f"epoch {epoch}: {json.dumps(record)}", file=sys.stderr)
        accelerator.wait_for_everyone()
        save_checkpoint(accelerator, output, global_step, {"epoch": epoch + 1, "batches_done": 0, "best": best})
    bar.close()
    final = output / "model"
    if main:
        _finalise(output / "best", Path(meta["tower"]), final)
        print(f"stage 2 done in {time.perf_counter() - t0:.0f}s; best epoch {best['epoch']} "
              f"(selected by {c.select_by}); model in {final}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return final
