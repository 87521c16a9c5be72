"""Caption a split and score it: ``vcap evaluate --model RUN2/model --config C [--features FEATS]``.

From cached features when ``--features`` is given (the stage-1 tower fingerprint must match the one
the caption model was trained on), otherwise from the video files through the whole pipeline.
Writes ``predictions.json`` ({video_id: caption}) and ``metrics.json`` (BLEU-1..4, METEOR,
ROUGE-L, CIDEr via pycocoevalcap with the PTB tokenizer, as the papers report them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from caption.config import Config
from caption.data import VideoFeatures, collate_videos
from caption.metrics import score_captions
from caption.pipeline import CaptionPipeline
from caption.tokenizer import CaptionTokenizer, normalize_caption
from decoders.config import DecodeConfig
from decoders.model import CaptionModel
from retrieval_pretrain.foundation.accelerate_setup import pick_device
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import DatasetError, FeatureMismatchError
from retrieval_pretrain.modeling.model_folder import warn_if_video_differs
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.features import FeatureStore
from retrieval_pretrain.stage1.evaluate import split_entries


def feature_loader(store: FeatureStore, video_ids: Sequence[str], max_frames: int, batch_size: int,
                   num_workers: int = 0) -> DataLoader:
    """Batches of cached features, one item per video, in order (for decoding)."""
    return DataLoader(VideoFeatures(store, video_ids, max_frames), batch_size=batch_size,
                      num_workers=num_workers, collate_fn=collate_videos)


@torch.no_grad()
def caption_batches(model: CaptionModel, tokenizer: CaptionTokenizer, loader: DataLoader, decode: DecodeConfig,
                    device: torch.device, progress: bool = True) -> list[tuple[str, str]]:
    """``[(video_id, caption)]`` by batched beam search over a ``feature_loader``, decoded by ``decode``."""
    model.eval()
    out: list[tuple[str, str]] = []
    for batch in tqdm(loader, desc="caption", file=sys.stderr, disable=not progress, unit="batch"):
        ids = model.generate_captions(batch["frame_features"].to(device), batch["frame_mask"].to(device), decode)
        out.extend(zip(batch["video_ids"], tokenizer.decode_batch(ids.tolist())))
    return out


def caption_features(model: CaptionModel, tokenizer: CaptionTokenizer, store: FeatureStore, video_ids: Sequence[str],
                     decode: DecodeConfig, device: torch.device, num_workers: int = 0,
                     progress: bool = True) -> dict[str, str]:
    """Batched beam-search captions for cached features: ``{video_id: caption}``."""
    loader = feature_loader(store, video_ids, model.config.max_frames, decode.batch_size, num_workers)
    return dict(caption_batches(model, tokenizer, loader, decode, device, progress))


def check_features_match(model: CaptionModel, store: FeatureStore) -> None:
    """Refuse features made by a video tower other than the one the caption model was trained on."""
    want = (model.config.video_tower or {}).get("fingerprint")
    have = store.meta().get("tower_fingerprint")
    if want and have and want != have:
        raise FeatureMismatchError(
            f"{store.folder} was extracted with another stage-1 tower ({have}) than this caption model "
            f"was trained on ({want}); extract features with the model's own tower"
        )


# (path, model_dir, entries, predictions, missing, metrics, workers) -> the page written
ReportWriter = Callable[..., Path]


def evaluation_folder(model_dir: Path, split: str, output: Path | None = None) -> Path:
    """Where ``evaluate`` writes: ``output``, else ``eval_<split>`` beside the model folder."""
    return Path(output) if output else Path(model_dir).parent / f"eval_{split}"


def evaluate(model_dir: Path, cfg: Config, features: Path | None = None, split: str | None = None,
             output: Path | None = None, report: ReportWriter | None = None) -> dict[str, Any]:
    """Caption ``split`` and score it; writes predictions.json and metrics.json; returns the metrics.
    ``report`` (the front door's ``write_evaluation_report``) is called with ``out_dir/report.html``
    and what was captioned - also when nothing could be, so the page shows every video and why."""
    split = split or cfg.data.test_split
    out_dir = evaluation_folder(model_dir, split, output)
    device = pick_device(cfg.run.device)
    ann = load_annotations(cfg.data)
    for problem in ann.problems:  # rows the reader left out (a duplicate id, an empty caption): said, not dropped
        print(f"warning: left out: {problem.source}: {problem.reason}", file=sys.stderr)
    entries = split_entries(ann, split, cfg.data.annotations)
    pipe = CaptionPipeline.from_pretrained(model_dir, device=device, load_tower=features is None)
    missing: list[dict[str, str]] = []
    if features is not None:
        store = FeatureStore(features)
        check_features_match(pipe.model, store)
        warn_if_video_differs(cfg.video.num_frames, store.meta()["num_frames"], f"the feature folder {features}")
        why = {e.video_id: "no cached features" if not store.has(e.video_id) else store.problem(e.video_id)
               for e in entries}
        have = [e for e in entries if why[e.video_id] is None]
        missing = [{"video_id": e.video_id, "reason": why[e.video_id]} for e in entries if why[e.video_id]]
        predictions = caption_features(pipe.model, pipe.tokenizer, store, [e.video_id for e in have], cfg.decode,
                                       device, cfg.run.num_workers)
    else:
        warn_if_video_differs(cfg.video.num_frames, pipe.tower_spec.num_frames, f"the video tower of {model_dir}",
                              cfg.video.eval_sampling, pipe.tower_spec.eval_sampling)
        results = pipe.caption_videos([(e.video_id, e.clip) for e in entries], decode=cfg.decode,
                                      num_workers=cfg.run.num_workers)
        predictions = {vid: r for vid, r in results.items() if r is not None and not isinstance(r, Exception)}
        missing = [{"video_id": vid, "reason": str(r)} for vid, r in results.items() if isinstance(r, Exception)]
    for m in missing:
        print(f"warning: not captioned: {m['video_id']}: {m['reason']}", file=sys.stderr)
    if not predictions:
        if report:  # the page still shows every video and why it failed
            write_json(out_dir / "not_captioned.json", missing)
            report(out_dir / "report.html", model_dir, entries, {}, missing,
                   {"split": split, "videos": 0, "not_captioned": len(missing)})
        raise DatasetError(f"{cfg.data.annotations}: no video of split '{split}' could be captioned "
                           "(each is named above)")
    refs = {e.video_id: [normalize_caption(c) for c in e.captions] for e in entries if e.video_id in predictions}
    metrics: dict[str, Any] = score_captions(predictions, refs)
    metrics.update({"split": split, "videos": len(predictions), "not_captioned": len(missing),
                    "num_beams": cfg.decode.num_beams, "annotation_problems": len(ann.problems)})
    write_json(out_dir / "predictions.json", predictions)
    if missing:
        write_json(out_dir / "not_captioned.json", missing)
    if report:  # before metrics.json: a page that fails cannot leave a finished-looking evaluation
        path = report(out_dir / "report.html", model_dir, entries, predictions, missing, metrics,
                      cfg.run.num_workers)
        print(f"report: {path}", file=sys.stderr)
    write_json(out_dir / "metrics.json", metrics)
    return metrics
