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
from typing import Any

from retrieval_pretrain.reading.annotation_table import (
    AnnotationError,
    Table,
    clean_captions,
    read_json,
    read_text,
    required_file,
    split_files,
    video_path,
)
from retrieval_pretrain.reading.data_config import DataConfig


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
            table.problem(f"{where} {s['video_id']}", "empty caption; skipped")
        else:
            captions.setdefault(s["video_id"], []).append(s["caption"].strip())
    return captions


def load_msrvtt(data: DataConfig, table: Table) -> None:
    path = required_file(data.annotations, "annotations", "msrvtt")
    doc = read_json(path)
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
        table.add(vid, video_path(data, vid), captions.get(vid, []), v["split"], f"{path} ({vid})")
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


def load_msrvtt_clip4clip(data: DataConfig, table: Table) -> None:
    fmt = "msrvtt-clip4clip"
    splits = split_files(data, fmt)
    if not splits:
        raise AnnotationError(f"format '{fmt}' needs data.split_files.<split> csv files "
                              f"(e.g. train=MSRVTT_train.9k.csv, test=MSRVTT_JSFUSION_test.csv)")
    json_captions: dict[str, list[str]] | None = None
    for split, csv_path in splits.items():
        reader = csv.DictReader(io.StringIO(read_text(csv_path)))
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


def load_msvd(data: DataConfig, table: Table) -> None:
    path = required_file(data.annotations, "annotations", "msvd")
    raw = _load_pickle(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a dict vidN -> captions, got {type(raw).__name__}")
    youtube: dict[str, str] = {}
    if "youtube_mapping" in data.split_files:
        ypath = required_file(data.split_files["youtube_mapping"], "split_files.youtube_mapping", "msvd")
        for n, line in enumerate(read_text(ypath).splitlines(), 1):
            parts = line.split()
            if len(parts) == 2:
                youtube[parts[1]] = parts[0]
            elif parts:
                table.problem(f"{ypath}:{n}", "expected 'youtubeid_start_end vidN'; skipped")
    splits = split_files(data, "msvd", exclude=("youtube_mapping",))
    if not splits:
        raise AnnotationError("format 'msvd' needs data.split_files.{train,val,test} (the *_list_mapping.txt id lists)")
    for split, list_path in splits.items():
        for n, line in enumerate(read_text(list_path).splitlines(), 1):
            vid = line.strip()
            if not vid:
                continue
            where = f"{list_path}:{n}"
            if vid not in raw:
                table.problem(where, f"video id '{vid}' has no captions in {path}; skipped")
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
        vid = item.get("videoID") if isinstance(item, dict) else None
        where = f"{path} (item {i}{', ' + vid if isinstance(vid, str) else ''})"
        item_split = split if split is not None else item.get("split") if isinstance(item, dict) else None
        if not isinstance(vid, str) or not vid.strip() or not isinstance(item_split, str) or not item_split.strip():
            table.problem(where, "needs a string 'videoID'" + ("" if split else " and 'split'") + "; skipped")
            continue
        caps, why = clean_captions(item.get("enCap", []))
        if why and item.get("enCap"):  # an empty/absent enCap is reported as "no captions" by add()
            table.problem(where, f"enCap: {why}; skipped")
            continue
        vid = vid.strip()
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
