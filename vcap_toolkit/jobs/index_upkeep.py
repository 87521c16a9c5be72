"""What ``vcap index`` needs to keep an index true on a rerun (``search.build_index``), beside the
index's reader (``index_files``) and its shards (``index_store.VideoIndex``):

* the folder's kind (``INDEX``): ``vcap index`` writes only a new folder, an index, or an index an
  earlier release wrote (its ``meta.json`` passes ``check_meta`` and it holds nothing else);
* the stamp of a file embedded (``file_stamp``, ``changed_since``);
* ``repair_shards``: every shard read as a search reads it first; one that fails is removed (said),
  so its videos are embedded again;
* ``drop_rows``: the rows of files gone or now unreadable removed, shard by shard;
* ``remove_shard``: its ``.json`` first, so that it stops counting at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import FeatureStoreError
from retrieval_pretrain.foundation.ownership import FolderKind, entries
from vcap_toolkit.jobs.index_files import REBUILD, VECTORS_NAME, check_recorded, read_meta, read_rows, shard_record


def _legacy_index(folder: Path) -> bool:
    """An index an earlier release wrote (or one whose record was lost): a ``meta.json`` that passes
    ``check_meta``, nothing else but what ``vcap index`` writes."""
    try:
        read_meta(folder)
    except FeatureStoreError:
        return False
    return all(n in {"meta.json", "shards", "failures.json", "parts"} or VECTORS_NAME.fullmatch(n)
               for n in entries(folder))


INDEX = FolderKind("search index", "vcap index", _legacy_index)


def file_stamp(path: str) -> dict[str, int]:
    """A row's stamp of the file embedded: ``{"size", "mtime_ns"}``; ``{}`` when it is not a file
    (generated rows, as in ``benchmarks/bench_search.py``)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def shard_stems(shards: Path) -> set[str]:
    """The stems of every shard file in ``shards`` (complete or not)."""
    return {p.name.split(".", 1)[0] for p in shards.glob("[0-9]*.*") if p.name.split(".", 1)[0].isdigit()}


def remove_shard(folder: Path, stem: str) -> None:
    """Remove shard ``stem`` of the index in ``folder``: its ``.json`` first (from then on it does not
    count; a kill after leaves a recorded shard that is not complete, which the next run removes),
    then its ``.npy`` files, then its record in ``meta.json``."""
    shards = folder / "shards"
    (shards / f"{stem}.json").unlink(missing_ok=True)
    for npy in [shards / f"{stem}.npy", *shards.glob(f"{stem}.*.npy")]:
        npy.unlink(missing_ok=True)
    meta = read_meta(folder)
    if stem in meta.get("shards", {}):
        write_json(folder / "meta.json", {**meta, "shards": {k: v for k, v in meta["shards"].items() if k != stem}})


def changed_since(path: str, stamp: tuple[int, int] | None) -> bool:
    """Whether the file at ``path`` differs in size or modification time from its row's ``stamp``
    (a file that is gone has not changed: it is dropped, not embedded)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stamp is not None and (st.st_size, st.st_mtime_ns) != stamp


def repair_shards(index: Any) -> int:
    """Before a rerun of ``vcap index`` writes into ``index`` (a ``search.VideoIndex``): every shard
    is read as a search reads it (rows, arrays, the recorded counts and hashes); one that fails, and
    what a killed run left of one (recorded but not complete; files with neither a record nor a
    ``.json``), is removed - each said in a warning line - so its videos are embedded again. A
    complete shard with no record is refused (not this index's). An index of before the records gets
    them now, for the shards that pass. Returns the number of shards removed."""
    meta = index.meta()
    records, complete = meta.get("shards"), {npy.stem: npy for npy in index.complete_shards()}
    said = []
    for stem in sorted((shard_stems(index.shards) | set(records or {})) - set(complete)):
        remove_shard(index.folder, stem)
        said.append(f"{index.shards / stem}: " + ("recorded but not complete (a killed run, or a deleted file)"
                                                   if stem in (records or {}) else "an unfinished shard of a killed run"))
    if records is not None:
        check_recorded(index.folder / "meta.json", {k: v for k, v in records.items() if k in complete}, [*complete])
    names, adopted = [n for n in meta.get("state", {}) if n != "video"], {}
    for stem, npy in sorted(complete.items()):
        try:
            rows = read_rows(npy.with_suffix(".json"), (records or {}).get(stem))
            index.shard_arrays(npy, len(rows), names)
        except FeatureStoreError as e:
            remove_shard(index.folder, stem)
            said.append(str(e).removesuffix(f"; {REBUILD}"))
            continue
        adopted[stem] = shard_record({"video": npy, **{n: npy.with_name(f"{stem}.{n}.npy") for n in names}}, rows)
    if records is None and adopted:
        write_json(index.folder / "meta.json", {**index.meta(), "shards": adopted})
    for line in said:
        print(f"warning: {line}; removed, its videos are embedded again", file=sys.stderr)
    return len(said)


def drop_rows(index: Any, paths: set[str]) -> int:
    """Remove the current rows of ``paths`` (gone or unreadable files; a moment index: each of their
    windows): each shard holding one is
    written again without it - its other current rows into a new shard, with their stamps as
    recorded - and then removed. Returns the number of rows removed."""
    dropped, names = 0, [n for n in index.meta().get("state", {}) if n != "video"]
    for npy, rows, live in index.current_by_shard():
        live = live.tolist()
        keep = [j for j in live if rows[j]["path"] not in paths]
        if len(keep) == len(live):
            continue
        if keep:
            arrays = index.shard_arrays(npy, len(rows), names)
            index.write_shard([rows[j] for j in keep], arrays.pop("video")[keep],
                              {n: a[keep] for n, a in arrays.items()} if names else None)
        remove_shard(index.folder, npy.stem)
        dropped += len(live) - len(keep)
    return dropped
