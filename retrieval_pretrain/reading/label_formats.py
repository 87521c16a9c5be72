"""Labelled video datasets (action recognition): each video has one class label. Stage 1 trains on a
label through a random prompt template (ActionCLIP), ``vcap eval-classify`` scores recognition.

* ``labels`` - ``data.annotations`` is a ``.jsonl`` file of ``{"video", "label", "split"}`` rows or a
  ``.csv`` file with ``video,label,split`` columns (``video`` relative to ``data.videos``).
* ``kinetics`` - Kinetics csv files (``label,youtube_id,time_start,time_end[,split,...]``): one
  ``data.annotations`` with a ``split`` column, or ``data.split_files.<split>``. The file of a row
  is ``<videos>/<youtube_id>_<start:06d>_<end:06d>.<ext>`` or the same inside a ``<label>/`` folder
  (the two layouts the common downloaders write).
* ``ucf101`` - ``data.annotations`` is ``classInd.txt`` (``N ClassName``); ``data.split_files``
  maps splits to the official lists (``trainlist01.txt``: ``Class/v_Class_gXX_cYY.avi N``,
  ``testlist01.txt``: ``Class/v_...avi``). Labels are the class names in words
  (``ApplyEyeMakeup`` -> ``apply eye makeup``), as ActionCLIP prompts them.
* ``hmdb51`` - ``data.annotations`` is a glob of the official split files of one split, e.g.
  ``testTrainMulti_7030_splits/*_test_split1.txt`` (``video.avi 1|2|0`` per line: train, test, not
  used); the class is the file name before ``_test_split`` (``brush_hair`` -> ``brush hair``), the
  video ``<videos>/<class>/<video>``.

A malformed row is named (``file:line``) and skipped, like a bad caption line: a video, id or file
name that names no single file inside the video folder (``benchmark_formats.id_cell`` /
``path_problem``: ``/``, ``.``, ``..``, a NUL or control character, a name too long for the file
system), a UCF101 list line whose class number disagrees with its folder's in ``classInd.txt``.
A label outside the dataset's class list - ``data.labels_file`` (one label per line), or for
UCF101 ``classInd.txt`` - is an error naming the row: it would be a class no evaluation can score;
so is a ``classInd.txt`` that numbers or names a class twice, and an HMDB51 split file whose name
gives no class.
"""

from __future__ import annotations

import glob
import json
import math
import re
from pathlib import Path
from typing import Any

from retrieval_pretrain.reading.annotation_table import (
    AnnotationError,
    Table,
    read_text,
    required_file,
    split_files,
    video_cell,
    video_path,
)
from retrieval_pretrain.reading.benchmark_formats import csv_rows, extra_cells, id_cell, path_problem, split_cell
from retrieval_pretrain.reading.data_config import DataConfig
from retrieval_pretrain.reading.label_lists import read_labels


def class_list(data: DataConfig) -> list[str] | None:
    """``data.labels_file`` as a list (one label per line), or None when not set."""
    if not str(data.labels_file).strip():
        return None
    return read_labels(str(required_file(data.labels_file, "labels_file", data.format)))


def novel_labels(data: DataConfig, used: set[str] | None = None) -> set[str]:
    """The labels of ``data.novel_labels`` (held out of training), or none. With ``used`` (the
    labels the rows use), a novel label no row uses is an error: a typo would hold out nothing."""
    if not str(data.novel_labels).strip():
        return set()
    novel = set(read_labels(str(required_file(data.novel_labels, "novel_labels", data.format))))
    absent = sorted(novel - used) if used is not None else []
    if absent:
        raise AnnotationError(f"data.novel_labels={data.novel_labels}: {len(absent)} label(s) no video has: "
                              f"{', '.join(map(repr, absent[:10]))}")
    return novel


def _check_label(label: str, known: list[str] | None, where: str, listed_in: str) -> None:
    if known is not None and label not in known:
        raise AnnotationError(f"{where}: label {label!r} is not in {listed_in} ({len(known)} labels)")


def _add(table: Table, data: DataConfig, rel: str, label: str, split: str, where: str) -> None:
    table.add(Path(rel).with_suffix("").as_posix(), Path(data.videos) / rel, [label], split, where, label=label)


