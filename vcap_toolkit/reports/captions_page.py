"""The caption report page: a captioned split at a glance, each video beside its frames.

``caption_report`` writes one HTML file for ``vcap evaluate --report`` / ``vcap caption --report``:
the metrics table, then one row per video - a strip of frames sampled uniformly over the clip, the
generated caption, the references and the video's CIDEr - worst CIDEr first, so the failures are what
a reader sees first. Column headers sort (inline JS; ``report.html#sort=-cider`` opens it sorted best
first), a filter box narrows the rows; a run's training curves (``run_curves``) can follow.

The page is self-contained (``html_page``); all text from the data (video ids, captions, references)
is HTML-escaped, and the file is written atomically (``retrieval_pretrain.foundation.atomic.write_file``).
Size: about 4 KB per 96-pixel thumbnail, so a 3,000-video split with 6 frames each is about 70 MB;
pass fewer frames for big splits.
"""

from __future__ import annotations

import base64
import html
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from PIL import Image

from caption.metrics import METRICS
from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.reading.clips import Clip
from retrieval_pretrain.reading.video import read_frames
from vcap_toolkit.reports.html_page import is_number, page
from vcap_toolkit.reports.run_curves import curves_html

_SHOWN_REFERENCES = 5  # more are folded away (MSR-VTT has 20 per video)


# ---------------------------------------------------------------- thumbnails


class Thumbnails(NamedTuple):
    """JPEG thumbnails of one video, or why there are none (``images`` empty, ``error`` the reason)."""

    images: list[bytes]
    error: str | None


def video_thumbnails(path: str | Path | Clip, count: int = 6, height: int = 96) -> Thumbnails:
    """``count`` frames sampled uniformly over the video - or over a ``Clip``'s time range only -
    (TSN test-mode centres, as the models see them; fewer for a clip with fewer frames), each a JPEG
    ``height`` pixels tall, aspect kept.

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


# ---------------------------------------------------------------- the page


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    """The caption metrics in the papers' order, then any other scalar entries on one line."""
    names = [m for m in METRICS if is_number(metrics.get(m))]
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
    body = _metrics_html(metrics) + table + (curves_html(curves) if curves else "")
    return write_file(path, page(title, subtitle, body))

