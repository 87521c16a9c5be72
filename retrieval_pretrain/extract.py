"""Feature extraction: every video encoded once by the stage-1 video tower (CLIP4Caption stage 2's
input). Stores the temporal head's per-frame output [n_real_frames, D] as fp16 in a
``FeatureStore``. Resumable: finished videos are skipped, each file appears only when complete.
Unreadable videos are listed with the reason in ``FEATS/failures.json`` and retried on a rerun.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from retrieval_pretrain.accelerate_setup import pick_device
from retrieval_pretrain.annotations import load_annotations
from retrieval_pretrain.atomic import write_json
from retrieval_pretrain.config import RetrievalConfig
from retrieval_pretrain.data import Preprocess
from retrieval_pretrain.encode import encode_video_batches
from retrieval_pretrain.features import FeatureStore
from retrieval_pretrain.model_folder import from_pretrained, model_fingerprint
from retrieval_pretrain.run_log import StepTimer


def extract_features(model_dir: Path, cfg: RetrievalConfig, output: Path, splits: list[str] | None = None,
                     batch_size: int = 8) -> dict[str, Any]:
    """Encode the dataset's videos (all splits, or ``splits``) into ``output``, skipping those already
    there. Returns a report: total, already done, extracted now, failed, seconds, videos/s, data wait.
    """
    device = pick_device(cfg.run.device)
    model, info = from_pretrained(model_dir, device=device)
    store = FeatureStore(output)
    store.init({
        "tower": str(Path(model_dir).resolve()),
        "tower_fingerprint": model_fingerprint(model_dir),
        "num_frames": info["num_frames"],
        "dim": model.embed_dim,
        "dtype": "float16",
        "sampling": info.get("eval_sampling", "uniform"),
        "head": info.get("head"),
    })
    ann = load_annotations(cfg.data)
    wanted = set(splits) if splits else None
    videos: dict[str, Path] = {}
    for e in ann.entries:
        if wanted is None or e.split in wanted:
            videos.setdefault(e.video_id, Path(e.path))
    pending = [(vid, p) for vid, p in videos.items() if not store.has(vid)]
    done_before = len(videos) - len(pending)
    print(f"extract: {len(videos)} videos, {done_before} already done, {len(pending)} to encode", file=sys.stderr)
    pre = Preprocess(info["num_frames"], model.image_size, model.image_mean, model.image_std)
    failures: list[dict[str, str]] = []
    timer = StepTimer()
    t0 = time.perf_counter()
    extracted = 0
    for ids, seq, mask, failed in encode_video_batches(model, pending, pre, device, batch_size, cfg.run.num_workers,
                                                       method=info.get("eval_sampling", "uniform"), desc="extract", timer=timer):
        for path, reason in failed:
            failures.append({"path": path, "reason": reason})
            print(f"warning: skipped unreadable video {reason}", file=sys.stderr)
        for vid, s, m in zip(ids, seq, mask):
            store.write(vid, s[m].float().cpu().numpy())  # (n_real, D)
            extracted += 1
    seconds = time.perf_counter() - t0
    write_json(store.folder / "failures.json", failures)
    report = {
        "total": len(videos), "done_before": done_before, "extracted": extracted, "failed": len(failures),
        "seconds": round(seconds, 2), "videos_per_s": round(extracted / max(seconds, 1e-9), 2),
        "data_wait_s": round(timer.data, 2), "compute_s": round(timer.compute, 2),
        "folder": str(store.folder),
    }
    if failures:
        print(f"warning: {len(failures)} videos could not be read; listed in {store.folder / 'failures.json'}",
              file=sys.stderr)
    return report
