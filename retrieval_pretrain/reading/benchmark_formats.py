"""The benchmark caption formats, read as CLIP4Caption (Tang et al., ACM MM 2021) and CLIP4Clip
(Luo et al., 2021) read them. ``retrieval_pretrain.reading.annotations.load_annotations`` dispatches here
on ``data.format`` (the table of formats: ``retrieval_pretrain.reading.formats``):

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

Each reader is ``load_<format>(data, table)``: it adds entries and problems to the
``annotations.Table`` it is given and raises ``AnnotationError`` for a file it cannot read at all.
Every cell is checked where it is read, never coerced: an id must name one file in the video
folder (``id_cell``: a non-empty string, no ``/``, ``\\``, control character or NUL, not ``.`` /
``..``, at most 255 bytes as a file name), a split a non-empty string; a row that fails is named
(``file:line`` or ``file (id)``), counted and skipped. A csv file whose header repeats a column, or
that the csv module cannot parse, is refused whole (which column is meant is unknown); a row with
more cells than the header (an unquoted comma in a sentence?) is a skipped row. ``id_cell`` and
``path_problem`` are shared with ``label_formats`` and ``hf_dataset``.

``datasets`` is not used: these files are small (a few MB) and parse in well under a second with
the standard library, while ``datasets``' JSON/CSV builders write an Arrow cache and fail a whole
file on one bad line, where we must name and skip that line.
"""

from __future__ import annotations

import builtins
import csv
import io
import pickle
from pathlib import Path
from typing import Any, Iterator

from retrieval_pretrain.reading.annotation_table import (  # noqa: F401  (path_problem, split_cell: shared from here)
    AnnotationError,
    Table,
    clean_captions,
    path_problem,
    read_json,
    read_text,
    required_file,
    split_cell,
    split_files,
    video_path,
)
from retrieval_pretrain.reading.data_config import DataConfig


def id_cell(value: Any, what: str = "video id") -> tuple[str, str]:
    """``(id, "")`` for a cell naming one file of the video folder by its stem (``videoN``,
    ``youtubeid_start_end``): a non-empty string, stripped, that is one file name (no ``/``, ``\\``,
    not ``.`` / ``..``; ``path_problem``). Else ``("", why)``. Checked cell by cell, never coerced:
    an id that is a number is not the same text as one that is a string."""
    if not isinstance(value, str):
        return "", f"{what} must be a string, got {type(value).__name__} {str(value)[:40]}"
    text = value.strip()
    if not text:
        return "", f"empty {what}"
    if any(c in text for c in "/\\") or text in (".", ".."):
        return "", f"{what} {text[:80]!r} is not one file name (it would leave the video folder or name no file)"
    why = path_problem(text)
    return ("", f"{what} {why}") if why else (text, "")


def csv_rows(path: Path, text: str, required: tuple[str, ...] = ()) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """``(columns, (line, row) ...)`` of a csv file's text. Refused whole (``AnnotationError``
    naming the file): a header that repeats a column, lacks one of ``required``, or text the csv
    module cannot parse (a field over its limit, an unterminated quote). A row with more cells
    than the header has its extra cells under the key ``None`` (``extra_cells`` names it)."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        columns = list(reader.fieldnames or [])
    except csv.Error as e:
        raise AnnotationError(f"{path}:1: not a csv header: {e}") from None
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise AnnotationError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header; "
                              "which one is meant is unknown")
    missing = [c for c in required if c not in columns]
    if missing:
        raise AnnotationError(f"{path}: no {', '.join(map(repr, missing))} column "
                              f"(columns: {', '.join(columns) or 'none'})")

    def rows() -> Iterator[tuple[int, dict]]:
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as e:
            line = reader.line_num + 1  # the line it stopped in
            raise AnnotationError(f"{path}:{line}: not valid csv: {e}") from None

    return columns, rows()


def extra_cells(row: dict, columns: list[str]) -> str:
    """Why a csv row with more cells than the header is skipped, or ``""``."""
    extra = row.get(None)
    if not extra:
        return ""
    return (f"{len(columns) + len(extra)} cells for {len(columns)} columns (an unquoted comma?): "
            f"{str(extra)[:60]}")


def _sentences(path: Path, doc: Any, table: Table) -> dict[str, list[str]]:
    """MSR-VTT's ``sentences`` list -> ``video_id -> [caption, ...]`` (file order)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("sentences"), list):
        raise AnnotationError(f"{path}: not the MSR-VTT layout (needs a 'sentences' list)")
    captions: dict[str, list[str]] = {}
    for i, s in enumerate(doc["sentences"]):
        where = f"{path} (sentences[{i}])"
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("video_id", "caption")):
            table.problem(where, "needs string 'video_id' and 'caption'; skipped")
        elif not s["caption"].strip():
            table.problem(f"{where} {s['video_id'][:80]!r}", "empty caption; skipped")
        else:
            captions.setdefault(s["video_id"].strip(), []).append(s["caption"].strip())
    return captions


