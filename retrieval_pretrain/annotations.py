"""Caption dataset formats -> one table of ``VideoEntry`` (video id, file, captions, split).

The benchmarks as CLIP4Caption (Tang et al., ACM MM 2021) and CLIP4Clip (Luo et al., 2021) read
them, plus ``jsonl`` for new datasets. ``data.format`` picks one:

* ``msrvtt`` - the official ``*_videodatainfo.json`` (``videos``: video_id/split, ``sentences``:
  video_id/caption). Splits come from the file (``validate`` becomes ``val``).
* ``msrvtt-clip4clip`` - ``data.split_files.<split>`` are csv files with a ``video_id`` column. One
  with a ``sentence`` column too (``MSRVTT_JSFUSION_test.csv``, 1k-A) brings its own captions, one
  per row, and needs nothing else; one without (``MSRVTT_train.9k.csv``) takes each video's
  captions from the ``sentences`` of ``data.annotations`` (``MSRVTT_data.json``).
* ``msvd`` - ``data.annotations`` is the raw-captions pickle (``vidN -> [[token, ...], ...]``,
  tokens joined with spaces), read by an unpickler that admits only dict/list/str;
  ``data.split_files.{train,val,test}`` are the ``*_list_mapping.txt`` id lists; the optional
  ``data.split_files.youtube_mapping`` (``youtubeid_start_end vidN`` per line) names the raw files
  ``<videos>/<youtubeid_start_end>.avi``; without it the file is ``<videos>/<vidN>.<ext>``.
* ``vatex`` - JSON lists of ``{"videoID", "enCap"}``: either one file per split in
  ``data.split_files.<split>`` (the official training/validation/public-test files), or a single
  ``data.annotations`` file whose items each carry a ``"split"`` key - not both.
  Files are ``<videos>/<videoID>.mp4``.
* ``jsonl`` - one ``{"video": "rel/path.mp4", "captions": [...], "split": "train"}`` per line,
  ``video`` relative to ``data.videos``; the video id is that path without its extension.

Where an annotation names only an id, the file is ``<videos>/<id><ext>`` for the first extension
(the format's own first, then ``data.video_ext`` in order) that exists, else the first one.

``video_id`` is the table's key (features are cached by it): an id seen twice is a problem. A file
that cannot be read at all raises ``AnnotationError`` naming the file and why; a malformed entry,
or one left with no captions, becomes an ``AnnotationProblem`` and is skipped, never silently.

``datasets`` is not used: these files are small (a few MB) and parse in well under a second with
the standard library, while ``datasets``' JSON/CSV builders write an Arrow cache and fail a whole
file on one bad line, where we must name and skip that line.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import pickle
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


def _sentences(path: Path, doc: Any, table: _Table) -> dict[str, list[str]]:
    """MSR-VTT's ``sentences`` list -> ``video_id -> [caption, ...]`` (file order)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("sentences"), list):
        raise AnnotationError(f"{path}: not the MSR-VTT layout (needs a 'sentences' list)")
    captions: dict[str, list[str]] = {}
    for i, s in enumerate(doc["sentences"]):
        where = f"{path} (sentences[{i}])"
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("video_id", "caption")):
            table.problem(where, "needs string 'video_id' and 'caption'; skipped")
        elif not s["caption"].strip():
            table.problem(f"{where} {s['video_id']}", "empty caption; skipped")
        else:
            captions.setdefault(s["video_id"], []).append(s["caption"].strip())
    return captions


def _no_split_files(data: DataConfig, fmt: str) -> None:
    if data.split_files:
        raise AnnotationError(f"format '{fmt}' takes its splits from data.annotations; "
                              f"data.split_files ({', '.join(data.split_files)}) is not used - remove it")


# ----------------------------------------------------------------------------- formats


