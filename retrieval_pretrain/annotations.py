"""Caption dataset formats -> one table of ``VideoEntry`` (video id, file, captions, split).

``data.format`` picks the reader; ``load_annotations`` dispatches on it:

* ``msrvtt``, ``msrvtt-clip4clip``, ``msvd``, ``vatex`` - the benchmarks, as CLIP4Caption (Tang et
  al., ACM MM 2021) and CLIP4Clip (Luo et al., 2021) read them: ``retrieval_pretrain.benchmark_formats``.
* ``hf`` - a Hugging Face dataset (hub id, ``save_to_disk`` folder, or parquet / json(l) / csv
  files) with ``data.columns`` naming the video, captions and split columns:
  ``retrieval_pretrain.hf_dataset``.
* ``jsonl`` (here) - one ``{"video": "rel/path.mp4", "captions": [...], "split": "train"}`` per
  line, ``video`` relative to ``data.videos``; the video id is that path without its extension.

Where an annotation names only an id, the file is ``<videos>/<id><ext>`` for the first extension
(the format's own first, then ``data.video_ext`` in order) that exists, else the first one.

``video_id`` is the table's key (features are cached by it): an id seen twice is a problem. A file
that cannot be read at all raises ``AnnotationError`` naming the file and why; a malformed entry,
or one left with no captions, becomes an ``AnnotationProblem`` and is skipped, never silently.

This module holds the table types and the helpers the readers share; the readers in the other
modules import it, so it imports them only when a format is loaded (no import cycle).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from retrieval_pretrain.config import DataConfig
from retrieval_pretrain.errors import DatasetError

_SPLIT_ALIASES = {"validate": "val", "validation": "val"}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def normalize_split(name: str) -> str:
    """``validate``/``validation`` -> ``val``; other names unchanged (stripped)."""
    name = str(name).strip()
    return _SPLIT_ALIASES.get(name.lower(), name)


@dataclass
class VideoEntry:
    """One video: its dataset id, its file (which may not exist), its captions and split.

    ``official_split`` is the video's split in the benchmark's own caption splits when the format
    knows it and the split files may differ from it: MSR-VTT videos ``video0-6512`` are train,
    ``6513-7009`` val, ``7010-9999`` test, whatever retrieval list (e.g. CLIP4Clip's 9k) puts them
    in. Stage 1 uses it to refuse training on caption-evaluation videos."""

    video_id: str
    path: Path
    captions: list[str]
    split: str
    official_split: str | None = None


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

    def split(self, name: str) -> list[VideoEntry]:
        """The entries of split ``name`` (``validate`` means ``val``), in file order."""
        name = normalize_split(name)
        return [e for e in self.entries if e.split == name]

    def splits(self) -> list[str]:
        """Split names present: train, val, test first, then others alphabetically."""
        names = {e.split for e in self.entries}
        return sorted(names, key=lambda s: (_SPLIT_ORDER.get(s, 3), s))


class _Table:
    """Collects entries; an id seen twice or an entry with no captions becomes a problem."""

    def __init__(self) -> None:
        self.ann = Annotations()
        self._seen: dict[str, str] = {}

    def problem(self, source: str, reason: str) -> None:
        self.ann.problems.append(AnnotationProblem(source, reason))

    def add(self, video_id: str, path: Path, captions: list[str], split: str, source: str,
            official_split: str | None = None) -> None:
        split = normalize_split(split)
        if not captions:
            self.problem(source, f"video '{video_id}' has no captions; skipped")
        elif video_id in self._seen:
            self.problem(source, f"duplicate video id '{video_id}' (first seen in split "
                                 f"'{self._seen[video_id]}'); skipped")
        else:
            self._seen[video_id] = split
            self.ann.entries.append(VideoEntry(video_id, Path(path), captions, split, official_split))


# ----------------------------------------------------------------------------- file helpers


def _file(path_str: str, key: str, fmt: str) -> Path:
    if not str(path_str).strip():
        raise AnnotationError(f"data.{key} is not set (format '{fmt}' needs it)")
    path = Path(path_str)
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found (data.{key})")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read: {e}") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON: {e}") from e


def _split_files(data: DataConfig, fmt: str, exclude: tuple[str, ...] = ()) -> dict[str, Path]:
    """``data.split_files`` minus ``exclude``, normalised split -> existing file."""
    out = {}
    for split, path_str in data.split_files.items():
        if split not in exclude:
            out[normalize_split(split)] = _file(path_str, f"split_files.{split}", fmt)
    return out


def _video_path(data: DataConfig, stem: str, first: str | None = ".mp4") -> Path:
    """``<videos>/stem<ext>`` for the first extension (``first``, then ``data.video_ext``) whose file
    exists, else the first extension."""
    folder = Path(data.videos)
    candidates = list(dict.fromkeys(e if e.startswith(".") else f".{e}" for e in [first or "", *data.video_ext] if e))
    for ext in candidates:
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return folder / f"{stem}{candidates[0] if candidates else ''}"


def _clean_captions(value: Any) -> tuple[list[str], str]:
    """A list of caption strings, stripped, or ``([], reason)`` when it is not one."""
    if not isinstance(value, list) or not value:
        return [], "empty captions list" if value == [] else f"captions must be a list, got {type(value).__name__}"
    bad = [c for c in value if not isinstance(c, str) or not c.strip()]
    if bad:
        return [], f"captions must be non-empty strings, got {bad[0]!r}"
    return [c.strip() for c in value], ""


def _no_split_files(data: DataConfig, fmt: str) -> None:
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
    for key in ("video", "split"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            return f"'{key}' must be a non-empty string"
    return _clean_captions(obj["captions"])[1]


def _load_jsonl(data: DataConfig, table: _Table) -> None:
    _no_split_files(data, "jsonl")
    path = _file(data.annotations, "annotations", "jsonl")
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            why = _jsonl_problem(obj)
        except json.JSONDecodeError as e:
            why = f"not valid JSON: {e.msg}"
        if why:
            table.problem(f"{path}:{n}", f"{why}; skipped")
            continue
        rel = Path(obj["video"].strip())  # the id is the relative path without its extension
        table.add(rel.with_suffix("").as_posix(), Path(data.videos) / rel, _clean_captions(obj["captions"])[0],
                  obj["split"], f"{path}:{n}")


def _reader(fmt: str) -> Callable[[DataConfig, _Table], None]:
    """The reader of a format. The readers outside this module import it, so they are imported
    here, on first use, rather than at the top."""
    if fmt == "jsonl":
        return _load_jsonl
    if fmt == "hf":
        from retrieval_pretrain.hf_dataset import load_hf

        return load_hf
    from retrieval_pretrain import benchmark_formats as bench

    readers = {"msrvtt": bench.load_msrvtt, "msrvtt-clip4clip": bench.load_msrvtt_clip4clip,
               "msvd": bench.load_msvd, "vatex": bench.load_vatex}
    if fmt not in readers:
        raise AnnotationError(f"unknown data.format '{fmt}'; one of: jsonl, hf, {', '.join(readers)}")
    return readers[fmt]


def load_annotations(data: DataConfig) -> Annotations:
    """Read the dataset ``data`` describes into one table (see the module docstring per format).

    Raises:
        AnnotationError: unknown format, or a file that is missing or cannot be read at all.
    """
    reader = _reader(data.format)
    table = _Table()
    reader(data, table)
    return table.ann
