"""A training run's report page (``vcap report RUN``): the curves of its ``log.jsonl`` as inline SVG
plots (loss and learning rate per step, validation metrics per epoch) and its ``config.json``.

``training_curves`` reads the log into plottable series; ``curves_html`` draws them (also below the
metrics of ``vcap evaluate --report`` when the model sits in a run folder); ``run_report`` writes
the page (atomically, ``retrieval_pretrain.foundation.atomic.write_file``). All text from the run
(keys, config values, paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.foundation.run_log import VALUE_BOUND, read_log
from vcap_toolkit.reports.html_page import is_number, page
from vcap_toolkit.reports.svg_plot import svg_plot

LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
_X_KEYS = ("step", "epoch")
_NOT_PLOTTED = ("time", "best_epoch")  # wall-clock stamps; the best epoch is drawn as a marker instead
_FIRST = ("loss", "lr", "lr_new", "lr_clip", "logit_scale", "val_loss", "val_CIDEr",  # plot order
          "reward", "baseline", "cider", "clip")  # SCST's rewards: its signal, next to its (noisy) loss


def training_curves(run_folder: str | Path) -> dict[str, Any]:
    """The numeric series of a run's ``log.jsonl``, ready to plot, read through the one log reader
    (``run_log.read_log``).

    Records with a ``val_*`` key are end-of-epoch records (stage 2: ``val_loss``, ``val_CIDEr``,
    ``best_epoch``) and plot against ``epoch``; the others are step records (stage 1: ``loss``,
    ``lr_new``, ``lr_clip``, ``logit_scale``; stage 2: ``loss``, ``lr``; both: timings) and plot
    against ``step``. Every numeric key present becomes a series, except the x keys, ``time`` and
    ``best_epoch``. A value that is NaN, infinite or beyond ``VALUE_BOUND`` is left out and counted in
    ``left_out_values``; a line that is not a JSON object (a run killed mid-write) or has no usable
    step or epoch is skipped and listed in ``skipped_lines``; both are said once on stderr.

    Returns ``{"log": path, "records": n, "skipped_lines": [line numbers], "left_out_values": n,
    "value_lines": [line numbers], "step": {name: [[x, y], ...]}, "epoch": {name: [[x, y], ...]},
    "best_epoch": int or None}``.

    Raises:
        DatasetError: the log is missing or unreadable as a whole, or holds no record with a step or an epoch.
    """
    log = Path(run_folder) / LOG_FILE
    if not log.exists():
        raise DatasetError(f"{log}: no training log (is {run_folder} a 'vcap pretrain' or 'vcap train' run folder?)")
    records, problems = read_log(log)
    values = [p.line for p in problems if p.what == "value"]
    out: dict[str, Any] = {"log": str(log), "records": 0, "skipped_lines": [p.line for p in problems if p.what == "line"],
                           "left_out_values": len(values), "value_lines": sorted(set(values)),
                           "step": {}, "epoch": {}, "best_epoch": None}
    for number, record in records:
        axis = "epoch" if any(k.startswith("val_") for k in record) else "step"
        x = record.get(axis)
        if not is_number(x):
            out["skipped_lines"].append(number)
            continue
        out["records"] += 1
        if axis == "epoch" and is_number(record.get("best_epoch")):
            out["best_epoch"] = int(record["best_epoch"])
        for key, value in record.items():
            if key not in _X_KEYS + _NOT_PLOTTED and is_number(value):
                out[axis].setdefault(key, []).append([x, value])
    out["skipped_lines"].sort()
    if out["records"] == 0:
        raise DatasetError(f"{log}: the training log holds no step or epoch record (the run logged nothing yet)")
    for axis in ("step", "epoch"):
        out[axis] = dict(sorted(out[axis].items(), key=lambda kv: (_rank(kv[0]), kv[0])))
    note = left_out_note(out)
    if note:
        print(f"warning: {log}: {note}", file=sys.stderr)
    return out


def _lines(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers[:10]) + (", ..." if len(numbers) > 10 else "")


def left_out_note(curves: Mapping[str, Any]) -> str:
    """One sentence on what the curves leave out of the log and why, or "" when nothing is."""
    parts = []
    if curves.get("left_out_values"):
        parts.append(f"{curves['left_out_values']} value(s) that are NaN, infinite or beyond +-{VALUE_BOUND:g} "
                     f"(line {_lines(curves['value_lines'])})")
    if curves.get("skipped_lines"):
        parts.append(f"{len(curves['skipped_lines'])} line(s) that are not a JSON object with a step or epoch "
                     f"(line {_lines(curves['skipped_lines'])})")
    return "left out of the curves: " + "; ".join(parts) if parts else ""


def _rank(name: str) -> int:
    return _FIRST.index(name) if name in _FIRST else len(_FIRST)


def curves_html(curves: Mapping[str, Any]) -> str:
    """The plots of ``training_curves`` output: losses, learning rates, logit scale and validation
    metrics open; any other series (timings) folded under them; one line on what the log had that
    the curves leave out. ``{"unreadable": why}`` draws only why there are no curves."""
    if curves.get("unreadable"):  # the evaluation page of a run whose log could not be read
        return (f'<section id="curves"><h2>Training curves</h2><p class="warn" id="left-out">No training curves: '
                f'{html.escape(str(curves["unreadable"]))}</p></section>')
    plots: dict[bool, list[str]] = {True: [], False: []}
    for axis in ("step", "epoch"):
        for name, pts in curves.get(axis, {}).items():
            main = name in _FIRST or name.startswith("val_")
            plots[main].append(svg_plot(name, pts, axis, curves.get("best_epoch") if axis == "epoch" else None))
    other = (f'<details><summary>{len(plots[False])} more series (timings)</summary>'
             f'<div class="plots">{"".join(plots[False])}</div></details>' if plots[False] else "")
    note = left_out_note(curves)
    note = f'<p class="warn" id="left-out">{html.escape(note[0].upper() + note[1:])}</p>' if note else ""
    source = html.escape(str(curves.get("log", "")))
    return (f'<section id="curves"><h2>Training curves</h2><p class="sub">{curves.get("records", 0)} records from '
            f'<code>{source}</code></p>{note}<div class="plots">{"".join(plots[True])}</div>{other}</section>')


def _config_html(run_folder: Path) -> str:
    """The run's ``config.json`` as a two-column table of dotted keys, or nothing if it has none."""
    config = run_folder / CONFIG_FILE
    if not config.is_file():
        return ""
    try:
        tree = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as e:
        return f'<section><h2>Config</h2><p class="warn">{html.escape(str(config))} is not valid JSON: {html.escape(str(e))}</p></section>'
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(tree, "")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(json.dumps(v))}</code></td></tr>"
                   for k, v in flat.items())
    return f'<section><h2>Config</h2><p class="sub"><code>{html.escape(str(config))}</code></p>' \
           f'<table class="config">{rows}</table></section>'


def run_report(run_folder: str | Path, path: str | Path) -> Path:
    """Write the report of a training run (``vcap report RUN``): its curves as SVG plots and its
    config, to ``path``; returns ``path``. Raises ``DatasetError`` when the log is missing or empty."""
    folder = Path(run_folder)
    curves = training_curves(folder)
    return write_file(path, page(f"Training run: {folder.name}", str(folder.resolve()),
                                 curves_html(curves) + _config_html(folder)))