def load_msrvtt(data: DataConfig, table: Table) -> None:
    path = required_file(data.annotations, "annotations", "msrvtt")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list):
        raise AnnotationError(f"{path}: not the MSR-VTT videodatainfo layout (needs 'videos', 'sentences')")
    captions = _sentences(path, doc, table)
    known = set()
    for i, v in enumerate(doc["videos"]):
        where = f"{path} (videos[{i}])"
        if not isinstance(v, dict):
            table.problem(where, f"needs an object with 'video_id' and 'split', got {type(v).__name__}; skipped")
            continue
        vid, why = id_cell(v.get("video_id"), "'video_id'")
        split, why = (split_cell(v.get("split"), "'split'") if not why else ("", why))
        if isinstance(v.get("video_id"), str):
            known.add(v["video_id"].strip())  # its captions are not "for a video id not in 'videos'"
        if why:
            table.problem(where, f"{why}; skipped")
            continue
        table.add(vid, video_path(data, vid), captions.get(vid, []), split, f"{path} ({vid})")
    for vid in sorted(captions.keys() - known):
        table.problem(f"{path} ({vid[:80]!r})",
                      f"{len(captions[vid])} captions for a video id not in 'videos'; skipped")


def msrvtt_official_split(video_id: str) -> str | None:
    """MSR-VTT's official caption split of ``videoN`` (train 0-6512, val 6513-7009, test 7010-9999,
    Xu et al., CVPR 2016); None for ids outside that scheme."""
    digits = video_id[len("video"):] if video_id.startswith("video") else ""
    if not digits.isdigit():
        return None
    n = int(digits)
    return "train" if n <= 6512 else "val" if n <= 7009 else "test" if n <= 9999 else None


