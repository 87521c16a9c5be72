"""Caption a split and score it: ``vcap evaluate --model RUN2/model --config C [--features FEATS]``.

From cached features when ``--features`` is given (the stage-1 tower fingerprint must match the one
the caption model was trained on), otherwise from the video files through the whole pipeline.
Writes ``predictions.json`` ({video_id: caption}) and ``metrics.json`` (BLEU-1..4, METEOR,
ROUGE-L, CIDEr via pycocoevalcap with the PTB tokenizer, as the papers report them).

A dataset whose entries are time ranges of longer videos (``activitynet``, ``youcook2``, jsonl with
``start`` / ``end``) is also evaluated as dense captioning: each source video of the split is
captioned window by window (``windows``: 10-second windows unless told otherwise, or shots; repeats
merged, ``CaptionPipeline.caption_windows``) - always from the video files, the feature cache holds
the annotated segments only - and the windows are scored against the split's own segments with the
ActivityNet Captions evaluator's metric (``caption.dense_metrics``): ``predictions_dense.json`` in
the challenge format, ``references_dense.json`` shaped like ``val_1.json`` (so ``vcap score
--predictions predictions_dense.json --references references_dense.json`` gives the same numbers),
and ``metrics.json`` gets ``"dense"``. The segment-level scores (each annotated segment captioned
from its own frames) stay as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from caption.caption_files import is_dense_predictions, parse_dense_references
from caption.config import Config
from caption.data import VideoFeatures, collate_videos
from caption.dense_metrics import DenseCaption, DenseReference, score_dense
from caption.metrics import score_captions
from caption.pipeline import CaptionPipeline
from caption.tokenizer import CaptionTokenizer, normalize_caption
from caption.windows import WindowSpec
from decoders.config import DecodeConfig
from decoders.model import CaptionModel
from retrieval_pretrain.foundation.accelerate_setup import pick_device
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError, FeatureMismatchError
from retrieval_pretrain.foundation.ownership import FAILURES, METRICS, PREDICTIONS, FileKind, claim_files
from retrieval_pretrain.modeling.model_folder import warn_if_video_differs
from retrieval_pretrain.reading.annotation_table import VideoEntry
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


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _dense_references_file(path: Path) -> bool:
    try:
        return bool(parse_dense_references(_json_or_none(path), path))
    except DatasetError:
        return False


DENSE_PREDICTIONS = FileKind("dense predictions file (predictions_dense.json)",
                             lambda path: is_dense_predictions(_json_or_none(path)))
DENSE_REFERENCES = FileKind("dense references file (references_dense.json)", _dense_references_file)


def dense_sources(entries: Sequence[VideoEntry]) -> dict[str, Path]:
    """The whole videos a split's time-range entries are parts of: ``{source id: file}``, in order."""
    out: dict[str, Path] = {}
    for e in entries:
        if e.start is not None:
            out.setdefault(e.source, e.path)
    return out


def dense_references(entries: Sequence[VideoEntry], durations: dict[str, float]) -> dict[str, DenseReference]:
    """Each source video's annotated segments and sentences (a segment with several captions is one
    reference each), as the dense metric reads ``val_1.json``."""
    rows: dict[str, list[tuple[tuple[float, float], str]]] = {}
    for e in entries:
        if e.start is not None:
            rows.setdefault(e.source, []).extend(((e.start, e.end), c) for c in e.captions)
    return {vid: DenseReference(durations.get(vid), tuple(r[0] for r in rs), tuple(r[1] for r in rs))
            for vid, rs in rows.items()}


def evaluate_dense(pipe: CaptionPipeline, entries: Sequence[VideoEntry], windows: WindowSpec, decode: DecodeConfig,
                   num_workers: int, out_dir: Path) -> dict[str, Any]:
    """Caption every source video of ``entries`` window by window, write ``predictions_dense.json`` and
    ``references_dense.json`` into ``out_dir`` and return ``{"dense": the metric, ...}`` (module doc)."""
    sources = dense_sources(entries)
    timed = pipe.caption_windows(list(sources.items()), windows, decode, num_workers=num_workers)
    done = {vid: r for vid, r in timed.items() if not isinstance(r, Exception)}
    for vid, r in timed.items():
        if isinstance(r, Exception):
            print(f"warning: not captioned (dense): {vid}: {r}", file=sys.stderr)
    bad_windows = sum(w.caption is None for ws in done.values() for w in ws)
    if bad_windows:
        print(f"warning: {bad_windows} window(s) could not be read and are left out (dense)", file=sys.stderr)
    predictions = {vid: [DenseCaption(w.start, w.end, w.caption) for w in ws if w.caption is not None]
                   for vid, ws in done.items()}
    references = dense_references(entries, {vid: ws[-1].end for vid, ws in done.items() if ws})
    challenge = {vid: [{"sentence": c.sentence, "timestamp": [c.start, c.end]} for c in caps]
                 for vid, caps in predictions.items()}
    write_json(out_dir / "predictions_dense.json", {"results": challenge})
    write_json(out_dir / "references_dense.json", {
        vid: {**({"duration": ref.duration} if ref.duration is not None else {}),
              "timestamps": [list(span) for span in ref.segments], "sentences": list(ref.sentences)}
        for vid, ref in references.items()})
    return {"dense": score_dense(predictions, [references]), "dense_videos": len(done),
            "dense_windows": sum(len(caps) for caps in predictions.values()),
            "dense_not_captioned": len(timed) - len(done), "dense_windows_not_read": bad_windows,
            "windows": windows.as_dict()}


