"""``data.format: hf`` - caption tables that come as Hugging Face datasets (the ``datasets`` library).

``data.annotations`` is the source, one of:

* data files, one or several comma-separated, each ``.parquet``, ``.json`` / ``.jsonl`` or ``.csv``:
  each is read on its own by ``load_dataset("parquet"|"json"|"csv", data_files=...)``, so a problem
  names its file. csv cells are read as text (an id ``007`` stays ``007``); captions are strings.
* a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (``load_from_disk``).
* anything else that looks like ``user/name`` (and is not a local path) is a Hub dataset, read by
  ``load_dataset`` (``data.hf_subset`` is its configuration name) into the usual Hugging Face
  cache. Offline, only one already in that cache can be read; otherwise save it where it can be
  fetched (``save_to_disk``, or parquet) and point ``data.annotations`` at that copy.

``data.columns`` maps roles to column names (a role left out uses the column of that name):

* ``video`` - a path relative to ``data.videos`` when it ends in one of ``data.video_ext`` or that
  file exists (the video id is the path without its extension, as for ``jsonl``); otherwise a video
  id, whose file is ``<videos>/<id><ext>`` for the first of ``data.video_ext`` that exists.
* ``captions`` - a string, or a list of strings.
* ``split`` - each row's split. A ``DatasetDict`` (a saved one, or a Hub dataset) needs none: its
  own split names are used (``validation`` -> ``val``) unless it has the column too.

Rows of one video in one split are merged, their captions concatenated in row order (many Hub
caption datasets have one row per caption). Split names must be ``train``/``val``/``test`` or one of
``data.train_split``/``val_split``/``test_split``. Never silently dropped:

* a row with a missing or empty video or caption, a value of the wrong type, or an unknown split
  (with a hint when it looks like a known one: ``Train``, ``dev``, ``testing``) is
  an ``AnnotationProblem`` at ``<source>:row N`` (``N`` is the 0-based dataset index, ``ds[N]``;
  ``<source>`` is ``<annotations>[<name>]`` for one split of a ``DatasetDict``) and is skipped;
  a ``DatasetDict`` split with an unknown name is one problem at ``<source>`` giving its row count;
* a missing column is an ``AnnotationError`` naming the source, the column and the columns there
  are; so is a source that cannot be read (no such file or folder, Hub unreachable).

Data files go through a temporary ``datasets`` cache, removed afterwards; ``save_to_disk`` folders
are memory-mapped in place. Values are read from Arrow without feature decoding (a ``ClassLabel``
column is turned into its label names); ``.json`` / ``.jsonl`` files are read cell by cell with Python's
``json`` (the library's json builder turns a whole column into JSON text when one cell's type differs).
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import datasets

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading.annotation_table import (
    AnnotationError,
    Table,
    clean_captions,
    near_misses,
    normalize_split,
    split_role,
    video_cell,
    video_path,
)
from retrieval_pretrain.reading.benchmark_formats import path_problem
from retrieval_pretrain.reading.data_config import DataConfig

ROLES = ("video", "captions", "split")
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_OFFLINE_HINT = ("; offline, a Hub dataset can be read only from the Hugging Face cache - supply it locally "
                 "instead: data.annotations = a folder written by save_to_disk, or parquet file(s)")


@dataclass
class _Video:
    """The rows of one video in one split, merged."""

    video_id: str
    path: Path
    split: str
    source: str  # the first row's
    captions: list[str] = field(default_factory=list)


def load_hf(data: DataConfig, table: Table) -> None:
    """Read the Hugging Face dataset ``data.annotations`` into ``table`` (see the module docstring).

    Raises:
        AnnotationError: no such source, one that cannot be read, or a missing column.
        ConfigError: an unknown role in ``data.columns``.
    """
    columns = _columns(data)
    known = _known_splits(data)
    videos: dict[tuple[str, str], _Video] = {}
    with contextlib.ExitStack() as stack:
        for label, dict_split, ds in _sources(data, stack):
            _read_rows(data, label, dict_split, ds, columns, known, videos, table)
    for v in videos.values():
        table.add(v.video_id, v.path, v.captions, v.split, v.source)


def _columns(data: DataConfig) -> dict[str, str]:
    unknown = sorted(set(data.columns) - set(ROLES))
    if unknown:
        raise ConfigError(f"data.columns: unknown role(s) {', '.join(unknown)}; the roles are {', '.join(ROLES)}")
    return {role: str(data.columns.get(role) or role) for role in ROLES}


def _known_splits(data: DataConfig) -> list[str]:
    names = ["train", "val", "test", data.train_split, data.val_split, data.test_split]
    return list(dict.fromkeys(normalize_split(n) for n in names))


# ----------------------------------------------------------------------------- sources


def _sources(data: DataConfig, stack: contextlib.ExitStack) -> Iterator[tuple[str, str | None, datasets.Dataset]]:
    """``(label, split name of a DatasetDict or None, dataset)`` for each part of the source."""
    source = str(data.annotations).strip()
    if not source:
        raise AnnotationError("data.annotations is not set (format 'hf' needs a Hub id, a save_to_disk "
                              "folder, or parquet / json / jsonl / csv files)")
    items = [s.strip() for s in source.split(",") if s.strip()]
    files = [Path(s) for s in items if Path(s).suffix.lower() in _FILE_BUILDERS]
    if len(items) > 1 and len(files) < len(items):
        others = [s for s in items if Path(s).suffix.lower() not in _FILE_BUILDERS]
        raise AnnotationError(f"data.annotations: several sources must all be .parquet / .json / .jsonl / .csv "
                              f"files; not one: {', '.join(others)}")
    if files:
        _local_only(data, source)
        for path in files:
            if not path.is_file():
                raise AnnotationError(f"{path}: file not found (data.annotations)")
        for path in files:
            yield str(path), None, _load_file(path, stack.enter_context(tempfile.TemporaryDirectory(prefix="vcap-hf-")))
        return
    path = Path(source)
    if path.exists():
        _local_only(data, source)
        if not path.is_dir():
            raise AnnotationError(f"{path}: neither a folder written by save_to_disk nor a "
                                  f".parquet / .json / .jsonl / .csv file (data.annotations)")
        yield from _parts(source, _load_saved(path))
    elif _HUB_ID.fullmatch(source):
        yield from _parts(source, _load_hub(source, data.hf_subset))
    else:
        raise AnnotationError(f"{source}: no such file or folder (data.annotations)")


def _local_only(data: DataConfig, source: str) -> None:
    if data.hf_subset:
        raise AnnotationError(f"data.hf_subset ('{data.hf_subset}') picks a configuration of a Hub dataset, "
                              f"but {source} is local - remove it")


def _parts(label: str, obj: Any) -> Iterator[tuple[str, str | None, datasets.Dataset]]:
    if isinstance(obj, datasets.DatasetDict):
        for name, ds in obj.items():
            yield f"{label}[{name}]", name, ds
    else:
        yield label, None, obj


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Reading a local table is quick: no "Generating train split" bars on stderr."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    with warnings.catch_warnings():  # the HF_DATASETS_DISABLE_PROGRESS_BARS variable has priority
        warnings.simplefilter("ignore")
        datasets.utils.disable_progress_bars()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to read file" line would repeat ours
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not was_disabled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                datasets.utils.enable_progress_bars()


def _why(e: BaseException) -> str:
    """``Type: message``, with the cause when the library wraps it (``DatasetGenerationError``)."""
    text = f"{type(e).__name__}: {e}"
    if e.__cause__ is not None and str(e.__cause__) not in text:
        text += f" ({type(e.__cause__).__name__}: {e.__cause__})"
    return " ".join(text.split())  # one line: pandas' parser messages end in a newline


class _JsonCells:
    """A ``.json`` / ``.jsonl`` data file read cell by cell with Python's ``json``: ``datasets``' json
    builder turns a whole column into JSON text when one cell's type differs (a string among lists,
    a number among strings), which would change how every other row is read."""

    def __init__(self, path: Path) -> None:
        self.rows: list[Any] = []
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise AnnotationError(f"{path}: cannot read as json: {e}") from e
        try:
            whole = json.loads(text) if text.lstrip().startswith("[") else None
        except (json.JSONDecodeError, RecursionError):
            whole = None
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        for n, line in ([] if isinstance(whole, list) else lines):
            try:
                self.rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}: cannot read as json: JSON parse error at line {n}: {e.msg}") from e
            except RecursionError:
                raise AnnotationError(f"{path}: cannot read as json: JSON parse error at line {n}: "
                                      "nested too deeply") from None
        self.rows = whole if isinstance(whole, list) else self.rows
        keys = (k for r in self.rows if isinstance(r, dict) for k in r)
        self.column_names = list(dict.fromkeys(keys))
        self.num_rows = len(self.rows)

    def values(self, names: list[str]) -> dict[str, list[Any]]:
        return {name: [r.get(name) if isinstance(r, dict) else None for r in self.rows] for name in names}

    def not_object(self, n: int) -> str:
        """Why row ``n`` is skipped as a whole, or ``""``."""
        row = self.rows[n]
        return "" if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def _load_file(path: Path, cache_dir: str) -> datasets.Dataset | _JsonCells:
    if path.suffix.lower() in (".json", ".jsonl"):
        return _JsonCells(path)
    builder = _FILE_BUILDERS[path.suffix.lower()]
    kwargs: dict[str, Any] = {}
    try:
        if builder == "csv":  # every column as text: ids such as 007 keep their zeros
            with open(path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:  # the library would read one of them without a word
                raise AnnotationError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in "
                                      "the header; which one is meant is unknown")
            kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in header})
        with _no_progress_bars():
            return datasets.load_dataset(builder, data_files=[str(path)], split="train", cache_dir=cache_dir,
                                         **kwargs)
    except AnnotationError:
        raise
    except Exception as e:  # any file the library cannot parse is unreadable as a whole
        raise AnnotationError(f"{path}: cannot read as {builder}: {_why(e)}") from e


def _load_saved(path: Path) -> datasets.Dataset | datasets.DatasetDict:
    try:
        with _no_progress_bars():
            return datasets.load_from_disk(str(path))
    except Exception as e:
        raise AnnotationError(f"{path}: not a folder written by Dataset/DatasetDict.save_to_disk: {_why(e)} "
                              f"(data files are named one by one, comma-separated)") from e


def _load_hub(source: str, subset: str | None) -> datasets.Dataset | datasets.DatasetDict:
    try:
        return datasets.load_dataset(source, name=subset or None)
    except Exception as e:
        offline = datasets.config.HF_HUB_OFFLINE or isinstance(e, ConnectionError)
        raise AnnotationError(f"{source}: not a local file or folder, and it cannot be loaded from the Hugging "
                              f"Face Hub: {_why(e)}{_OFFLINE_HINT if offline else ''}") from e


# ----------------------------------------------------------------------------- rows


def _column_values(ds: datasets.Dataset | _JsonCells, names: list[str]) -> dict[str, list[Any]]:
    """Plain Python values of ``names``, read from Arrow (no feature decoding); ClassLabel -> names."""
    if isinstance(ds, _JsonCells):
        return ds.values(names)
    arrow = ds.select_columns(names).with_format("arrow")[:]
    out = {}
    for name in names:
        values = arrow.column(name).to_pylist()
        feature = ds.features[name]
        if isinstance(feature, datasets.ClassLabel):
            values = [feature.int2str(v) if isinstance(v, int) and 0 <= v < feature.num_classes else v
                      for v in values]
        out[name] = values
    return out


def _require(label: str, ds: datasets.Dataset, role: str, column: str, hint: str = "") -> None:
    if column not in ds.column_names:
        raise AnnotationError(f"{label}: no column '{column}' (data.columns.{role}){hint}; "
                              f"columns: {', '.join(ds.column_names) or 'none'}")


def _read_rows(data: DataConfig, label: str, dict_split: str | None, ds: datasets.Dataset,
               columns: dict[str, str], known: list[str], videos: dict[tuple[str, str], _Video],
               table: Table) -> None:
    """Check the columns of one dataset, then merge its good rows into ``videos``."""
    _require(label, ds, "video", columns["video"])
    _require(label, ds, "captions", columns["captions"])
    has_split = columns["split"] in ds.column_names
    if not has_split and dict_split is None:
        _require(label, ds, "split", columns["split"], " - needed unless the dataset has splits of its own")
    if not has_split and normalize_split(dict_split) not in known:
        table.problem(label, f"split '{dict_split}' is not one of {', '.join(known)}{_hint(dict_split, known)}; "
                             f"its {ds.num_rows} rows skipped")
        return
    values = _column_values(ds, list(dict.fromkeys(columns[r] for r in ROLES if r != "split" or has_split)))
    splits = values[columns["split"]] if has_split else [dict_split] * ds.num_rows
    for n, (video, caps, split) in enumerate(zip(values[columns["video"]], values[columns["captions"]], splits)):
        where = f"{label}:row {n}"
        row = (isinstance(ds, _JsonCells) and ds.not_object(n)) or _row(video, caps, split, columns, known)
        if isinstance(row, str):
            table.problem(where, f"{row}; skipped")
            continue
        video, caps, split = row
        merged = videos.get((split, video))
        if merged is None:
            video_id, path = _video_file(data, video)
            merged = videos[(split, video)] = _Video(video_id, path, split, where)
        merged.captions.extend(caps)


def _text(value: Any, role: str, columns: dict[str, str], kind: str = "strings") -> tuple[str, str]:
    """``(stripped text, "")``, or ``("", why)`` when ``value`` is not a non-empty string."""
    if value is None:
        return "", f"missing {role} (column '{columns[role]}' is null)"
    if not isinstance(value, str):
        return "", f"column '{columns[role]}' ({role}) must hold {kind}, got {type(value).__name__} {value!r}"
    if not value.strip():
        return "", f"empty {role} (column '{columns[role]}')"
    return value.strip(), ""


def _row(video: Any, caps: Any, split: Any, columns: dict[str, str],
         known: list[str]) -> tuple[str, list[str], str] | str:
    """``(video, captions, normalised split)`` of one row, or why it is skipped."""
    video, why = _text(video, "video", columns)
    why = why or video_cell(video)[1].replace("'video'", f"column '{columns['video']}' (video)")
    why = why or path_problem(video) and f"column '{columns['video']}' (video): {path_problem(video)}"
    if why:
        return why
    if isinstance(caps, list):
        captions, why = clean_captions(caps)
        why = why and f"column '{columns['captions']}': {why}"
    else:
        caption, why = _text(caps, "captions", columns, kind="a string or a list of strings")
        captions = [caption]
    if why:
        return why
    split, why = _text(split, "split", columns)
    if why:
        return why
    if normalize_split(split) not in known:
        return (f"unknown split {split[:80]!r} (column '{columns['split']}'; known: {', '.join(known)})"
                f"{_hint(split, known)}")
    return video, captions, normalize_split(split)


def _hint(split: str, known: list[str]) -> str:
    """``; did you mean 'train'? (or set data.train_split=Train)`` when ``split`` is a near miss of a known name."""
    near = near_misses(split, known)
    if not near:
        return ""
    key = {"train": "train_split", "val": "val_split", "test": "test_split"}.get(split_role(near[0]), "train_split")
    return f"; did you mean '{near[0]}'? (rename it, or set data.{key}={split})"


def _video_file(data: DataConfig, value: str) -> tuple[str, Path]:
    """``(video id, file)`` for a ``video`` value: a relative path, or an id (see the module docstring)."""
    exts = {(e if e.startswith(".") else f".{e}").lower() for e in data.video_ext}
    rel = Path(value)
    if rel.suffix.lower() in exts or (Path(data.videos) / rel).is_file():
        return rel.with_suffix("").as_posix(), Path(data.videos) / rel
    return value, video_path(data, value, first=None)
