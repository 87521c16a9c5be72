"""An index folder's shards (``vcap index`` writes them, ``vcap search`` reads them): ``VideoIndex``.

Layout and rules: ``jobs/search.py``'s module docstring and DESIGN.md ("The search index"). Every
file is read through ``index_files``, the index's one checked reader; the upkeep of a rerun (a shard
that fails its checks, rows of files gone) is ``index_upkeep``'s.

Rows and files: a shard row is one embedded clip - a whole file, or in a moment index one window of
it (``"start"``, ``"end"``). A file's rows are written together, in one shard; a file embedded again
(changed since) gets new rows in a later shard, and a file's *current* rows are those of the last
shard holding it (``current_rows``): the older ones stay on disk, unread by a search, until
``index_upkeep.drop_rows`` rewrites their shard.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from retrieval_pretrain.foundation.atomic import write_file, write_json
from retrieval_pretrain.foundation.errors import FeatureMismatchError, FeatureStoreError
from retrieval_pretrain.reading.features import save_npy
from vcap_toolkit.jobs.index_files import (
    PAIRWISE,
    STATE_NAME,
    check_recorded,
    map_array,
    read_array,
    read_meta,
    read_rows,
    shard_record,
)
from vcap_toolkit.jobs.index_upkeep import file_stamp, remove_shard, shard_stems

PARTS = "parts"  # IDX/parts/rankR: the shards each process of an 'accelerate launch' writes, merged after
KIND_HOLDS = {"embedding": "video embeddings (scored by dot product)",
              PAIRWISE: "pairwise video states (scored by the model's pair_scores)"}


class VideoIndex:
    """Read/append access to an index folder's shards (its upkeep on a rerun: ``index_upkeep``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.shards = self.folder / "shards"

    def meta(self) -> dict[str, Any]:
        """``meta.json``, checked by the index's one reader (``index_files``)."""
        return read_meta(self.folder)

    def scoring(self) -> str:
        """``"pairwise"`` for an index of pairwise states (format 2), else ``"embedding"``."""
        return str(self.meta().get("scoring", "embedding"))

    def segments(self) -> dict[str, float] | None:
        """A moment index's windows, ``{"seconds", "stride"}``; None for an index of whole files."""
        return self.meta().get("segments")

    def init(self, meta: dict[str, Any]) -> None:
        """Create the index for ``meta``, or check that an existing one was built by the same model
        (and, for a moment index, with the same windows)."""
        if (self.folder / "run.json").is_file() or (self.folder / "features").is_dir():
            raise FeatureStoreError(f"{self.folder} holds a training run or a feature folder; give the index a "
                                    "folder of its own")
        if not (self.folder / "meta.json").is_file():
            self.shards.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / "meta.json", {**meta, "shards": {}})  # "shards" present: every shard has a record
            return
        old = self.meta()
        if old.get("model_fingerprint") != meta["model_fingerprint"] or old.get("dim") != meta["dim"]:
            raise FeatureMismatchError(
                f"{self.folder} was built with another model ({old.get('model')}, fingerprint "
                f"{old.get('model_fingerprint')}) than {meta['model']} ({meta['model_fingerprint']}); "
                "give a new --output folder")
        was, now = old.get("scoring", "embedding"), meta.get("scoring", "embedding")
        if was != now:
            raise FeatureMismatchError(
                f"{self.folder} is an index of {KIND_HOLDS[was]}, but {meta['model']} needs "
                f"{KIND_HOLDS[now]} (an index of this model made by an earlier version of vcap); "
                "give a new --output folder")
        if old.get("segments") != meta.get("segments"):
            raise FeatureMismatchError(f"{self.folder} holds {_windows(old.get('segments'))}, not "
                                       f"{_windows(meta.get('segments'))}; give a new --output folder")

    def complete_shards(self) -> list[Path]:
        return sorted(p.with_suffix(".npy") for p in self.shards.glob("[0-9]*.json") if p.with_suffix(".npy").is_file())

    def shard_rows(self) -> list[tuple[Path, list[dict[str, Any]]]]:
        """Each complete shard's ``.npy`` with its rows, in shard order."""
        meta = self.meta()
        records, complete = meta.get("shards"), self.complete_shards()
        if records is not None:  # an index that records its shards: none may lack its record, none go missing
            check_recorded(self.folder / "meta.json", records, [npy.stem for npy in complete])
        return [(npy, read_rows(npy.with_suffix(".json"), (records or {}).get(npy.stem))) for npy in complete]

    def shard_arrays(self, npy: Path, rows: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The checked arrays ``{"video", *names}`` of one shard of ``rows`` clips (``index_files.read_array``)."""
        meta = self.meta()
        shapes, hashes = meta.get("state", {"video": [meta["dim"]]}), meta.get("shards", {}).get(npy.stem, {})
        return {name: read_array(self.array_file(npy.stem, name), rows, shapes.get(name, [meta["dim"]]),
                                 hashes.get("sha256", {}).get(name))
                for name in ("video", *names)}

    def array_file(self, stem: str, name: str = "video") -> Path:
        """The ``.npy`` file of shard ``stem`` holding tensor ``name`` (``"video"``: the embeddings)."""
        return self.shards / (f"{stem}.npy" if name == "video" else f"{stem}.{name}.npy")

    def mapped(self, stem: str, rows: int, name: str = "video") -> np.ndarray:
        """Shard ``stem``'s tensor ``name`` memory-mapped (``index_files.map_array``: shape and size checked)."""
        meta = self.meta()
        shape = meta.get("state", {}).get(name, [meta["dim"]])
        return map_array(self.array_file(stem, name), rows, shape)

    def current_by_shard(self) -> list[tuple[Path, list[dict[str, Any]], np.ndarray]]:
        """Each complete shard with its rows and the positions of its current rows (int64, sorted):
        a file's current rows are those of the last shard that holds it."""
        table = self.shard_rows()
        newest = {r["path"]: k for k, (_, rows) in enumerate(table) for r in rows}
        return [(npy, rows, np.asarray([j for j, r in enumerate(rows) if newest[r["path"]] == k], dtype=np.int64))
                for k, (npy, rows) in enumerate(table)]

    def current_rows(self) -> list[int]:
        """Row numbers (over all shards, in order) of every file's current rows."""
        out, start = [], 0
        for _, rows, local in self.current_by_shard():
            out += (local + start).tolist()
            start += len(rows)
        return out

    def entries(self) -> list[dict[str, Any]]:
        """The current rows, in row order: ``{"path", ...}``, with ``"start"`` / ``"end"`` in a moment index."""
        return [rows[j] for _, rows, local in self.current_by_shard() for j in local]

    def stamps(self) -> dict[str, tuple[int, int] | None]:
        """path -> (size, mtime_ns) of the file when it was embedded (None: not recorded)."""
        return {r["path"]: (r["size"], r["mtime_ns"]) if "size" in r else None for r in self.entries()}

    def paths(self) -> list[str]:
        """The file of each current row, in row order: every indexed video once (a moment index: once
        per window)."""
        return [r["path"] for r in self.entries()]

    def embeddings(self) -> np.ndarray:
        """(N, dim) float16, the rows of ``paths()`` (each shard read whole and checked, then joined)."""
        parts = [self.shard_arrays(npy, len(rows), ())["video"][local] for npy, rows, local in self.current_by_shard()]
        return np.concatenate(parts) if parts else np.zeros((0, int(self.meta()["dim"])), dtype=np.float16)

    def state_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """A pairwise index's states, shard by shard: ``{name: (n, ...) float16}`` (``"video"`` and
        each other tensor of ``encode_video_state``) for the shard's current rows; joined, the
        blocks' rows are those of ``paths()``. Each shard's files are read and checked whole, one shard at a time."""
        names = [n for n in self.meta().get("state", {}) if n != "video"]
        for npy, rows, local in self.current_by_shard():
            if not len(local):
                continue
            arrays = self.shard_arrays(npy, len(rows), names)
            yield {name: arr if len(local) == len(rows) else arr[local] for name, arr in arrays.items()}

    def append(self, paths: Sequence[str], embeddings: np.ndarray, states: dict[str, np.ndarray] | None = None,
               ranges: Sequence[tuple[float, float] | None] | None = None) -> str:
        """A new shard holding ``paths`` (their embeddings (n, dim); in a moment index each row's
        ``(start, end)`` in ``ranges``), each row stamped with its file's size and modification time
        now (``write_shard``). Returns the shard's stem."""
        ranges = ranges or [None] * len(paths)
        rows = [{"path": p, **file_stamp(p), **({"start": r[0], "end": r[1]} if r else {})}
                for p, r in zip(paths, ranges)]
        return self.write_shard(rows, embeddings, states)

    def write_shard(self, rows: list[dict[str, Any]], embeddings: np.ndarray,
                    states: dict[str, np.ndarray] | None = None) -> str:
        """A new shard of ``rows`` (their embeddings (n, dim)); the .json is written last. Returns its stem.

        A pairwise index also takes the rest of each video's state, ``states`` ``{name: (n, ...)}``
        (``embeddings`` is its ``"video"`` tensor), each saved before the ``.npy`` as
        ``NNNNNN.name.npy``. The first shard records the state's names and shapes in ``meta.json``;
        a later shard with others is refused."""
        pairwise = self.scoring() == PAIRWISE
        if pairwise != (states is not None):
            raise ValueError(f"{self.folder}: a {self.scoring()} index takes "
                             f"{'the video states beside' if pairwise else 'only'} the embeddings")
        number = max(map(int, shard_stems(self.shards) | set(self.meta().get("shards", {}))), default=-1) + 1
        npy = self.shards / f"{number:06d}.npy"
        if pairwise:
            self._record_state(np.asarray(embeddings), states)
            for name, array in states.items():
                part = np.ascontiguousarray(array, dtype=np.float16)
                write_file(npy.with_name(f"{npy.stem}.{name}.npy"), lambda tmp, part=part: save_npy(tmp, part))
        data = np.ascontiguousarray(embeddings, dtype=np.float16)
        write_file(npy, lambda tmp: save_npy(tmp, data))
        files = {"video": npy, **{n: npy.with_name(f"{npy.stem}.{n}.npy") for n in (states or {})}}
        meta = self.meta()  # the shard's record before its .json: a shard counts only once both exist
        write_json(self.folder / "meta.json", {**meta, "shards": {**meta.get("shards", {}),
                                                                  npy.stem: shard_record(files, rows)}})
        write_json(npy.with_suffix(".json"), rows)
        return npy.stem

    def part(self, rank: int) -> "VideoIndex":
        """The folder process ``rank`` of an ``accelerate launch`` embeds its share into
        (``IDX/parts/rankR``: an index of its own, with this one's meta.json less shards and vectors)."""
        part = VideoIndex(self.folder / PARTS / f"rank{rank}")
        if not (part.folder / "meta.json").is_file():
            meta = {k: v for k, v in self.meta().items() if k not in ("shards", "vectors")}
            part.init(meta)
        return part

    def merge_parts(self) -> int:
        """Move every complete shard of ``IDX/parts/*`` (several processes' shares, or what a killed
        run of them left) into this index - read and checked as a search reads it, written again as a
        new shard - then remove the parts. A part's shard that fails its checks is left out, said on
        stderr (its videos are embedded again). Returns the number of shards merged."""
        merged = 0
        for folder in sorted((self.folder / PARTS).glob("rank*")):
            part = VideoIndex(folder)
            try:
                names = [n for n in part.meta().get("state", {}) if n != "video"]
                for npy, rows in part.shard_rows():
                    arrays = part.shard_arrays(npy, len(rows), names)
                    self.write_shard(rows, arrays.pop("video"), arrays if names else None)
                    merged += 1
                    remove_shard(part.folder, npy.stem)
            except FeatureStoreError as e:
                print(f"warning: {e}; the rest of {folder} is left out, its videos are embedded again",
                      file=sys.stderr)
            shutil.rmtree(folder)
        if (self.folder / PARTS).is_dir():
            shutil.rmtree(self.folder / PARTS)
        return merged

    def _record_state(self, video: np.ndarray, states: dict[str, np.ndarray]) -> None:
        """Check a shard's state against ``meta["state"]`` (names and per-video shapes), recording it first."""
        shapes = {"video": list(video.shape[1:]), **{n: list(np.shape(a)[1:]) for n, a in states.items()}}
        bad = [n for n in states if n == "video" or not STATE_NAME.fullmatch(n)]
        if bad:
            raise FeatureStoreError(f"{self.folder}: video state names {bad} cannot name shard files "
                                    "(lower-case letters, digits, '_'; 'video' is the embedding)")
        meta = self.meta()
        if "state" not in meta:
            write_json(self.folder / "meta.json", {**meta, "state": shapes})
        elif meta["state"] != shapes:
            raise FeatureMismatchError(f"{self.folder}: video states {shapes} differ from the index's "
                                       f"{meta['state']}; give a new --output folder")


def _windows(segments: dict[str, float] | None) -> str:
    if segments is None:
        return "whole videos (no --segments)"
    stride = "" if segments["stride"] == segments["seconds"] else f", one every {segments['stride']:g} s"
    return f"windows of {segments['seconds']:g} s{stride} (--segments {segments['seconds']:g})"