def _load_msrvtt(data: DataConfig, table: _Table) -> None:
    _no_split_files(data, "msrvtt")
    path = _file(data.annotations, "annotations", "msrvtt")
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list):
        raise AnnotationError(f"{path}: not the MSR-VTT videodatainfo layout (needs 'videos', 'sentences')")
    captions = _sentences(path, doc, table)
    known = set()
    for i, v in enumerate(doc["videos"]):
        if not isinstance(v, dict) or not all(isinstance(v.get(k), str) for k in ("video_id", "split")):
            table.problem(f"{path} (videos[{i}])", "needs string 'video_id' and 'split'; skipped")
            continue
        vid = v["video_id"]
        known.add(vid)
        table.add(vid, _video_path(data, vid), captions.get(vid, []), v["split"], f"{path} ({vid})")
    for vid in sorted(captions.keys() - known):
        table.problem(f"{path} ({vid})", f"{len(captions[vid])} captions for a video id not in 'videos'; skipped")


def msrvtt_official_split(video_id: str) -> str | None:
    """MSR-VTT's official caption split of ``videoN`` (train 0-6512, val 6513-7009, test 7010-9999,
    Xu et al., CVPR 2016); None for ids outside that scheme."""
    digits = video_id[len("video"):] if video_id.startswith("video") else ""
    if not digits.isdigit():
        return None
    n = int(digits)
    return "train" if n <= 6512 else "val" if n <= 7009 else "test" if n <= 9999 else None


