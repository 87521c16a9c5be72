"""What one stage-2 run trains with: the videos that have cached features, the tokenizer (trained
on the training captions, given, or kept from ``--init-from``), the caption model, the loaders,
AdamW and the linear schedule - model, optimizer, schedule and training loader prepared by
Accelerate; the val split kept as pairs that each process validates its share of (``setup``)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from caption.config import Config
from caption.data import CaptionPairs, VideoFeatures, collate_pairs, collate_videos
from caption.pipeline import TOWER_DIR, load_caption_model
from caption.scst import Rewarder
from caption.tokenizer import CaptionTokenizer, normalize_caption
from decoders.model import CaptionModel, CaptionModelConfig, caption_model_config
from retrieval_pretrain.foundation.accelerate_setup import scheduler_length
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError, FeatureStoreError
from retrieval_pretrain.foundation.run_folder import claim
from retrieval_pretrain.foundation.typed_config import config_to_dict
from retrieval_pretrain.modeling.model_folder import model_fingerprint
from retrieval_pretrain.reading.annotation_table import near_misses, splits_found
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.features import FeatureStore
from retrieval_pretrain.stage1.data import EpochShuffleSampler


@dataclass
class ValSplit:
    """The val split as validation reads it: its entries and tokenised (video, caption) pairs."""

    entries: list[Any]
    pairs: list[tuple[str, list[int]]]
    store: FeatureStore
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    batch_size: int  # teacher-forced pairs per batch (caption.eval_batch_size)
    max_frames: int


@dataclass
class Stage2:
    """Everything one stage-2 run trains with (built by ``setup``)."""

    accelerator: Accelerator
    model: torch.nn.Module  # the CaptionModel as Accelerate prepared it (DDP-wrapped with several processes)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    sampler: EpochShuffleSampler
    val: ValSplit | None  # None without a val split
    tokenizer: CaptionTokenizer
    tokenizer_path: Path
    tower: Path  # the stage-1 model folder the features came from
    total_steps: int
    best: dict[str, Any] = field(default_factory=lambda: {"score": None, "epoch": -1})
    rewarder: Rewarder | None = None  # caption.objective=scst: the reward of sampled captions
    scst_signal: float = 0.0  # SCST: the epoch's largest |reward - baseline| so far (0: nothing learned)


def _tokenizer(cfg: Config, output: Path, init_from: Path | None, train_captions: list[str],
               accelerator: Accelerator) -> tuple[CaptionTokenizer, Path]:
    """The fine-tuned model's tokenizer, a given one, or a new one trained on the training captions."""
    if init_from is not None:
        path = init_from / CaptionTokenizer.FILENAME
    elif cfg.caption.tokenizer:
        path = Path(cfg.caption.tokenizer)
    else:
        path = output / CaptionTokenizer.FILENAME
        if accelerator.is_main_process and not path.is_file():
            CaptionTokenizer.train(train_captions, cfg.caption.vocab_size, path)
        accelerator.wait_for_everyone()
    return CaptionTokenizer.load(path), path