def load_msrvtt_clip4clip(data: DataConfig, table: Table) -> None:
    fmt = "msrvtt-clip4clip"
    splits = split_files(data, fmt)
    if not splits:
        raise AnnotationError(f"format '{fmt}' needs data.split_files.<split> csv files "
                              f"(e.g. train=MSRVTT_train.9k.csv, test=MSRVTT_JSFUSION_test.csv)")
    json_captions: dict[str, list[str]] | None = None
    for split, csv_path in splits.items():
        columns, rows = csv_rows(csv_path, read_text(csv_path), required=("video_id",))
        per_video: dict[str, list[str]] = {}
        first_line: dict[str, int] = {}  # where each video is named first, for problems
        for line, row in rows:
            where = f"{csv_path}:{line}"
            vid, why = id_cell(row.get("video_id") or "", "video_id")
            sentence = (row.get("sentence") or "").strip()
            why = why or extra_cells(row, columns) or ("sentence" in columns and not sentence
                                                        and f"empty sentence for '{vid}'")
            if why:
                table.problem(where, f"{why}; skipped")
                continue
            first_line.setdefault(vid, line)
            per_video.setdefault(vid, []).extend([sentence] if sentence else [])
        if "sentence" not in columns:
            if json_captions is None:
                if not str(data.annotations).strip():
                    raise AnnotationError(f"{csv_path}: has no 'sentence' column, so split '{split}' takes its "
                                          f"captions from data.annotations (MSRVTT_data.json), which is not set")
                path = required_file(data.annotations, "annotations", fmt)
                json_captions = _sentences(path, read_json(path), table)
            per_video = {vid: list(json_captions.get(vid, [])) for vid in per_video}
        for vid, caps in per_video.items():
            table.add(vid, video_path(data, vid), caps, split, f"{csv_path}:{first_line[vid]}",
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


def _msvd_captions(path: Path, vid: str, raw: Any, table: Table) -> list[str]:
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


def _youtube_names(ypath: Path, table: Table) -> dict[str, str]:
    """``vidN -> youtubeid_start_end`` of ``youtube_mapping.txt``; a line that is not two file names,
    or maps a video or a file a second time, is a problem (which one is meant is unknown)."""
    youtube: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for n, line in enumerate(read_text(ypath).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        name, why = id_cell(parts[0], "mapped name") if len(parts) == 2 else ("", "expected 'youtubeid_start_end vidN'")
        vid, why = (id_cell(parts[1]) if not why else ("", why))
        if not why and (vid in youtube or name in line_of):
            why = (f"'{vid}' is already mapped on line {line_of[youtube[vid]]}" if vid in youtube
                   else f"'{name}' is already mapped on line {line_of[name]}")
        if why:
            table.problem(f"{ypath}:{n}", f"{why}; skipped")
            continue
        youtube[vid] = name
        line_of[name] = n
    return youtube


def load_msvd(data: DataConfig, table: Table) -> None:
    path = required_file(data.annotations, "annotations", "msvd")
    raw = _load_pickle(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a dict vidN -> captions, got {type(raw).__name__}")
    youtube: dict[str, str] = {}
    if "youtube_mapping" in data.split_files:
        ypath = required_file(data.split_files["youtube_mapping"], "split_files.youtube_mapping", "msvd")
        youtube = _youtube_names(ypath, table)
    splits = split_files(data, "msvd", exclude=("youtube_mapping",))
    if not splits:
        raise AnnotationError("format 'msvd' needs data.split_files.{train,val,test} (the *_list_mapping.txt id lists)")
    for split, list_path in splits.items():
        for n, line in enumerate(read_text(list_path).splitlines(), 1):
            if not line.strip():
                continue
            where = f"{list_path}:{n}"
            vid, why = id_cell(line)
            if not why and vid not in raw:
                why = f"video id '{vid}' has no captions in {path}"
            if why:
                table.problem(where, f"{why}; skipped")
                continue
            caps = _msvd_captions(path, vid, raw[vid], table)
            video = video_path(data, youtube[vid], ".avi") if vid in youtube else video_path(data, vid, None)
            table.add(vid, video, caps, split, where)


def _vatex_items(path: Path, split: str | None, data: DataConfig, table: Table) -> None:
    """One VATEX JSON list; ``split`` None: each item's own ``"split"``."""
    items = read_json(path)
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of {{videoID, enCap}}, got {type(items).__name__}")
    if split is None and not any(isinstance(it, dict) and "split" in it for it in items):
        raise AnnotationError(f"{path}: no item has a 'split' key; give one file per split in "
                              f"data.split_files.<split> instead of data.annotations")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            table.problem(f"{path} (item {i})", f"needs an object with 'videoID' and 'enCap', got "
                                                f"{type(item).__name__}; skipped")
            continue
        vid, why = id_cell(item.get("videoID"), "'videoID'")
        where = f"{path} (item {i}{', ' + vid if vid else ''})"
        item_split = split
        if split is None and not why:
            item_split, why = split_cell(item.get("split"), "'split'")
        caps, bad_caps = clean_captions(item.get("enCap", []))
        if not why and bad_caps and item.get("enCap", []) != []:  # an empty/absent enCap: "no captions" (add())
            why = f"enCap: {bad_caps}"
        if why:
            table.problem(where, f"{why}; skipped")
            continue
        table.add(vid, video_path(data, vid), caps, item_split, where)


def load_vatex(data: DataConfig, table: Table) -> None:
    if data.split_files and str(data.annotations).strip():
        raise AnnotationError("format 'vatex': set either data.annotations (one file whose items carry "
                              "'split') or data.split_files.<split> (one file per split), not both")
    if data.split_files:
        for split, path in split_files(data, "vatex").items():
            _vatex_items(path, split, data, table)
    else:
        _vatex_items(required_file(data.annotations, "annotations", "vatex"), None, data, table)
