"""Captioned windows as a subtitle file: WebVTT (``.vtt``, through webvtt-py) or SubRip (``.srt``,
through srt), chosen by the file's extension.

One cue per window with a caption, in time order (windows that could not be read have none). The
libraries write the files' syntax; the one thing done here is WebVTT's escaping of ``&``, ``<`` and
``>`` in cue text, which webvtt-py leaves to its caller (a caption holding ``<`` would otherwise open
a tag, one holding ``-->`` end the cue's timing line). SubRip has no escaping: text is as written.
The file is written atomically (``foundation.atomic.write_file``): a player never sees half of it.

A file already at the path is replaced only when vcap wrote it (the folder-ownership rule): a WebVTT
file carries a ``NOTE written by vcap caption`` block after its header (players skip NOTE blocks); a
SubRip file has no place for such a mark, so an existing ``.srt`` is never replaced.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Iterable, Sequence

import srt
import webvtt
from webvtt.models import Timestamp

from caption.windows import TimedCaption
from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import ConfigError

FORMATS = {".vtt": "WebVTT", ".srt": "SubRip"}
MARK = "written by vcap caption"  # the NOTE block of every WebVTT file vcap writes


def _ours(path: Path) -> bool:
    """Whether the WebVTT file at ``path`` is one vcap wrote (its header's NOTE block)."""
    try:
        if path.stat().st_size > 64 << 20:
            return False
        return MARK in webvtt.from_string(path.read_text(encoding="utf-8")).header_comments
    except Exception:  # any failure to read or parse it: not a file vcap wrote
        return False


def check_subtitles_path(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse a subtitles path before any work (``ConfigError``): it must end in ``.vtt`` or ``.srt``,
    must not be one of the ``inputs``, and what stands there already must be a regular file (not a
    folder or a symbolic link, which the atomic rename would replace)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--subtitles {path}: give a file name ending in .vtt (WebVTT) or .srt (SubRip)")
    if path.is_symlink():
        raise ConfigError(f"--subtitles {path} is a symbolic link; give the file itself")
    if os.path.lexists(path) and not path.is_file():
        raise ConfigError(f"--subtitles {path} exists and is not a regular file; give a new file name")
    if path.is_file() and not (path.suffix.lower() == ".vtt" and _ours(path)):
        made = ("a SubRip file has no mark of who wrote it, so vcap never replaces one" if path.suffix.lower() == ".srt"
                else "not a WebVTT file vcap wrote")
        raise ConfigError(f"--subtitles {path} exists ({made}); nothing was changed - move it away or give a new "
                          "file name")
    for given in inputs:
        if Path(given).resolve() == path.resolve():
            raise ConfigError(f"--subtitles {path} is one of the videos to caption; give another file name")
    return path


def _vtt_time(x: float) -> str:
    ms = round(x * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    return str(Timestamp(h, m, rest // 1000, rest % 1000))


def _vtt_text(caption: str) -> str:
    return caption.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def subtitles_text(windows: Sequence[TimedCaption], kind: str) -> str:
    """The subtitle file's text: ``kind`` ``".vtt"`` (WebVTT) or ``".srt"`` (SubRip)."""
    cues = [w for w in windows if w.caption is not None]
    if kind == ".vtt":
        captions = [webvtt.Caption(_vtt_time(w.start), _vtt_time(w.end), _vtt_text(w.caption)) for w in cues]
        return webvtt.WebVTT(captions=captions, header_comments=[MARK]).content
    if kind == ".srt":
        return srt.compose([srt.Subtitle(i + 1, datetime.timedelta(seconds=w.start),
                                         datetime.timedelta(seconds=w.end), w.caption)
                            for i, w in enumerate(cues)])
    raise ValueError(f"unknown subtitles format {kind!r}; expected one of {', '.join(FORMATS)}")


def write_subtitles(path: str | Path, windows: Sequence[TimedCaption]) -> Path:
    """Write ``windows`` to ``path`` as WebVTT or SubRip (by its extension), atomically; returns it."""
    path = Path(path)
    return write_file(path, subtitles_text(windows, path.suffix.lower()))