def _entries_with_features(cfg: Config, store: FeatureStore, output: Path, main: bool) -> tuple[list[Any], list[Any]]:
    """Train and val entries that have cached features; the others are named in skipped.json."""
    ann = load_annotations(cfg.data)
    train, val = ann.split(cfg.data.train_split), ann.split(cfg.data.val_split)
    if not train:
        raise DatasetError(f"{cfg.data.annotations}: no videos in split '{cfg.data.train_split}' (data.train_split; "
                           f"{splits_found(ann, cfg.data.train_split)})")
    if not val and main and near_misses(cfg.data.val_split, ann.splits()):
        print(f"warning: no videos in split '{cfg.data.val_split}' (data.val_split): training without validation "
              f"({splits_found(ann, cfg.data.val_split)})", file=sys.stderr)
    no_feats = [e.video_id for e in train + val if not store.has(e.video_id)]
    bad = {e.video_id: why for e in train + val if store.has(e.video_id) and (why := store.problem(e.video_id))}
    if main:  # written every run (empty lists when nothing was skipped): `vcap train` reads it
        write_json(output / "skipped.json", {"no_features": no_feats, "bad_features": [
            {"video_id": v, "reason": why} for v, why in bad.items()],
            "annotation_problems": [vars(q) for q in ann.problems]})
    for why in bad.values():
        print(f"warning: left out: {why}", file=sys.stderr)
    if no_feats:
        print(f"warning: {len(no_feats)} videos have no cached features and are left out (e.g. "
              f"{', '.join(no_feats[:5])}; all in {output / 'skipped.json'}; why extraction failed: "
              f"{store.folder / 'failures.json'})", file=sys.stderr)
    train = [e for e in train if store.has(e.video_id) and e.video_id not in bad]
    if not train:
        raise DatasetError(f"{cfg.data.annotations}: no video of split '{cfg.data.train_split}' has features "
                           f"in {store.folder}")
    return train, [e for e in val if store.has(e.video_id) and e.video_id not in bad]


def _model(cfg: Config, meta: dict[str, Any], tokenizer: CaptionTokenizer, init_from: Path | None,
           features: Path) -> CaptionModel:
    tower_info = {"fingerprint": meta["tower_fingerprint"], "source": meta["tower"],
                  "num_frames": meta["num_frames"], "dim": meta["dim"]}
    # The model's settings are the caption section's, by name; its vocabulary is the tokenizer's real size.
    settings = dataclasses.replace(cfg.caption.model_settings(), vocab_size=tokenizer.vocab_size)
    if init_from is None:
        return CaptionModel(caption_model_config(
            settings, meta["dim"], pad_token_id=tokenizer.PAD, bos_token_id=tokenizer.BOS,
            eos_token_id=tokenizer.EOS, video_tower=tower_info, decode=cfg.decode))
    model = load_caption_model(init_from)
    if model.config.feature_dim != meta["dim"]:
        raise FeatureStoreError(f"{init_from} expects {model.config.feature_dim}-d features, {features} holds "
                                f"{meta['dim']}-d")
    have = model.config.settings
    differ = [f.name for f in dataclasses.fields(settings) if getattr(have, f.name) != getattr(settings, f.name)]
    if differ:  # the model would keep its own, while run.json and config.json recorded the config's
        raise ConfigError(f"--init-from {init_from}: its architecture differs from the config's caption section ("
                          + "; ".join(f"caption.{k}: the model's {getattr(have, k)!r}, the config's "
                                      f"{getattr(settings, k)!r}" for k in differ)
                          + "); set the caption.* values to the model's, or train without --init-from")
    model.config.video_tower, model.config.decode = tower_info, dataclasses.asdict(cfg.decode)
    return model


def _optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.caption.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.caption.lr, betas=(0.9, 0.98))


def check_init_from(init_from: Path) -> None:
    """``--init-from`` must be a caption model folder (``RUN2/model``), not a run folder, a stage-1
    model or a missing path."""
    config = Path(init_from) / "config.json"
    kind = None
    if config.is_file():
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("model_type") or "a stage-1 model"
        except (ValueError, UnicodeDecodeError, AttributeError):
            kind = "unreadable"
    if kind == CaptionModelConfig.model_type:
        return
    hint = f" (did you mean {Path(init_from) / 'model'}?)" if (Path(init_from) / "model" / "config.json").is_file() else ""
    what = ("does not exist" if not Path(init_from).exists() else "has no config.json" if kind is None
            else f"holds {kind}, not a caption model" if kind != "unreadable" else "has an unreadable config.json")
    raise ConfigError(f"--init-from {init_from} {what}; give a caption model folder (RUN2/model){hint}")


