"""The report page of ``vcap evaluate --report``: every video of the split with its frames, its caption
beside the references and its CIDEr-D, worst first, plus the training curves when the model sits in
a run folder. ``caption.evaluate.evaluate`` calls it through its ``report`` argument."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from caption.metrics import per_caption_cider
from caption.tokenizer import normalize_caption
from retrieval_pretrain.foundation.errors import DatasetError
from vcap_toolkit.reports.captions_page import caption_report, make_rows
from vcap_toolkit.reports.run_curves import LOG_FILE, training_curves


def write_evaluation_report(path: Path, model_dir: Path, entries: Sequence[Any], predictions: dict[str, str],
                            missing: list[dict[str, str]], metrics: dict[str, Any], workers: int = 1) -> Path:
    """``report.html`` of an evaluation: one row per video of the split (captioned or not), each
    with its per-video CIDEr-D (document frequencies of the captioned set, as ``metrics``). The run's
    log (when the model sits in a run folder) adds its curves; a log unreadable as a whole is said on
    the page and on stderr instead."""
    refs = {e.video_id: [normalize_caption(c) for c in e.captions] for e in entries}
    scored = {v: refs[v] for v in predictions}
    cider = per_caption_cider(predictions, scored) if len(predictions) > 1 else {}
    rows = make_rows({e.video_id: e.clip for e in entries}, predictions, refs, cider,
                     {m["video_id"]: m["reason"] for m in missing}, workers=max(1, workers))
    run = Path(model_dir).parent
    try:  # a log that cannot be read costs the page its curves, never the evaluation
        curves = training_curves(run) if (run / LOG_FILE).exists() else None
    except DatasetError as e:
        print(f"warning: {e}; the report has no training curves", file=sys.stderr)
        curves = {"unreadable": str(e)}
    return caption_report(path, rows, metrics, f"Captions: {metrics['split']} split",
                          subtitle=f"model {model_dir}", curves=curves)