def _load_msrvtt_clip4clip(data: DataConfig, table: _Table) -> None:
    fmt = "msrvtt-clip4clip"
    splits = _split_files(data, fmt)
    if not splits:
        raise AnnotationError(f"format '{fmt}' needs data.split_files.<split> csv files "
                              f"(e.g. train=MSRVTT_train.9k.csv, test=MSRVTT_JSFUSION_test.csv)")
    json_captions: dict[str, list[str]] | None = None
    for split, csv_path in splits.items():
        reader = csv.DictReader(io.StringIO(_read_text(csv_path)))
        columns = reader.fieldnames or []
        if "video_id" not in columns:
            raise AnnotationError(f"{csv_path}: no 'video_id' column (columns: {', '.join(columns) or 'none'})")
        per_video: dict[str, list[str]] = {}
        first_line: dict[str, int] = {}  # where each video is named first, for problems
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            vid = (row.get("video_id") or "").strip()
            if not vid:
                table.problem(where, "empty video_id; skipped")
                continue
            first_line.setdefault(vid, reader.line_num)
            sentence = (row.get("sentence") or "").strip()
            per_video.setdefault(vid, []).extend([sentence] if sentence else [])
            if "sentence" in columns and not sentence:
                table.problem(where, f"empty sentence for '{vid}'; skipped")
        if "sentence" not in columns:
            if json_captions is None:
                if not str(data.annotations).strip():
                    raise AnnotationError(f"{csv_path}: has no 'sentence' column, so split '{split}' takes its "
                                          f"captions from data.annotations (MSRVTT_data.json), which is not set")
                path = _file(data.annotations, "annotations", fmt)
                json_captions = _sentences(path, _read_json(path), table)
            per_video = {vid: list(json_captions.get(vid, [])) for vid in per_video}
        for vid, caps in per_video.items():
            table.add(vid, _video_path(data, vid), caps, split, f"{csv_path}:{first_line[vid]}",
                      official_split=msrvtt_official_split(vid))


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what pickle opcodes build themselves, plus ``dict``/``list``/``str``: a pickle
    that names any other global (``os.system``, ``builtins.eval``, ...) is refused unrun."""

    _ALLOWED = {("builtins", "dict"), ("builtins", "list"), ("builtins", "str")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refused global '{module}.{name}' (only dict/list/str are allowed)")


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read: {e}") from e
    except Exception as e:  # any malformed or refused pickle is unreadable as a whole
        raise AnnotationError(f"{path}: not a plain dict/list/str pickle: {type(e).__name__}: {e}") from e


def _msvd_captions(path: Path, vid: str, raw: Any, table: _Table) -> list[str]:
    """``[[token, ...], ...]`` (or caption strings) -> captions; bad ones become problems."""
    caps = []
    for j, cap in enumerate(raw if isinstance(raw, list) else [raw]):
        if isinstance(cap, list) and all(isinstance(t, str) for t in cap):
            cap = " ".join(cap)
        if isinstance(cap, str) and cap.strip():
            caps.append(" ".join(cap.split()))
        else:
            table.problem(f"{path} ({vid} caption {j})", f"not a non-empty list of token strings: {cap!r}; skipped")
    return caps


def _load_msvd(data: DataConfig, table: _Table) -> None:
    path = _file(data.annotations, "annotations", "msvd")
    raw = _load_pickle(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a dict vidN -> captions, got {type(raw).__name__}")
    youtube: dict[str, str] = {}
    if "youtube_mapping" in data.split_files:
        ypath = _file(data.split_files["youtube_mapping"], "split_files.youtube_mapping", "msvd")
        for n, line in enumerate(_read_text(ypath).splitlines(), 1):
            parts = line.split()
            if len(parts) == 2:
                youtube[parts[1]] = parts[0]
            elif parts:
                table.problem(f"{ypath}:{n}", "expected 'youtubeid_start_end vidN'; skipped")
    splits = _split_files(data, "msvd", exclude=("youtube_mapping",))
    if not splits:
        raise AnnotationError("format 'msvd' needs data.split_files.{train,val,test} (the *_list_mapping.txt id lists)")
    for split, list_path in splits.items():
        for n, line in enumerate(_read_text(list_path).splitlines(), 1):
            vid = line.strip()
            if not vid:
                continue
            where = f"{list_path}:{n}"
            if vid not in raw:
                table.problem(where, f"video id '{vid}' has no captions in {path}; skipped")
                continue
            caps = _msvd_captions(path, vid, raw[vid], table)
            video = _video_path(data, youtube[vid], ".avi") if vid in youtube else _video_path(data, vid, None)
            table.add(vid, video, caps, split, where)


def _vatex_items(path: Path, split: str | None, data: DataConfig, table: _Table) -> None:
    """One VATEX JSON list; ``split`` None: each item's own ``"split"``."""
    items = _read_json(path)
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of {{videoID, enCap}}, got {type(items).__name__}")
    if split is None and not any(isinstance(it, dict) and "split" in it for it in items):
        raise AnnotationError(f"{path}: no item has a 'split' key; give one file per split in "
                              f"data.split_files.<split> instead of data.annotations")
    for i, item in enumerate(items):
        vid = item.get("videoID") if isinstance(item, dict) else None
        where = f"{path} (item {i}{', ' + vid if isinstance(vid, str) else ''})"
        item_split = split if split is not None else item.get("split") if isinstance(item, dict) else None
        if not isinstance(vid, str) or not vid.strip() or not isinstance(item_split, str) or not item_split.strip():
            table.problem(where, "needs a string 'videoID'" + ("" if split else " and 'split'") + "; skipped")
            continue
        caps, why = _clean_captions(item.get("enCap", []))
        if why and item.get("enCap"):  # an empty/absent enCap is reported as "no captions" by add()
            table.problem(where, f"enCap: {why}; skipped")
            continue
        vid = vid.strip()
        table.add(vid, _video_path(data, vid), caps, item_split, where)


def _load_vatex(data: DataConfig, table: _Table) -> None:
    if data.split_files and str(data.annotations).strip():
        raise AnnotationError("format 'vatex': set either data.annotations (one file whose items carry "
                              "'split') or data.split_files.<split> (one file per split), not both")
    if data.split_files:
        for split, path in _split_files(data, "vatex").items():
            _vatex_items(path, split, data, table)
    else:
        _vatex_items(_file(data.annotations, "annotations", "vatex"), None, data, table)


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


_LOADERS: dict[str, Callable[[DataConfig, _Table], None]] = {
    "msrvtt": _load_msrvtt,
    "msrvtt-clip4clip": _load_msrvtt_clip4clip,
    "msvd": _load_msvd,
    "vatex": _load_vatex,
    "jsonl": _load_jsonl,
}


def load_annotations(data: DataConfig) -> Annotations:
    """Read the dataset ``data`` describes into one table (see the module docstring per format).

    Raises:
        AnnotationError: unknown format, or a file that is missing or cannot be read at all.
    """
    loader = _LOADERS.get(data.format)
    if loader is None:
        raise AnnotationError(f"unknown data.format '{data.format}'; one of: {', '.join(_LOADERS)}")
    table = _Table()
    loader(data, table)
    return table.ann