def tower_folder(meta: dict[str, Any], features: Path, init_from: Path | None) -> Path:
    """The stage-1 model the features came from (copied into the caption model folder at the end):
    the folder ``meta.json`` names, or else the ``video_tower/`` of ``--init-from`` when it is the
    same tower (same fingerprint). Checked before training, not after it."""
    named = Path(meta["tower"])
    if named.is_dir():
        return named
    if init_from is not None and (Path(init_from) / TOWER_DIR).is_dir():
        copy = Path(init_from) / TOWER_DIR
        if model_fingerprint(copy) == meta.get("tower_fingerprint"):
            return copy
    raise FeatureStoreError(f"{features}: the stage-1 model these features came from, {named}, is gone; the "
                            "caption model folder must include it - restore it, or extract the features again "
                            "with the model you have")


def setup(cfg: Config, features: Path, output: Path, accelerator: Accelerator, init_from: Path | None,
          resume: bool = False) -> Stage2:
    c, main = cfg.caption, accelerator.is_main_process
    store = FeatureStore(features)
    meta = store.meta()  # not a feature folder: an error before anything is written
    if init_from is not None:
        check_init_from(init_from)
    tower = tower_folder(meta, Path(features), init_from)
    if c.objective == "scst":
        if c.select_by == "loss":
            raise ConfigError("caption.select_by=loss ranks epochs by cross-entropy, which SCST does not minimise "
                              "(it rises as CIDEr does); use caption.select_by=CIDEr or last with "
                              "caption.objective=scst")
        if init_from is None and main:
            print("warning: SCST from randomly initialised weights: its samples are noise and their rewards near 0; "
                  "train with cross-entropy first and pass --init-from RUN2/model", file=sys.stderr)
    inputs = {"features": str(Path(features).resolve()), "features_tower": meta["tower_fingerprint"],
              "init_from": str(Path(init_from).resolve()) if init_from else ""}
    claim(output, "train", cfg, resume, accelerator, inputs)
    if main:
        write_json(output / "config.json", config_to_dict(cfg))
    train_entries, val_entries = _entries_with_features(cfg, store, output, main)
    captions = [normalize_caption(cap) for e in train_entries for cap in e.captions]
    tokenizer, tok_path = _tokenizer(cfg, output, init_from, captions, accelerator)
    model = _model(cfg, meta, tokenizer, init_from, features)

    def pairs(entries: list[Any]) -> list[tuple[str, list[int]]]:
        return [(e.video_id, tokenizer.encode(normalize_caption(cap), c.max_length)) for e in entries
                for cap in e.captions]

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_pairs(items, tokenizer.PAD)

    if c.objective == "scst":  # every training video once per epoch, its captions as the reward's references
        train_set, train_collate = VideoFeatures(store, [e.video_id for e in train_entries], c.max_frames), collate_videos
    else:
        train_set, train_collate = CaptionPairs(store, pairs(train_entries), c.max_frames), collate
    sampler = EpochShuffleSampler(len(train_set), seed=cfg.run.seed)
    loader = DataLoader(train_set, batch_size=c.batch_size, sampler=sampler, collate_fn=train_collate,
                        num_workers=cfg.run.num_workers)
    val_videos = val_entries[: c.val_max_videos] if c.val_max_videos > 0 else val_entries
    val = ValSplit(val_videos, pairs(val_videos), store, collate, c.eval_batch_size, c.max_frames) if val_videos else None
    optimizer = _optimizer(model, cfg)
    per_epoch = max(1, math.ceil(math.ceil(len(train_set) / (c.batch_size * accelerator.num_processes)) / c.grad_accum))
    total = per_epoch * c.epochs  # optimizer steps of this run
    scheduler = get_linear_schedule_with_warmup(optimizer, *scheduler_length(total, c.warmup_ratio, accelerator))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    rewarder = None
    if c.objective == "scst":
        rewarder = Rewarder(cfg, train_entries, tower, accelerator.device)
    return Stage2(accelerator, model, optimizer, scheduler, loader, sampler, val, tokenizer, tok_path,
                  tower, total, rewarder=rewarder)