def _caption_split(pipe: CaptionPipeline, entries: Sequence[VideoEntry], cfg: Config, features: Path | None,
                   model_dir: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Each entry's caption, from cached features or from its video (clip): ``(predictions, missing)``."""
    if features is not None:
        store = FeatureStore(features)
        check_features_match(pipe.model, store)
        warn_if_video_differs(cfg.video.num_frames, store.meta()["num_frames"], f"the feature folder {features}")
        why = {e.video_id: "no cached features" if not store.has(e.video_id) else store.problem(e.video_id)
               for e in entries}
        have = [e for e in entries if why[e.video_id] is None]
        missing = [{"video_id": e.video_id, "reason": why[e.video_id]} for e in entries if why[e.video_id]]
        return caption_features(pipe.model, pipe.tokenizer, store, [e.video_id for e in have], cfg.decode,
                                pipe.device, cfg.run.num_workers), missing
    warn_if_video_differs(cfg.video.num_frames, pipe.tower_spec.num_frames, f"the video tower of {model_dir}",
                          cfg.video.eval_sampling, pipe.tower_spec.eval_sampling)
    results = pipe.caption_videos([(e.video_id, e.clip) for e in entries], decode=cfg.decode,
                                  num_workers=cfg.run.num_workers)
    predictions = {vid: r for vid, r in results.items() if r is not None and not isinstance(r, Exception)}
    missing = [{"video_id": vid, "reason": str(r)} for vid, r in results.items() if isinstance(r, Exception)]
    return predictions, missing


def evaluate(model_dir: Path, cfg: Config, features: Path | None = None, split: str | None = None,
             output: Path | None = None, report: ReportWriter | None = None,
             windows: WindowSpec | None = None) -> dict[str, Any]:
    """Caption ``split`` and score it; writes predictions.json and metrics.json; returns the metrics.
    ``report`` (the front door's ``write_evaluation_report``) is called with ``out_dir/report.html``
    and what was captioned - also when nothing could be, so the page shows every video and why.
    A split of time ranges is also scored as dense captioning (module docstring), its source videos
    cut into ``windows`` (default ``WindowSpec()``: 10 s); ``windows`` on any other split is a
    ``ConfigError``."""
    split = split or cfg.data.test_split
    out_dir = evaluation_folder(model_dir, split, output)  # a file there vcap did not write: refused before any work
    claim_files(out_dir, {"predictions.json": PREDICTIONS, "not_captioned.json": FAILURES, "metrics.json": METRICS})
    device = pick_device(cfg.run.device)
    ann = load_annotations(cfg.data)
    for problem in ann.problems:  # rows the reader left out (a duplicate id, an empty caption): said, not dropped
        print(f"warning: left out: {problem.source}: {problem.reason}", file=sys.stderr)
    entries = split_entries(ann, split, cfg.data.annotations)
    dense = any(e.start is not None for e in entries)
    if windows is not None and not dense:
        raise ConfigError(f"--segments: split '{split}' of {cfg.data.annotations} has no time ranges (no dense "
                          "captions to score); windows apply to activitynet, youcook2 or jsonl with start/end")
    if dense:
        claim_files(out_dir, {"predictions_dense.json": DENSE_PREDICTIONS, "references_dense.json": DENSE_REFERENCES})
    pipe = CaptionPipeline.from_pretrained(model_dir, device=device, load_tower=features is None or dense)
    predictions, missing = _caption_split(pipe, entries, cfg, features, model_dir)
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
    if dense:
        metrics.update(evaluate_dense(pipe, entries, windows or WindowSpec(), cfg.decode, cfg.run.num_workers, out_dir))
    write_json(out_dir / "predictions.json", predictions)
    if missing:
        write_json(out_dir / "not_captioned.json", missing)
    if report:  # before metrics.json: a page that fails cannot leave a finished-looking evaluation
        path = report(out_dir / "report.html", model_dir, entries, predictions, missing, metrics,
                      cfg.run.num_workers)
        print(f"report: {path}", file=sys.stderr)
    write_json(out_dir / "metrics.json", metrics)
    return metrics
