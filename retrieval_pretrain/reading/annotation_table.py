"""The table every annotation format is read into: ``VideoEntry`` rows (video id, file, captions,
split), ``AnnotationProblem``s for malformed entries that were skipped (named, counted, never
silent), ``AnnotationError`` for a file that cannot be read at all - and the helpers the format
readers share (required files, split files, video paths from ids, caption cleaning, split names),
and the reader of the toolkit's own ``jsonl`` format (``load_jsonl``).

A video path outside ``data.videos`` (``../../x.mp4``, or an absolute path elsewhere) is *kept*
and recorded in ``Annotations.outside`` (``file:line`` and the path), which ``load_annotations``
warns about on stderr and ``vcap data check`` lists (and is not OK with). Kept, not refused: a
dataset may deliberately live on several disks; setting ``data.videos`` to a folder that holds them
all (``/``, say) silences the warning. The check is lexical (``..`` resolved, symbolic links not):
links inside the video folder that point elsewhere are the user's own layout. With ``data.videos``
unset, paths are taken as given and not checked."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.reading.clips import Clip, clip_id, range_problem
from retrieval_pretrain.reading.data_config import DataConfig

_SPLIT_ALIASES = {"validate": "val", "validation": "val"}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
# What a split name probably means, for hints only (never to rename a split): case, and common aliases.
_SPLIT_ROLES = {"training": "train", "dev": "val", "valid": "val", "validate": "val", "validation": "val",
                "testing": "test"}


def normalize_split(name: str) -> str:
    """``validate``/``validation`` -> ``val``; other names unchanged (stripped)."""
    name = str(name).strip()
    return _SPLIT_ALIASES.get(name.lower(), name)


def split_role(name: str) -> str:
    """The split a name probably means, for hints: lower-cased, ``dev``/``valid``/``validation`` ->
    ``val``, ``training`` -> ``train``, ``testing`` -> ``test`` (``Train`` -> ``train``)."""
    name = str(name).strip().lower()
    return _SPLIT_ROLES.get(name, name)


def near_misses(name: str, present: list[str]) -> list[str]:
    """The names in ``present`` other than ``name`` that probably mean the same split."""
    return [s for s in present if s != normalize_split(name) and split_role(s) == split_role(name)]


def splits_found(ann: "Annotations", name: str) -> str:
    """``splits found: a, b`` for a message about the empty split ``name``, plus ``did you mean
    'Train'?`` when one of them is a near miss of it (see ``split_role``)."""
    present = ann.splits()
    text = f"splits found: {', '.join(present) or 'none'}"
    near = near_misses(name, present)
    return text + (f"; did you mean '{near[0]}'?" if near else "")


@dataclass
class VideoEntry:
    """One video: its dataset id, its file (which may not exist), its captions and split.

    ``official_split`` is the video's split in the benchmark's own caption splits when the format
    knows it and the split files may differ from it: MSR-VTT videos ``video0-6512`` are train,
    ``6513-7009`` val, ``7010-9999`` test, whatever retrieval list (e.g. CLIP4Clip's 9k) puts them
    in. Stage 1 uses it to refuse training on caption-evaluation videos. ``label``: the class of a
    video of a labelled dataset (``retrieval_pretrain.reading.label_formats``); stage 1 then trains on the
    label through a random prompt template instead of a caption."""

    video_id: str
    path: Path
    captions: list[str]
    split: str
    official_split: str | None = None
    label: str | None = None  # label datasets: the class (its captions are ``[label]``)
    start: float | None = None  # a time range of the file (seconds), or None: the whole file
    end: float | None = None
    source_id: str | None = None  # the id of the whole video a range is part of (dense formats)

    @property
    def clip(self) -> Clip:
        """What to read: the file, or the range of it (``clips.Clip``)."""
        return Clip(self.path, self.start, self.end)

    @property
    def source(self) -> str:
        """The id of the whole video: ``source_id``, else the entry's own id."""
        return self.source_id or self.video_id


class AnnotationError(DatasetError):
    """An annotation file that cannot be read at all; the message names the file and why."""


@dataclass
class AnnotationProblem:
    """A malformed entry that was skipped: where (``file:line`` or ``file (id)``) and why."""

    source: str
    reason: str


@dataclass
class Annotations:
    """The dataset as one table, plus the entries that were skipped and why."""

    entries: list[VideoEntry] = field(default_factory=list)
    problems: list[AnnotationProblem] = field(default_factory=list)
    outside: list[AnnotationProblem] = field(default_factory=list)  # kept entries whose video is outside data.videos
    clipped: list[AnnotationProblem] = field(default_factory=list)  # kept ranges cut at the video's duration

    def split(self, name: str) -> list[VideoEntry]:
        """The entries of split ``name`` (``validate`` means ``val``), in file order."""
        name = normalize_split(name)
        return [e for e in self.entries if e.split == name]

    def splits(self) -> list[str]:
        """Split names present: train, val, test first, then others alphabetically."""
        names = {e.split for e in self.entries}
        return sorted(names, key=lambda s: (_SPLIT_ORDER.get(s, 3), s))


class Table:
    """Collects entries; an id seen twice or an entry with no captions becomes a problem. With
    ``videos`` (``data.videos``), a kept entry whose file is outside it is recorded in ``outside``."""

    def __init__(self, videos: str | Path = "") -> None:
        self.ann = Annotations()
        self._seen: dict[str, str] = {}
        self._videos = Path(videos) if str(videos).strip() else None

    def problem(self, source: str, reason: str) -> None:
        self.ann.problems.append(AnnotationProblem(source, reason))

    def add(self, video_id: str, path: Path, captions: list[str], split: str, source: str,
            official_split: str | None = None, label: str | None = None,
            span: tuple[float, float] | None = None, source_id: str | None = None) -> None:
        """Add one entry (``span``: its time range in the file, then ``video_id`` should be a
        ``clips.clip_id``; ``source_id``: the whole video's id)."""
        split = normalize_split(split)
        if not captions:
            self.problem(source, f"video '{video_id}' has no captions; skipped")
        elif video_id in self._seen:
            self.problem(source, f"duplicate video id '{video_id}' (first seen in split "
                                 f"'{self._seen[video_id]}'); skipped")
        else:
            self._seen[video_id] = split
            start, end = span if span is not None else (None, None)
            self.ann.entries.append(VideoEntry(video_id, Path(path), captions, split, official_split, label,
                                               start, end, source_id))
            if self._videos is not None and not _inside(Path(path), self._videos):
                given = _as_given(Path(path), self._videos)
                self.ann.outside.append(AnnotationProblem(
                    source, f"video path '{given}' is outside the video folder {self._videos}"))


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or under it, lexically (``..`` resolved, links not followed)."""
    p, f = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _as_given(path: Path, folder: Path) -> str:
    """The path as the annotation wrote it: relative to ``folder`` when joined to it, else as is."""
    try:
        return path.relative_to(folder).as_posix()  # lexical: keeps the '..'
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- file helpers


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a video file one could open (without decoding it), or None."""
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as e:
            return "symbolic link loop" if e.errno == errno.ELOOP else f"broken symbolic link (to {os.readlink(path)})"
    if path.is_dir():
        return "a folder, not a video file"
    if not path.exists():
        return "video file not found"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "no permission to read it"
    return None


def required_file(path_str: str, key: str, fmt: str) -> Path:
    if not str(path_str).strip():
        raise AnnotationError(f"data.{key} is not set (format '{fmt}' needs it)")
    path = Path(path_str)
    if not path.is_file():
        what = ("file not found" if not os.path.exists(path) else "is a folder, not a file" if path.is_dir()
                else "is not a regular file (a device, pipe or socket)")
        raise AnnotationError(f"{path}: {what} (data.{key})")
    return path


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read: {e}") from e


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON: {e}") from e
    except RecursionError:
        raise AnnotationError(f"{path}: not valid JSON: nested too deeply") from None


def split_files(data: DataConfig, fmt: str, exclude: tuple[str, ...] = ()) -> dict[str, Path]:
    """``data.split_files`` minus ``exclude``, normalised split -> existing file."""
    out = {}
    for split, path_str in data.split_files.items():
        if split not in exclude:
            out[normalize_split(split)] = required_file(path_str, f"split_files.{split}", fmt)
    return out


def video_path(data: DataConfig, stem: str, first: str | None = ".mp4") -> Path:
    """``<videos>/stem<ext>`` for the first extension (``first``, then ``data.video_ext``) whose file
    exists, else the first extension."""
    folder = Path(data.videos)
    candidates = list(dict.fromkeys(e if e.startswith(".") else f".{e}" for e in [first or "", *data.video_ext] if e))
    for ext in candidates:
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return folder / f"{stem}{candidates[0] if candidates else ''}"


NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows); longer ones make every stat() fail
PATH_MAX = 4095  # bytes in a whole path (Linux)
_EXT_ROOM = 8  # an id gets an extension (.mp4, .webm ...) before it is a file name