def _rows(path: Path, csv_file: bool | None = None) -> list[tuple[str, Any]]:
    """``[(file:line, row dict or the reason it is none)]`` of a .jsonl or .csv file (``csv_file``:
    decided by the suffix unless given)."""
    text = read_text(path)
    if csv_file or (csv_file is None and path.suffix.lower() == ".csv"):
        columns, rows = csv_rows(path, text)
        return [(f"{path}:{line}", extra_cells(row, columns) or row) for line, row in rows]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{i}", json.loads(line)))
            except json.JSONDecodeError as e:
                out.append((f"{path}:{i}", f"not valid JSON ({e.msg})"))
            except RecursionError:
                out.append((f"{path}:{i}", "not valid JSON (nested too deeply)"))
    return out


def load_labels(data: DataConfig, table: Table) -> None:
    path = required_file(data.annotations, "annotations", "labels")
    known = class_list(data)
    for where, row in _rows(path):
        if isinstance(row, str) or not isinstance(row, dict):
            table.problem(where, f"{row if isinstance(row, str) else 'not an object'}; skipped")
            continue
        missing = [k for k in ("video", "label", "split") if not isinstance(row.get(k), str) or not row[k].strip()]
        why = f"needs non-empty string(s) {', '.join(missing)}" if missing else video_cell(row["video"])[1]
        why = why or path_problem(row["video"].strip()) or split_cell(row["split"])[1]
        if why:
            table.problem(where, f"{why}; skipped")
            continue
        _check_label(row["label"].strip(), known, where, f"data.labels_file {data.labels_file}")
        _add(table, data, row["video"].strip(), row["label"].strip(), row["split"], where)


def _kinetics_file(data: DataConfig, youtube_id: str, start: int, end: int, label: str) -> str:
    stem = f"{youtube_id}_{start:06d}_{end:06d}"
    flat = video_path(data, stem)
    if flat.exists():
        return flat.relative_to(data.videos).as_posix()
    for folder in (label, label.replace(" ", "_")):
        if id_cell(folder)[1]:  # a label that is not one folder name is not looked for as one
            continue
        nested = video_path(data, f"{folder}/{stem}")
        if nested.exists():
            return nested.relative_to(data.videos).as_posix()
    return flat.relative_to(data.videos).as_posix()


def _kinetics_row(row: Any) -> tuple[str, int, int] | str:
    """``(youtube_id, start, end)`` of a kinetics row, or why it is skipped: the id is one file name
    (it must not leave the video folder), the times finite numbers >= 0 with start <= end."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                            for k in ("label", "youtube_id")):
        return "needs label and youtube_id"
    youtube_id, why = id_cell(row["youtube_id"], "youtube_id")
    if why:
        return why
    try:
        start, end = float(row["time_start"]), float(row["time_end"])
    except (KeyError, TypeError, ValueError):
        return "time_start / time_end are not numbers"
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < 0 or start > end or end >= 1e6:
        return f"time_start / time_end must be finite numbers >= 0 with start <= end < 1e6 s, got {start}, {end}"
    why = path_problem(f"{youtube_id}_{int(start):06d}_{int(end):06d}")
    return why or (youtube_id, int(start), int(end))


def load_kinetics(data: DataConfig, table: Table) -> None:
    files = split_files(data, "kinetics")
    if files and str(data.annotations).strip():
        raise AnnotationError("format 'kinetics': give data.annotations (with a split column) or "
                              "data.split_files, not both")
    sources = files or {None: required_file(data.annotations, "annotations", "kinetics")}
    known = class_list(data)
    for split, path in sources.items():
        for where, row in _rows(path, csv_file=True):
            checked = _kinetics_row(row)
            if isinstance(checked, str):
                table.problem(where, f"{checked}; skipped")
                continue
            youtube_id, start, end = checked
            row_split, why = (split, "") if split else split_cell(row.get("split") or "")
            if why and not (row.get("split") or "").strip():
                why = "no split (no split column, and the file is not in data.split_files)"
            if why:
                table.problem(where, f"{why}; skipped")
                continue
            label = row["label"].strip()
            _check_label(label, known, where, f"data.labels_file {data.labels_file}")
            _add(table, data, _kinetics_file(data, youtube_id, start, end, label), label,
                 row_split, where)


def words(class_name: str) -> str:
    """``ApplyEyeMakeup`` -> ``apply eye makeup``; ``YoYo`` -> ``yo yo``; ``brush_hair`` -> ``brush hair``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_", " ", class_name)
    return " ".join(spaced.lower().split())


