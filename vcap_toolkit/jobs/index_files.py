"""The one reader of a search index's files (``vcap index`` writes them; ``jobs/search.py`` reads
them only through here): ``meta.json``, each shard's ``.json`` rows and its ``.npy`` arrays.

An index on disk is outside input when it is read back: a file may have been cut, edited, swapped
or written by another version. Each read checks the schema and types (``check_meta``,
``check_rows``), each array's dtype (float16), shape (one row per row of the shard's ``.json``, the
width ``meta.json`` records) and values (finite), and - for a shard written since these records
exist - its row count and the SHA-256 of its ``.npy`` files and of its rows, recorded in
``meta["shards"][STEM]`` before the shard's ``.json`` is written (``shard_record``). An index
written before has no such records and is checked for everything else. Every refusal is a
``FeatureStoreError`` (exit 7) of one line naming the file and the problem.

A moment index (``vcap index --segments``, format 3) gives each row its time range (``"start"``,
``"end"``, checked as a range) and records its windows in ``meta["segments"]``. The vector index
beside the shards (``vector_index``, ``vectors-HASH.faiss``) is recorded in ``meta["vectors"]``
(``check_vectors``); a search memory-maps the shards it re-ranks from (``map_array``: dtype, shape
and file size checked, the bytes hashed where a result comes from).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_pretrain.foundation.errors import FeatureStoreError
from retrieval_pretrain.reading.clips import range_problem

INDEX_FORMAT = 3  # the newest index format this module reads (1: embeddings; 2: pairwise states; 3: moments)
MOMENTS_FORMAT = 3  # the format a moment index is written as (an older vcap refuses it, saying to upgrade)
PAIRWISE = "pairwise"  # meta["scoring"] of an index of pairwise states; absent: "embedding"
SCORINGS = ("embedding", PAIRWISE)
STATE_NAME = re.compile(r"[a-z][a-z0-9_]*")  # a state tensor's name, used in its shard file's name
_HEX = re.compile(r"[0-9a-f]{64}")
REBUILD = "rebuild the index with 'vcap index' into a new folder"


def _bad(path: Path, problem: str) -> FeatureStoreError:
    one_line = " ".join(problem.split())
    return FeatureStoreError(f"{path}: {one_line}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError, OSError) as e:
        raise _bad(path, f"not a readable {what} ({type(e).__name__}: {e})") from None


def read_meta(folder: Path) -> dict[str, Any]:
    """``folder/meta.json``, checked (``check_meta``)."""
    path = folder / "meta.json"
    if not path.is_file():
        raise FeatureStoreError(f"{folder} is not a video index (no meta.json); build one with 'vcap index'")
    return check_meta(_load_json(path, "index record"), path)


def check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """``meta`` as an index's ``meta.json`` (written by ``build_index``), or a ``FeatureStoreError``."""
    if not isinstance(meta, dict):
        raise _bad(path, f"an index record is a JSON object, not {type(meta).__name__}; {REBUILD}")
    fmt = meta.get("format", 1)
    if not _is_int(fmt, 1) or fmt > INDEX_FORMAT:
        raise _bad(path, f"index format {_short(fmt)}, newer than this version of vcap reads (up to "
                         f"{INDEX_FORMAT}); upgrade, or rebuild the index")
    for key in ("model", "model_fingerprint"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise _bad(path, f"'{key}' is missing or not a text ({_short(meta.get(key))}); {REBUILD}")
    if not _is_int(meta.get("dim"), 1):
        raise _bad(path, f"'dim' is missing or not a positive whole number ({_short(meta.get('dim'))}); {REBUILD}")
    if "num_frames" in meta and not _is_int(meta["num_frames"], 1):
        raise _bad(path, f"'num_frames' is not a positive whole number ({_short(meta['num_frames'])})")
    if meta.get("dtype", "float16") != "float16":
        raise _bad(path, f"'dtype' is {_short(meta['dtype'])}; an index holds float16 rows")
    if meta.get("scoring", "embedding") not in SCORINGS:
        raise _bad(path, f"'scoring' is {_short(meta['scoring'])}, not one of {list(SCORINGS)}")
    if "state" in meta:
        _check_state(meta["state"], meta["dim"], path)
    if "shards" in meta:
        _check_records(meta["shards"], path)
    if "segments" in meta:
        _check_segments(meta["segments"], fmt, path)
    if "vectors" in meta:
        check_vectors(meta["vectors"], path)
    return meta


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_segments(segments: Any, fmt: int, path: Path) -> None:
    ok = (isinstance(segments, dict) and _seconds(segments.get("seconds")) and _seconds(segments.get("stride"))
          and segments["stride"] <= segments["seconds"])
    if not ok:
        raise _bad(path, f"'segments' is not {{seconds, stride <= seconds}} ({_short(segments)}); {REBUILD}")
    if fmt < MOMENTS_FORMAT:
        raise _bad(path, f"'segments' in an index of format {fmt} (a moment index is format {MOMENTS_FORMAT}); "
                         f"{REBUILD}")


_VECTOR_KEYS = {"file": str, "kind": str, "factory": str, "rows": int, "bytes": int, "sha256": str, "shards": dict,
                "nprobe": int, "shortlist": int, "shards_sha256": str}
VECTORS_NAME = re.compile(r"vectors-[0-9a-f]{16}\.faiss")


def check_vectors(record: Any, path: Path) -> dict[str, Any]:
    """``meta["vectors"]``, the record of the FAISS index beside the shards (``vector_index``):
    its file, kind (exact / approximate), FAISS factory string, rows, size and SHA-256 as written,
    the digest of each shard it holds, its search parameters and what it measured."""
    ok = isinstance(record, dict) and all(isinstance(record.get(k), t) and not isinstance(record.get(k), bool)
                                          for k, t in _VECTOR_KEYS.items())
    ok = ok and record["kind"] in ("exact", "approximate") and bool(VECTORS_NAME.fullmatch(record["file"]))
    ok = ok and all(re.fullmatch(r"[0-9]+", k) and isinstance(v, str) and _HEX.fullmatch(v)
                    for k, v in record["shards"].items())
    ok = ok and bool(_HEX.fullmatch(record["sha256"])) and bool(_HEX.fullmatch(record["shards_sha256"]))
    ok = ok and min(record["rows"], record["bytes"], record["nprobe"]) >= 0 and record["shortlist"] >= 1
    recall = record.get("recall@10") if isinstance(record, dict) else None
    ok = ok and (recall is None or (isinstance(recall, (int, float)) and not isinstance(recall, bool)
                                    and 0 <= recall <= 1))
    if not ok:
        raise _bad(path, f"'vectors' is not a vector index record ({_short(record)}); run 'vcap index' on the "
                         "folder again to rebuild it")
    return record


def _check_state(state: Any, dim: int, path: Path) -> None:
    if not isinstance(state, dict) or state.get("video") != [dim]:
        raise _bad(path, f"'state' is not {{name: shape}} with 'video': [{dim}] ({_short(state)}); {REBUILD}")
    for name, shape in state.items():
        if not (name == "video" or STATE_NAME.fullmatch(name)) or not isinstance(shape, list) \
                or not all(_is_int(n, 1) for n in shape):
            raise _bad(path, f"'state' entry {_short(name)}: {_short(shape)} is not a tensor name and shape")


def _check_records(records: Any, path: Path) -> None:
    if not isinstance(records, dict):
        raise _bad(path, f"'shards' is not {{shard: record}} ({_short(records)}); {REBUILD}")
    for stem, rec in records.items():
        ok = (re.fullmatch(r"[0-9]+", stem) and isinstance(rec, dict) and _is_int(rec.get("rows"))
              and isinstance(rec.get("rows_sha256"), str) and _HEX.fullmatch(rec["rows_sha256"])
              and isinstance(rec.get("sha256"), dict) and "video" in rec["sha256"]
              and all(isinstance(k, str) and isinstance(v, str) and _HEX.fullmatch(v) for k, v in rec["sha256"].items()))
        if not ok:
            raise _bad(path, f"the record of shard {_short(stem)} is malformed ({_short(rec)}); {REBUILD}")


def check_recorded(meta_path: Path, records: dict[str, Any], complete: list[str]) -> None:
    """In an index whose ``meta.json`` records its shards: a complete shard (``.json`` + ``.npy``) without
    a record was not written by ``vcap index`` (refused); a recorded shard that is not complete is a
    killed run's last shard or a deleted file - its videos are left out until ``vcap index`` runs again,
    said in one warning line, never silently."""
    unrecorded = sorted(set(complete) - set(records))
    if unrecorded:
        raise _bad(meta_path, f"shard(s) {', '.join(unrecorded)} have no record (added or swapped in by hand); "
                              f"{REBUILD}")
    missing = sorted(set(records) - set(complete))
    if missing:
        rows = sum(records[m]["rows"] for m in missing)
        print(f"warning: {meta_path.parent}: shard(s) {', '.join(missing)} ({rows} videos) are recorded but not "
              "complete (a killed run, or a deleted file): those videos are not searched; run vcap index again",
              file=sys.stderr)


def read_rows(path: Path, record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A shard's ``.json`` rows, checked (``check_rows``) and, where ``meta.json`` holds the shard's
    ``record``, compared with the count and hash recorded when it was written."""
    rows = check_rows(_load_json(path, "index shard"), path)
    if record is not None:
        if len(rows) != record["rows"]:
            raise _bad(path, f"{len(rows)} rows, but meta.json recorded {record['rows']} when the shard was "
                             f"written (cut or edited); {REBUILD}")
        if rows_sha256(rows) != record["rows_sha256"]:
            raise _bad(path, f"its rows differ from the SHA-256 meta.json recorded when the shard was written "
                             f"(edited or swapped); {REBUILD}")
    return rows


def check_rows(rows: Any, path: Path) -> list[dict[str, Any]]:
    """``rows`` as a shard's ``.json``: a list of ``{"path", ["size", "mtime_ns"], ["start", "end"]}``
    (an early version wrote bare paths), normalised to dicts, or a ``FeatureStoreError``."""
    if not isinstance(rows, list):
        raise _bad(path, f"an index shard's rows are a JSON list, not {type(rows).__name__}; {REBUILD}")
    out = []
    for i, row in enumerate(rows):
        row = {"path": row} if isinstance(row, str) else row
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
            raise _bad(path, f"row {i} has no video path ({_short(row)}); {REBUILD}")
        if ("size" in row or "mtime_ns" in row) and not (_is_int(row.get("size")) and _is_int(row.get("mtime_ns"))):
            raise _bad(path, f"row {i} has a malformed file stamp (size {_short(row.get('size'))}, mtime_ns "
                             f"{_short(row.get('mtime_ns'))}); {REBUILD}")
        if "start" in row or "end" in row:
            why = range_problem(row.get("start"), row.get("end"))
            if why:
                raise _bad(path, f"row {i} has no time range ({why}); {REBUILD}")
        out.append(row)
    return out


def rows_sha256(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def read_array(path: Path, rows: int, shape: list[int], sha256: str | None) -> np.ndarray:
    """A shard's ``.npy`` (one file of it): float16 ``(rows, *shape)``, finite, and - when
    ``sha256`` was recorded - exactly the bytes written. Read whole: what is checked is what is used."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _bad(path, f"not a readable index shard ({e}); {REBUILD}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise _bad(path, f"its bytes differ from the SHA-256 meta.json recorded when the shard was written "
                         f"(cut, edited or swapped); {REBUILD}")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _bad(path, f"not a readable index shard ({e}); {REBUILD}") from None
    if arr.dtype != np.float16:
        raise _bad(path, f"holds {arr.dtype}, not float16; {REBUILD}")
    if arr.shape != (rows, *shape):
        raise _bad(path, f"shape {list(arr.shape)}, but the shard's .json lists {rows} videos and meta.json a "
                         f"row of {shape}; {REBUILD}")
    bad = ~np.isfinite(arr.reshape(rows, -1)).all(axis=1) if rows else np.zeros(0, dtype=bool)
    if bad.any():
        raise _bad(path, f"{int(bad.sum())} rows hold NaN or infinite values (first: row {int(bad.argmax())}); "
                         f"{REBUILD}")
    return arr


def shard_record(npy_files: dict[str, Path], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``meta["shards"][STEM]`` records of a shard just written: its row count, the SHA-256 of
    each of its ``.npy`` files as written (``{"video": ..., NAME: ...}``) and of its rows."""
    return {"rows": len(rows), "rows_sha256": rows_sha256(rows),
            "sha256": {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in npy_files.items()}}


def map_array(path: Path, rows: int, shape: list[int]) -> np.ndarray:
    """A shard's ``.npy`` memory-mapped, read-only: float16 ``(rows, *shape)`` filling the file
    exactly (a cut or lengthened file is refused). Its values and hash are not read here; a search
    checks them (``read_array``) for each shard a result comes from. The mapping is advised random
    access (``MADV_RANDOM``): re-ranking reads scattered rows, and the kernel's read-ahead would bring
    in ~32x the pages it needs (at 10M rows, 7.1 GB of page cache for 500 queries, measured)."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f".npy format version {version} (an index writes 1.0)")
            dims, fortran, dtype = read_header[version](f)
            offset = f.tell()
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError, EOFError) as e:
        raise _bad(path, f"not a readable index shard ({e}); {REBUILD}") from None
    size, want = path.stat().st_size, (rows, *shape)
    if dtype != np.float16 or fortran or tuple(dims) != want:
        raise _bad(path, f"holds {dtype} {list(dims)}, not the float16 {list(want)} that meta.json records; {REBUILD}")
    if offset + 2 * math.prod(want) != size:
        raise _bad(path, f"is {size} bytes, not the {offset + 2 * math.prod(want)} of its header and meta.json (cut "
                         f"or lengthened); {REBUILD}")
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.ndarray(want, dtype=np.float16, buffer=mapped, offset=offset)
