"""The timeline page: long videos captioned window by window (``vcap caption --segments --report``).

One section per video: a row per window (after merging repeats) with its start and end, one frame
from the window's middle - decoded by the toolkit's reader inside the window's range
(``captions_page.video_thumbnails`` of a ``Clip``), so it is a frame the captioner saw - and the
caption, or why the window has none. A video that could not be read shows the reason instead.

Self-contained like every report (``html_page``): thumbnails are ``data:`` URIs, text is escaped,
and the file is written atomically. One thumbnail is about 4 KB, so an hour captioned in 10-second
windows is about 1.5 MB. Frames are decoded in one thread, window after window: the reader of a
long video then opens and indexes the file once for all its windows.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping, Sequence

from caption.windows import TimedCaption, clock
from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.reading.clips import Clip
from vcap_toolkit.reports.captions_page import video_thumbnails
from vcap_toolkit.reports.html_page import page

_CSS = """<style>
.timeline{width:100%;margin-bottom:8px}
.timeline td,.timeline th{padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:middle;text-align:left}
.timeline th{background:#eef1f5;font-size:13px}
.timeline td.time{white-space:nowrap;width:1%;font:13px ui-monospace,"DejaVu Sans Mono",monospace;color:#4a5260}
.timeline td.frame{width:1%}.timeline td.frame img{height:72px;border-radius:3px;display:block}
.timeline tr.failed td{color:var(--bad)}
</style>"""


def _frame(path: Path, window: TimedCaption, height: int) -> str:
    """One frame of the window's middle as an ``<img>``, or why there is none."""
    thumbs = video_thumbnails(Clip(path, window.start, window.end), count=1, height=height)
    if not thumbs.images:
        return f'<span class="warn">no frame: {html.escape(thumbs.error or "")}</span>'
    uri = base64.b64encode(thumbs.images[0]).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{uri}" alt="frame at {clock((window.start + window.end) / 2)}">'


def _rows(path: Path, windows: Sequence[TimedCaption], height: int) -> str:
    rows = []
    for w in windows:
        span = f"{clock(w.start)} &ndash; {clock(w.end)}"
        if w.caption is None:
            rows.append(f'<tr class="failed" data-start="{w.start}" data-end="{w.end}"><td class="time">{span}</td>'
                        f'<td class="frame"></td><td>not captioned: {html.escape(w.error or "")}</td></tr>')
            continue
        rows.append(f'<tr data-start="{w.start}" data-end="{w.end}"><td class="time">{span}</td>'
                    f'<td class="frame">{_frame(path, w, height)}</td>'
                    f'<td class="gen">{html.escape(w.caption)}</td></tr>')
    return "\n".join(rows)


def timeline_report(path: str | Path, videos: Mapping[str, Sequence[TimedCaption] | str], title: str,
                    subtitle: str | None = None, height: int = 96) -> Path:
    """Write the timeline page (module docstring) to ``path``; returns ``path``.

    Args:
        videos: video file -> its windows in time order (``CaptionPipeline.caption_windows``), or the
            reason it could not be read.
        title, subtitle: the page's heading and the line under it.
        height: thumbnail height in pixels.
    """
    e = html.escape
    sections = []
    for video, windows in videos.items():
        if isinstance(windows, str):
            sections.append(f'<section class="video"><h2><code>{e(video)}</code></h2>'
                            f'<p class="missing">not captioned: {e(windows)}</p></section>')
            continue
        end = max((w.end for w in windows), default=0.0)
        sections.append(f'<section class="video" data-video="{e(video)}"><h2><code>{e(video)}</code></h2>'
                        f'<p class="sub">{len(windows)} windows over {clock(end)}</p>'
                        f'<table class="timeline"><thead><tr><th>Time</th><th>Frame</th><th>Caption</th></tr></thead>'
                        f'<tbody>\n{_rows(Path(video), windows, height)}\n</tbody></table></section>')
    return write_file(path, page(title, subtitle, _CSS + "\n".join(sections)))