def _class_index(ind: Path) -> dict[str, tuple[str, str]]:
    """``classInd.txt`` -> ``folder -> (number, label in words)``; a line that is not ``N ClassName``
    (ASCII digits, one folder name), or a number or class given twice, refuses the file."""
    classes: dict[str, tuple[str, str]] = {}
    numbers: dict[str, str] = {}
    for i, line in enumerate(read_text(ind).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        name, why = id_cell(parts[1], "class") if len(parts) == 2 else ("", "")
        if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()) or why:
            raise AnnotationError(f"{ind}:{i}: not a classInd line ('N ClassName'{', ' + why if why else ''}): "
                                  f"{line[:100]!r}")
        number = str(int(parts[0]))
        if name in classes or number in numbers:
            twice = f"class {name!r}" if name in classes else f"number {number} (also {numbers[number]!r})"
            raise AnnotationError(f"{ind}:{i}: {twice} is given twice; which label a video has would be unknown")
        classes[name], numbers[number] = (number, words(name)), name
    return classes


def _ucf_line(line: str, classes: dict[str, tuple[str, str]], ind: Path) -> tuple[str, str] | str:
    """``(Class/file, class folder)`` of a list line, or why it is skipped; a class not in classInd
    raises (a label no evaluation can score)."""
    parts = line.split()
    rel = parts[0]
    folder, _, name = rel.partition("/")
    why = ("" if len(parts) <= 2 and name else "not 'Class/v_Class_gXX_cYY.avi [N]'") or \
        id_cell(folder, "class folder")[1] or id_cell(name, "video file")[1]
    if why:
        return f"{why}: {line[:100]!r}"
    if folder not in classes:
        raise AnnotationError(f"class {folder!r} is not in {ind} ({len(classes)} classes)")
    number = parts[1] if len(parts) == 2 else None
    if number is not None and (not (number.isascii() and number.isdigit()) or str(int(number)) != classes[folder][0]):
        return f"class number {number[:20]!r} is not {folder}'s ({classes[folder][0]} in {ind})"
    return rel, folder


def load_ucf101(data: DataConfig, table: Table) -> None:
    ind = required_file(data.annotations, "annotations", "ucf101")
    classes = _class_index(ind)
    files = split_files(data, "ucf101")
    if not files:
        raise AnnotationError("format 'ucf101' needs data.split_files (e.g. train: trainlist01.txt, "
                              "test: testlist01.txt)")
    for split, path in files.items():
        for i, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                checked = _ucf_line(line, classes, ind)
            except AnnotationError as e:
                raise AnnotationError(f"{path}:{i}: {e}") from None
            if isinstance(checked, str):
                table.problem(f"{path}:{i}", f"{checked}; skipped")
                continue
            rel, folder = checked
            _add(table, data, rel, classes[folder][1], split, f"{path}:{i}")


def load_hmdb51(data: DataConfig, table: Table) -> None:
    pattern = str(data.annotations).strip()
    files = sorted(glob.glob(pattern)) if pattern else []
    if not files:
        raise AnnotationError(f"data.annotations={pattern!r}: no HMDB51 split files match (give a glob such as "
                              "testTrainMulti_7030_splits/*_test_split1.txt)")
    for path in map(Path, files):
        if "_test_split" not in path.name:
            raise AnnotationError(f"{path}: not an HMDB51 split file (CLASS_test_splitN.txt)")
        raw = path.name.split("_test_split")[0]
        folder, why = id_cell(raw, "class (the file name before _test_split)")
        why = why or (folder != raw and f"class (the file name before _test_split) {raw!r} has spaces around it")
        if why:
            raise AnnotationError(f"{path}: {why}")
        for i, line in enumerate(read_text(path).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            why = "" if len(parts) == 2 and parts[1] in ("0", "1", "2") else f"not 'video.avi 0|1|2': {line[:100]!r}"
            why = why or id_cell(parts[0], "video")[1]
            if why:
                table.problem(f"{path}:{i}", f"{why}; skipped")
            elif parts[1] != "0":  # 0: not in this split's train or test
                _add(table, data, f"{folder}/{parts[0]}", words(folder), "train" if parts[1] == "1" else "test",
                     f"{path}:{i}")