def path_problem(text: str) -> str:
    """Why ``text`` (a path from a user's table) cannot name a file on this system, or ``""``: a
    control character or NUL, text that is not valid Unicode (a lone surrogate from a JSON
    ``\\udc80``-style escape), a part longer than ``NAME_MAX`` bytes or a whole longer than ``PATH_MAX``."""
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        return f"{text[:60]!r} holds a control character ({bad!r})"
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{text[:60]!r} is not valid Unicode text (a lone surrogate)"
    if len(raw) > PATH_MAX or any(len(part.encode()) > NAME_MAX - _EXT_ROOM for part in text.split("/")):
        return f"{text[:40]!r}... ({len(raw)} bytes) is too long to be a file name"
    return ""


def split_cell(value: Any, what: str = "split") -> tuple[str, str]:
    """``(split, "")`` for a non-empty string without control characters, else ``("", why)``."""
    if not isinstance(value, str) or not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value.strip()):
        return "", f"{what} must be a non-empty string without control characters, got {str(value)[:40]!r}"
    return value.strip(), ""


def video_cell(value: Any) -> tuple[str, str]:
    """``(path text, "")`` for a video cell that names a file (a non-empty string, not ``/``, ``.``,
    ``..`` or a folder ending in ``/``, no NUL), or ``("", why)``. Checked cell by cell, never coerced."""
    if not isinstance(value, str):
        return "", f"'video' must be a string, got {type(value).__name__}"
    text = value.strip()
    if not text:
        return "", "'video' must be a non-empty string"
    if "\x00" in text or text.endswith(("/", "\\")) or Path(text).name in ("", ".", ".."):
        return "", f"'video' {text[:80]!r} does not name a file"
    why = path_problem(text)
    return ("", f"'video' {why}") if why else (text, "")


