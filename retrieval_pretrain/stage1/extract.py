"""Feature extraction: every video encoded once by the stage-1 video tower (CLIP4Caption stage 2's
input). Stores the temporal head's per-frame output [n_real_frames, D] as fp16 in a
``FeatureStore``. Resumable: finished videos are skipped, each file appears only when complete.
Unreadable videos are listed with the reason in ``FEATS/failures.json`` and retried on a rerun.

One extraction at a time per folder (``folder_lock``: a second ``vcap extract`` into it is refused).
The folder must be a feature folder or new (``ownership.claim_folder`` with ``FEATURES``): a folder
of other files, a run folder or an index is refused untouched; one an earlier release wrote (its
``meta.json`` and nothing a feature folder does not hold) is taken as one.
Under ``accelerate launch --num_processes N`` the videos still to encode are split into N
contiguous shares, one per process, so each file is written by exactly one process; the failures
and counts of all shares are combined into one report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object

from retrieval_pretrain.foundation.accelerate_setup import pick_device, process_state
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.foundation.ownership import FolderKind, claim_folder, holds_only
from retrieval_pretrain.foundation.run_log import StepTimer
from retrieval_pretrain.modeling.model_folder import (
    from_pretrained,
    model_fingerprint,
    read_spec,
    warn_if_video_differs,
)
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.reading.annotation_table import normalize_split, splits_found
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.features import FeatureStore
from retrieval_pretrain.stage1.config import RetrievalConfig, check_batch_memory
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import encode_video_batches
from retrieval_pretrain.stage1.kept_frames import FrameCache


def _legacy_features(folder: Path) -> bool:
    """A feature folder an earlier release wrote: a feature record in ``meta.json`` and nothing else
    but what extraction writes."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return (isinstance(meta, dict) and isinstance(meta.get("tower_fingerprint"), str)
            and holds_only(folder, {"meta.json", "features", "failures.json"}))


FEATURES = FolderKind("feature folder", "vcap extract", _legacy_features)


def _wanted_videos(cfg: RetrievalConfig, splits: list[str] | None) -> dict[str, Path]:
    """``{video_id: path}`` of the dataset's videos (all splits, or ``splits``), in table order."""
    ann = load_annotations(cfg.data)
    wanted = {normalize_split(s) for s in splits} if splits else None
    for split in sorted(wanted or ()):
        if not ann.split(split):
            raise DatasetError(f"{cfg.data.annotations}: --split {split}: no videos in that split "
                               f"({splits_found(ann, split)})")
    videos: dict[str, Path] = {}
    for e in ann.entries:
        if wanted is None or e.split in wanted:
            videos.setdefault(e.video_id, e.clip)
    return videos


def _encode_share(model: StageOneModel, store: FeatureStore, share: list[tuple[str, Path]], cfg: RetrievalConfig,
                  device: Any, batch_size: int, main: bool, frames: FrameCache | None = None) -> dict[str, Any]:
    """Encode this process's videos into ``store``: counts, failures and timings of the share."""
    pre = Preprocess.for_model(model.spec)
    failures: list[dict[str, str]] = []
    timer, extracted = StepTimer(), 0
    for ids, seq, mask, failed in encode_video_batches(model, share, pre, device, batch_size, cfg.run.num_workers,
                                                       method=model.spec.eval_sampling, desc="extract",
                                                       timer=timer, progress=main, frames=frames):
        for path, reason in failed:
            failures.append({"path": path, "reason": reason})
            print(f"warning: skipped unreadable video {reason}", file=sys.stderr)
        if seq is None:  # every video of this batch was unreadable
            continue
        for vid, s, m in zip(ids, seq, mask):
            store.write(vid, s[m].float().cpu().numpy())  # (n_real, D)
            extracted += 1
    return {"extracted": extracted, "failures": failures, "data_wait_s": timer.data, "compute_s": timer.compute}


def extract_features(model_dir: Path, cfg: RetrievalConfig, output: Path, splits: list[str] | None = None,
                     batch_size: int = 8, frames: FrameCache | None = None) -> dict[str, Any]:
    """Encode the dataset's videos (all splits, or ``splits``) into ``output``, skipping those already
    there. Returns a report: total, already done, extracted now, failed, seconds, videos/s, data wait
    (summed over the processes of an ``accelerate launch``). ``frames``: stage 1's decoded training
    videos (``train(..., keep_frames=)``), read instead of decoding where they are exactly the same.
    """
    spec = read_spec(model_dir)  # the frames and size it encodes: one batch must fit, checked before any work
    check_batch_memory(spec.num_frames, spec.image_size, batch_size, "--batch-size")
    state = process_state(cfg.run.device)
    claim_folder(output, FEATURES, write=state.is_main_process, wait=state.wait_for_everyone)  # before .lock exists
    with folder_lock(output, "vcap extract", state):
        return _extract(Path(model_dir), cfg, FeatureStore(output), splits, batch_size, state, frames)


def _extract(model_dir: Path, cfg: RetrievalConfig, store: FeatureStore, splits: list[str] | None,
             batch_size: int, state: PartialState, frames: FrameCache | None = None) -> dict[str, Any]:
    device = state.device if state.num_processes > 1 and cfg.run.device != "cpu" else pick_device(cfg.run.device)
    model, spec = from_pretrained(model_dir, device=device)
    if state.is_main_process:
        warn_if_video_differs(cfg.video.num_frames, spec.num_frames, model_dir, cfg.video.eval_sampling,
                              spec.eval_sampling)
        store.init({"tower": str(model_dir.resolve()), "tower_fingerprint": model_fingerprint(model_dir),
                    "num_frames": spec.num_frames, "dim": spec.embed_dim, "dtype": "float16",
                    "sampling": spec.eval_sampling, "head": spec.head})
    state.wait_for_everyone()
    videos = _wanted_videos(cfg, splits)
    pending = [(vid, p) for vid, p in videos.items() if not store.readable(vid)]  # a cut file is done again
    state.wait_for_everyone()  # every process has listed what is pending before any writes
    if state.is_main_process:
        print(f"extract: {len(videos)} videos, {len(videos) - len(pending)} already done, {len(pending)} to encode"
              + (f" by {state.num_processes} processes" if state.num_processes > 1 else ""), file=sys.stderr)
    t0 = time.perf_counter()
    with state.split_between_processes(pending) as share:
        mine = _encode_share(model, store, list(share), cfg, device, batch_size, state.is_main_process, frames)
    shares = gather_object([mine]) if state.num_processes > 1 else [mine]
    seconds = time.perf_counter() - t0
    failures = [f for s in shares for f in s["failures"]]
    extracted = sum(s["extracted"] for s in shares)
    if state.is_main_process:
        write_json(store.folder / "failures.json", failures)
        if failures:
            print(f"warning: {len(failures)} videos could not be read; listed in {store.folder / 'failures.json'}",
                  file=sys.stderr)
    state.wait_for_everyone()
    return {"total": len(videos), "done_before": len(videos) - len(pending), "extracted": extracted,
            "failed": len(failures), "seconds": round(seconds, 2), "videos_per_s": round(extracted / max(seconds, 1e-9), 2),
            "data_wait_s": round(sum(s["data_wait_s"] for s in shares), 2),
            "compute_s": round(sum(s["compute_s"] for s in shares), 2), "folder": str(store.folder),
            "processes": state.num_processes, "extracted_per_process": [s["extracted"] for s in shares]}
