"""Self-contained HTML reports: a captioned split at a glance, and a training run's curves.

``caption_report`` writes one HTML file for ``vcap evaluate --report`` / ``vcap caption --report``:
the metrics table, then one row per video - a strip of frames sampled uniformly over the clip, the
generated caption, the references and the video's CIDEr - worst CIDEr first, so the failures are what
a reader sees first. Column headers sort (inline JS; ``report.html#sort=-cider`` opens it sorted best
first), a filter box narrows the rows. ``run_report`` writes the curves of a training run's
``log.jsonl`` (loss and learning rate per step, validation metrics per epoch) as inline SVG plots.

Everything is in the one file: thumbnails are ``data:`` URIs, CSS and JS are inline, the SVG is
written here (no plotting library), and a Content-Security-Policy forbids the page to fetch anything,
so a report can be mailed or archived and opens the same anywhere. All text from the data (video ids,
captions, references, config values) is HTML-escaped. Files are written atomically
(``retrieval_pretrain.foundation.atomic.write_file``). Size: about 4 KB per 96-pixel thumbnail, so a
3,000-video split with 6 frames each is about 70 MB; pass fewer frames for big splits.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from PIL import Image

from caption.metrics import METRICS
from vcap_toolkit.reports.svg_plot import svg_plot
from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError, VideoReadError
from retrieval_pretrain.reading.video import read_frames

LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
_X_KEYS = ("step", "epoch")
_NOT_PLOTTED = ("time", "best_epoch")  # wall-clock stamps; the best epoch is drawn as a marker instead
_FIRST = ("loss", "lr", "lr_new", "lr_clip", "logit_scale", "val_loss", "val_CIDEr",  # plot order
          "reward", "baseline", "cider", "clip")  # SCST's rewards: its signal, next to its (noisy) loss
_SHOWN_REFERENCES = 5  # more are folded away (MSR-VTT has 20 per video)


# ---------------------------------------------------------------- thumbnails


class Thumbnails(NamedTuple):
    """JPEG thumbnails of one video, or why there are none (``images`` empty, ``error`` the reason)."""

    images: list[bytes]
    error: str | None


def video_thumbnails(path: str | Path, count: int = 6, height: int = 96) -> Thumbnails:
    """``count`` frames sampled uniformly over the video (TSN test-mode centres, as the models see
    them; fewer for a clip with fewer frames), each a JPEG ``height`` pixels tall, aspect kept.

    Decoded by the toolkit's own reader (``retrieval_pretrain.reading.video.read_frames``, the sampling
    rule of evaluation), so a thumbnail shows frames the captioner sees, upright, and a video it
    cannot read fails here the same way. An unreadable video does not raise: it returns
    ``Thumbnails([], reason)`` and the report shows the reason in that row.
    """
    try:
        sampled = read_frames(path, count, "uniform")
    except VideoReadError as e:
        return Thumbnails([], e.reason)
    images = []
    for frame in sampled.frames[sampled.mask]:  # (H, W, 3) uint8; padding of short clips dropped
        h, w = frame.shape[:2]
        img = Image.fromarray(frame).resize((max(1, round(w * height / h)), height), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        images.append(buf.getvalue())
    return Thumbnails(images, None)


# ---------------------------------------------------------------- rows


@dataclass
class ReportRow:
    """One video of a caption report. ``caption`` None: not captioned, ``caption_error`` says why;
    ``thumbnails`` empty with ``frames_error``: frames unavailable; ``cider`` None: not scored."""

    video_id: str
    caption: str | None = None
    references: list[str] = field(default_factory=list)
    cider: float | None = None
    thumbnails: list[bytes] = field(default_factory=list)
    frames_error: str | None = None
    caption_error: str | None = None


def as_row(item: ReportRow | Mapping[str, Any] | Any) -> ReportRow:
    """A ``ReportRow`` from a row, a mapping with its field names, or any object with those
    attributes (missing ones take the defaults). An unknown mapping key is a ``TypeError``."""
    if isinstance(item, ReportRow):
        return item
    names = [f.name for f in fields(ReportRow)]
    if isinstance(item, Mapping):
        unknown = sorted(set(item) - set(names))
        if unknown:
            raise TypeError(f"unknown report row keys {unknown}; expected some of {names}")
        return ReportRow(**item)
    return ReportRow(**{n: getattr(item, n) for n in names if hasattr(item, n)})


def make_rows(videos: Mapping[str, str | Path | None], predictions: Mapping[str, str],
              references: Mapping[str, Sequence[str]], cider: Mapping[str, float] | None = None,
              not_captioned: Mapping[str, str] | None = None, frames: int = 6, height: int = 96,
              workers: int = 1) -> list[ReportRow]:
    """One row per video of ``videos`` (id -> file, None when there is no file), with its caption,
    references, CIDEr and thumbnails (decoded by ``workers`` threads). A video missing from
    ``predictions`` gets the reason from ``not_captioned`` (or "no prediction")."""
    not_captioned = not_captioned or {}
    cider = cider or {}

    def thumbs(path: str | Path | None) -> Thumbnails:
        return video_thumbnails(path, frames, height) if path is not None else Thumbnails([], "no video file")

    ids = list(videos)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        shots = list(pool.map(thumbs, [videos[v] for v in ids]))
    return [ReportRow(video_id=v, caption=predictions.get(v), references=list(references.get(v, [])),
                      cider=cider.get(v), thumbnails=t.images, frames_error=t.error,
                      caption_error=None if v in predictions else not_captioned.get(v, "no prediction"))
            for v, t in zip(ids, shots)]


# ---------------------------------------------------------------- training curves


def training_curves(run_folder: str | Path) -> dict[str, Any]:
    """The numeric series of a run's ``log.jsonl``, ready to plot.

    Records with a ``val_*`` key are end-of-epoch records (stage 2: ``val_loss``, ``val_CIDEr``,
    ``best_epoch``) and plot against ``epoch``; the others are step records (stage 1: ``loss``,
    ``lr_new``, ``lr_clip``, ``logit_scale``; stage 2: ``loss``, ``lr``; both: timings) and plot
    against ``step``. Every numeric key present becomes a series, except the x keys, ``time`` and
    ``best_epoch``; non-finite values are left out. A line that is not a JSON object (a run killed
    mid-write) is skipped and listed in ``skipped_lines``.

    Returns ``{"log": path, "records": n, "skipped_lines": [line numbers], "step": {name: [[x, y], ...]},
    "epoch": {name: [[x, y], ...]}, "best_epoch": int or None}``.

    Raises:
        DatasetError: the log is missing, or holds no record with a step or an epoch.
    """
    log = Path(run_folder) / LOG_FILE
    if not log.is_file():
        raise DatasetError(f"{log}: no training log (is {run_folder} a 'vcap pretrain' or 'vcap train' run folder?)")
    out: dict[str, Any] = {"log": str(log), "records": 0, "skipped_lines": [], "step": {}, "epoch": {},
                           "best_epoch": None}
    for number, line in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            out["skipped_lines"].append(number)
            continue
        axis = "epoch" if any(k.startswith("val_") for k in record) else "step"
        x = record.get(axis)
        if not _number(x):
            out["skipped_lines"].append(number)
            continue
        out["records"] += 1
        if axis == "epoch" and _number(record.get("best_epoch")):
            out["best_epoch"] = int(record["best_epoch"])
        for key, value in record.items():
            if key not in _X_KEYS + _NOT_PLOTTED and _number(value) and math.isfinite(value):
                out[axis].setdefault(key, []).append([x, value])
    if out["records"] == 0:
        raise DatasetError(f"{log}: the training log holds no step or epoch record (the run logged nothing yet)")
    for axis in ("step", "epoch"):
        out[axis] = dict(sorted(out[axis].items(), key=lambda kv: (_rank(kv[0]), kv[0])))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rank(name: str) -> int:
    return _FIRST.index(name) if name in _FIRST else len(_FIRST)


def _curves_html(curves: Mapping[str, Any]) -> str:
    """The plots of ``training_curves`` output: losses, learning rates, logit scale and validation
    metrics open; any other series (timings) folded under them."""
    plots: dict[bool, list[str]] = {True: [], False: []}
    for axis in ("step", "epoch"):
        for name, pts in curves.get(axis, {}).items():
            main = name in _FIRST or name.startswith("val_")
            plots[main].append(svg_plot(name, pts, axis, curves.get("best_epoch") if axis == "epoch" else None))
    other = (f'<details><summary>{len(plots[False])} more series (timings)</summary>'
             f'<div class="plots">{"".join(plots[False])}</div></details>' if plots[False] else "")
    note = ""
    skipped = curves.get("skipped_lines") or []
    if skipped:
        listed = ", ".join(str(n) for n in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        note = f'<p class="warn">{len(skipped)} unreadable log line(s) skipped: line {listed}</p>'
    source = html.escape(str(curves.get("log", "")))
    return (f'<section id="curves"><h2>Training curves</h2><p class="sub">{curves.get("records", 0)} records from '
            f'<code>{source}</code></p>{note}<div class="plots">{"".join(plots[True])}</div>{other}</section>')


# ---------------------------------------------------------------- HTML


_CSS = """
:root{--bad:#c62828;--bad-bg:#fdecea;--good:#2e7d32;--good-bg:#e8f5e9;--mid:#546e7a;--line:#dde1e6}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1c2330;
margin:0;padding:24px 28px;background:#f6f7f9}
h1{font-size:24px;margin:0 0 2px}h2{font-size:18px;margin:26px 0 8px}
.sub{color:#5b6472;margin:0 0 12px}code{font:13px ui-monospace,"DejaVu Sans Mono",monospace}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line)}
.metrics th,.metrics td{padding:6px 16px;text-align:center;border-bottom:1px solid var(--line)}
.metrics th{font-size:13px;color:#5b6472;font-weight:600}.metrics td{font-size:20px;font-weight:600}
.metrics td.cider{color:#0d47a1}
.tools{display:flex;gap:16px;align-items:center;margin:10px 0}
.tools input{font:inherit;padding:5px 10px;border:1px solid #b8bec7;border-radius:6px;width:320px}
#videos{width:100%}
#videos th{position:sticky;top:0;background:#eef1f5;text-align:left;padding:8px 10px;font-size:13px;
border-bottom:2px solid #c9ced6;white-space:nowrap}
#videos th[data-key]{cursor:pointer;user-select:none}#videos th[data-key]:hover{background:#e1e6ee}
#videos th[aria-sort=ascending]::after{content:" \\25B2"}#videos th[aria-sort=descending]::after{content:" \\25BC"}
#videos td{padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
#videos tr{border-left:5px solid transparent}
#videos tr.worst{border-left-color:var(--bad);background:#fffafa}#videos tr.best{border-left-color:var(--good)}
td.rank{color:#8a929e;font-size:13px;width:36px}
td.score{width:110px;white-space:nowrap}td.vid{width:170px;word-break:break-all}
.badge{display:inline-block;padding:2px 9px;border-radius:11px;font-weight:700;font-size:14px;
background:#eceff1;color:var(--mid)}
tr.worst .badge{background:var(--bad-bg);color:var(--bad)}tr.best .badge{background:var(--good-bg);color:var(--good)}
.bar{height:4px;background:#e3e6ea;border-radius:2px;margin-top:6px;width:120px}
.bar i{display:block;height:4px;border-radius:2px;background:var(--mid)}
tr.worst .bar i{background:var(--bad)}tr.best .bar i{background:var(--good)}
td.frames{width:1%}.strip{display:grid;grid-template-columns:repeat(3,auto);gap:3px;justify-content:start}
.strip img{height:72px;border-radius:3px;display:block;transition:transform .1s}
.strip img:hover{transform:scale(2.4);transform-origin:left top;position:relative;z-index:5;
box-shadow:0 4px 16px rgba(0,0,0,.35)}
.gen{font-size:16px;font-weight:600;margin:0 0 4px;overflow-wrap:anywhere}.gen::before{content:"\\201C"}.gen::after{content:"\\201D"}
.missing{color:var(--bad);font-weight:600;margin:0 0 4px}
.refs{margin:0;padding-left:20px;color:#4a5260;font-size:13.5px;overflow-wrap:anywhere}.refs li{margin:1px 0}
details summary{cursor:pointer;color:#5b6472;font-size:13px}
.noframes{color:var(--bad);font-size:13px;width:300px}
.warn{color:var(--bad)}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plot{background:#fff;border:1px solid var(--line);border-radius:6px}
.plot .grid{stroke:#e6e9ed}.plot .axis{stroke:#7b8491}.plot .tick{font-size:11px;fill:#5b6472}
.plot .ptitle{font-size:14px;font-weight:700;fill:#1c2330}
.plot .series{fill:none;stroke:#1565c0;stroke-width:1.8}.plot .dot{fill:#1565c0}
.plot .best{stroke:var(--good);stroke-dasharray:4 3}.plot .best-label{fill:var(--good)}
.config td,.config th{padding:3px 12px;border-bottom:1px solid var(--line);text-align:left;font-size:13px}
"""

_JS = """
(function(){
var table=document.getElementById('videos');if(!table)return;
var body=table.tBodies[0],heads=table.querySelectorAll('th[data-key]');
function val(tr,k){var v=tr.getAttribute('data-'+k);
 if(k==='cider'||k==='order')return v===''?-Infinity:parseFloat(v);return v;}
function sortBy(k,desc){
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=val(a,k),y=val(b,k),c=x<y?-1:(x>y?1:0);if(desc)c=-c;
  return c||(val(a,'order')-val(b,'order'));});
 rows.forEach(function(r){body.appendChild(r);});
 heads.forEach(function(th){th.setAttribute('aria-sort',th.getAttribute('data-key')===k?(desc?'descending':'ascending'):'none');});}
heads.forEach(function(th){th.addEventListener('click',function(){
 sortBy(th.getAttribute('data-key'),th.getAttribute('aria-sort')==='ascending');});});
var box=document.getElementById('filter');
if(box)box.addEventListener('input',function(){var q=box.value.toLowerCase();
 Array.prototype.forEach.call(body.rows,function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});
var m=/sort=(-?)(\\w+)/.exec(location.hash);if(m)sortBy(m[2],m[1]==='-');
document.documentElement.setAttribute('data-js','ready');
})();
"""

# The page may load nothing: every image is a data: URI, style and script are inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _page(title: str, subtitle: str | None, body: str) -> str:
    e = html.escape
    sub = f'<p class="sub">{e(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{e(title)}</title><style>{_CSS}</style></head>\n<body><h1>{e(title)}</h1>{sub}\n{body}\n'
            f'<script>{_JS}</script></body></html>\n')


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    """The caption metrics in the papers' order, then any other scalar entries on one line."""
    names = [m for m in METRICS if _number(metrics.get(m))]
    head = "".join(f"<th>{m}</th>" for m in names)
    cells = "".join(f'<td class="{"cider" if m == "CIDEr" else ""}">{metrics[m]:.3f}</td>' for m in names)
    table = f'<table class="metrics"><tr>{head}</tr><tr>{cells}</tr></table>' if names else ""
    extra = [f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in metrics.items()
             if k not in METRICS and isinstance(v, (str, int, float))]
    line = f'<p class="sub">{" · ".join(extra)}</p>' if extra else ""
    return f"<section><h2>Metrics</h2>{table}{line}</section>"


def _sort_key(row: ReportRow) -> tuple[float, str]:
    return (-math.inf if row.cider is None else row.cider, row.video_id)


def _row_html(order: int, row: ReportRow, flag: str, top: float) -> str:
    e = html.escape
    cider = "" if row.cider is None else repr(float(row.cider))
    if row.cider is None:
        badge, bar = '<span class="badge">no CIDEr</span>', ""
    else:
        share = 0.0 if top <= 0 else max(0.0, min(1.0, row.cider / top))
        badge = f'<span class="badge" title="per-video CIDEr">{row.cider:.3f}</span>'
        bar = f'<div class="bar"><i style="width:{100 * share:.0f}%"></i></div>'
    if row.thumbnails:
        frames = "".join(f'<img src="data:image/jpeg;base64,{base64.b64encode(t).decode("ascii")}" '
                         f'alt="frame {i + 1} of {e(row.video_id)}">' for i, t in enumerate(row.thumbnails))
        frames = f'<div class="strip">{frames}</div>'
    else:
        frames = f'<div class="noframes">frames unavailable: {e(row.frames_error or "no thumbnails")}</div>'
    if row.caption is None:
        text = f'<p class="missing">not captioned: {e(row.caption_error or "no caption")}</p>'
    else:
        text = f'<p class="gen">{e(row.caption)}</p>'
    refs = [f"<li>{e(r)}</li>" for r in row.references]
    shown = "".join(refs[:_SHOWN_REFERENCES])
    rest = (f'<details><summary>{len(refs) - _SHOWN_REFERENCES} more references</summary>'
            f'<ol class="refs" start="{_SHOWN_REFERENCES + 1}">{"".join(refs[_SHOWN_REFERENCES:])}</ol></details>'
            if len(refs) > _SHOWN_REFERENCES else "")
    refs_html = f'<ol class="refs">{shown}</ol>{rest}' if refs else '<p class="sub">no references</p>'
    return (f'<tr class="{flag}" data-order="{order}" data-cider="{cider}" data-video="{e(row.video_id)}">'
            f'<td class="rank">{order + 1}</td><td class="score">{badge}{bar}</td><td class="vid"><code>{e(row.video_id)}</code></td>'
            f'<td class="frames">{frames}</td><td class="text">{text}{refs_html}</td></tr>')


def _flags(rows: Sequence[ReportRow]) -> list[str]:
    """``worst`` for the lowest quarter of scored rows and every unscored one, ``best`` for the top quarter."""
    scored = [r.cider for r in rows if r.cider is not None]
    k = math.ceil(len(scored) / 4)
    low, high = (sorted(scored)[k - 1], sorted(scored)[-k]) if scored else (math.inf, math.inf)
    return ["worst" if r.cider is None or r.cider <= low else "best" if r.cider >= high and len(scored) > 1 else ""
            for r in rows]


def check_report_path(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse a report path before any work: it must end in ``.html`` (``vcap caption --report
    v1.mp4 v2.mp4`` would otherwise replace the first video with the page), must not be one of the
    ``inputs``, and, where something already stands there, it must be a regular file - not a folder,
    a device such as ``/dev/null`` or a symbolic link, which the atomic rename would replace."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"report path {path}: give a file name ending in .html (the page is HTML)")
    if os.path.lexists(path):
        if path.is_symlink():
            raise ConfigError(f"report path {path} is a symbolic link; give the file itself "
                              "(writing would replace the link, not its target)")
        if not path.is_file():
            raise ConfigError(f"report path {path} exists and is not a regular file; give a new .html file name")
    resolved = path.resolve()
    for given in inputs:
        if Path(given).resolve() == resolved:
            raise ConfigError(f"report path {path} is one of the videos to caption; give another file name")
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ConfigError(f"report path {path}: {parent} is a file, not a folder")
            break
    return path


def caption_report(path: str | Path, rows: Iterable[ReportRow | Mapping[str, Any] | Any], metrics: Mapping[str, Any],
                   title: str, subtitle: str | None = None, curves: Mapping[str, Any] | None = None) -> Path:
    """Write the caption report of a split (see the module docstring) to ``path``; returns ``path``.

    Args:
        path: the HTML file to write (atomically; its folder is created).
        rows: one per video (``ReportRow``, a mapping of its fields, or an object with them), in any
            order: the page lists them worst CIDEr first, unscored rows before all.
        metrics: the split's scores (``score_captions`` output, plus any scalar notes such as
            ``split`` or ``videos``, shown on a line under the table).
        title, subtitle: page heading and the line under it (e.g. the model folder and config).
        curves: ``training_curves`` output, plotted below the metrics when given.
    """
    ordered = sorted((as_row(r) for r in rows), key=_sort_key)
    top = max((r.cider for r in ordered if r.cider is not None), default=0.0)
    body_rows = "\n".join(_row_html(i, r, f, top) for i, (r, f) in enumerate(zip(ordered, _flags(ordered))))
    missing = sum(r.caption is None for r in ordered)
    no_frames = sum(not r.thumbnails for r in ordered)
    counts = f"{len(ordered)} videos" + (f" · {missing} not captioned" if missing else "") + \
             (f" · {no_frames} without frames" if no_frames else "")
    table = (f'<section><h2>Videos</h2><div class="tools"><input id="filter" type="search" '
             f'placeholder="filter by video id or text" aria-label="filter rows"><span class="sub">{counts}; '
             f'worst CIDEr first (red: lowest quarter), click a header to sort</span></div>'
             f'<table id="videos"><thead><tr><th data-key="order" aria-sort="none">#</th>'
             f'<th data-key="cider" aria-sort="ascending">CIDEr</th><th data-key="video" aria-sort="none">Video</th>'
             f'<th>Frames</th><th>Generated caption and references</th></tr></thead>'
             f'<tbody>\n{body_rows}\n</tbody></table></section>')
    body = _metrics_html(metrics) + table + (_curves_html(curves) if curves else "")
    return write_file(path, _page(title, subtitle, body))


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
    return write_file(path, _page(f"Training run: {folder.name}", str(folder.resolve()),
                                  _curves_html(curves) + _config_html(folder)))