def clean_captions(value: Any) -> tuple[list[str], str]:
    """A list of caption strings, stripped, or ``([], reason)`` when it is not one."""
    if not isinstance(value, list) or not value:
        return [], "empty captions list" if value == [] else f"captions must be a list, got {type(value).__name__}"
    bad = [c for c in value if not isinstance(c, str) or not c.strip()]
    if bad:
        return [], f"captions must be non-empty strings, got {bad[0]!r}"
    return [c.strip() for c in value], ""


def no_split_files(data: DataConfig, fmt: str) -> None:
    """``AnnotationError`` when ``data.split_files`` is set for a format that does not read it
    (``load_annotations`` calls it for each format whose ``formats.Format.split_files`` is False)."""
    if data.split_files:
        raise AnnotationError(f"format '{fmt}' takes its splits from data.annotations; "
                              f"data.split_files ({', '.join(data.split_files)}) is not used - remove it")


# ----------------------------------------------------------------------------- jsonl


def _jsonl_problem(obj: Any) -> str:
    """Why a parsed jsonl line is not a valid entry (``""`` when it is)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [k for k in ("video", "captions", "split") if k not in obj]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    why = split_cell(obj["split"], "'split'")[1]
    if why:
        return why
    why = video_cell(obj["video"])[1]
    if why:
        return why
    if ("start" in obj) != ("end" in obj):
        return "a time range needs both 'start' and 'end' (seconds)"
    if "start" in obj:
        why = range_problem(obj["start"], obj["end"])
        if why:
            return f"bad time range: {why}"
    return clean_captions(obj["captions"])[1]


def load_jsonl(data: DataConfig, table: Table) -> None:
    """``data.format: jsonl``, the toolkit's own format: one ``{"video": "rel/path.mp4", "captions":
    [...], "split": "train"}`` per line, ``video`` relative to ``data.videos``; the video id is that
    path without its extension. Optional ``"start"`` and ``"end"`` (seconds, both or neither) make
    the entry that part of the file; its id is then ``clips.clip_id`` (``rel/path[12.5-20]``)."""
    path = required_file(data.annotations, "annotations", "jsonl")
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            why = _jsonl_problem(obj)
        except json.JSONDecodeError as e:
            why = f"not valid JSON: {e.msg}"
        except RecursionError:
            why = "not valid JSON: nested too deeply"
        if why:
            table.problem(f"{path}:{n}", f"{why}; skipped")
            continue
        rel = Path(obj["video"].strip())  # the id is the relative path without its extension
        whole = rel.with_suffix("").as_posix()
        span = (float(obj["start"]), float(obj["end"])) if "start" in obj else None
        table.add(clip_id(whole, *(span or (None, None))), Path(data.videos) / rel,
                  clean_captions(obj["captions"])[0], obj["split"], f"{path}:{n}", span=span,
                  source_id=whole if span else None)
