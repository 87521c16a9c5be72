"""Ranking an index's rows for one query: ``IndexSearcher`` (used by ``search.search`` and ``vcap serve``).

An index with a vector index (``meta["vectors"]``, ``vector_index``) is searched through it: FAISS
picks the candidates (exact, or approximate plus an exact re-rank of its shortlist from the fp16
shards), and every score returned is computed from the shard rows themselves. Before it is used,
each shard's files are memory-mapped with their shape and size checked (a cut file is refused); the
bytes and rows of every shard a result comes from are checked against the SHA-256 ``meta.json``
recorded (an edited shard is refused), once per searcher. A pairwise model (X-CLIP, tightTransf)
scores a sentence against every row of an exact index, and against the approximate index's
shortlist of ``PAIRWISE_SHORTLIST`` rows (by the pooled embeddings) otherwise - exactly, by its
own ``pair_scores`` of each row's stored state.

An index without a vector index (written before them), or one whose vector index is out of date
(a ``vcap index`` killed before it updated it; said in a warning) and small enough to be ranked
directly, is ranked by brute force over its checked shards, as before; a larger one is refused
until ``vcap index`` runs again.

Results are filtered and collapsed after ranking: a file gone since it was indexed, or changed
(its size or modification time not its row's: the embedding describes what it held), is left out
(said once per kind), and overlapping windows of one video collapse to the best (``moments.collapse``); the
ranking asks for more rows until ``top`` results survive or every row has been ranked.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from retrieval_pretrain.foundation.errors import FeatureStoreError
from retrieval_pretrain.modeling.model import PairwiseScorer
from vcap_toolkit.jobs.index_files import REBUILD, check_recorded, map_array, read_array, read_rows
from vcap_toolkit.jobs.index_store import VideoIndex
from vcap_toolkit.jobs.index_upkeep import changed_since
from vcap_toolkit.jobs.moments import Hit, collapse
from vcap_toolkit.jobs.vector_index import EXACT, EXACT_MAX_ROWS, VectorSearcher, open_vectors, split_ids

MAX_RANKED = 1 << 16  # rows ranked at most for one query, however many results are left out (gone files)
PAIRWISE_SHORTLIST = 1000  # rows an approximate pairwise search scores with the model (at least 20x --top)


def shards_digest(records: dict[str, Any]) -> str:
    """What ``meta["vectors"]["shards_sha256"]`` records: the SHA-256 of every shard record at the
    time the vector index was brought up to date (any shard written or removed since changes it)."""
    text = "".join(f"{stem}:{rec['sha256']['video']}:{rec['rows_sha256']};" for stem, rec in sorted(records.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


class IndexSearcher:
    """An open index, ready to rank rows for queries (module docstring)."""

    def __init__(self, folder: str | Path):
        self.index = VideoIndex(folder)
        self.folder = self.index.folder
        self.meta = self.index.meta()
        self.moments = "segments" in self.meta
        self.missing: set[str] = set()
        self.vectors = self._open_vectors()
        self._checked: dict[str, list[dict[str, Any]]] = {}
        self._brute: tuple[list[dict[str, Any]], np.ndarray] | None = None
        self._stamps: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) embedded, of the rows ranked

    def _open_vectors(self) -> VectorSearcher | None:
        record, records = self.meta.get("vectors"), self.meta.get("shards")
        if record is None or records is None:
            return None  # an index written before vector indexes
        complete = [npy.stem for npy in self.index.complete_shards()]
        check_recorded(self.folder / "meta.json", records, complete)  # refuses a shard without record
        self.missing = set(records) - set(complete)  # recorded, not complete (said): their rows left out
        fresh = record["shards_sha256"] == shards_digest(records)
        path = self.folder / record["file"]
        if not fresh or not path.is_file() or path.stat().st_size != record["bytes"]:
            why = "is missing or cut" if fresh else "is out of date (a 'vcap index' stopped before updating it)"
            if record["rows"] > EXACT_MAX_ROWS:
                raise FeatureStoreError(f"{path}: the vector index {why}; run 'vcap index' on the folder again")
            warn(f"{path}: the vector index {why}; ranking the shards directly. Run 'vcap index' again")
            return None
        names = [n for n in self.meta.get("state", {}) if n != "video"]
        for stem in sorted(set(records) - self.missing):  # shape and size of every shard file: a cut one refused
            for name in ("video", *names):
                self._map(stem, name)
        return open_vectors(self.folder, record, {stem: partial(self._map, stem) for stem in records})

    def _map(self, stem: str, name: str = "video") -> np.ndarray:
        """Shard ``stem``'s tensor ``name``, memory-mapped (``index_files.map_array``)."""
        shape = self.meta.get("state", {}).get(name, [self.meta["dim"]])
        return map_array(self.index.array_file(stem, name), self.meta["shards"][stem]["rows"], shape)

    def size(self) -> int:
        """The number of rows searched (current rows: files, or windows)."""
        return self.vectors.index.ntotal if self.vectors is not None else len(self._brute_force()[0])

    def _brute_force(self) -> tuple[list[dict[str, Any]], np.ndarray]:
        if self._brute is None:
            self._brute = (self.index.entries(), self.index.embeddings())
        return self._brute

    def _rows(self, stem: str) -> list[dict[str, Any]]:
        """Shard ``stem``'s rows, its ``.json`` and ``.npy`` files checked against their SHA-256 (once)."""
        if stem not in self._checked:
            record = self.meta["shards"][stem]
            rows = read_rows(self.index.shards / f"{stem}.json", record)
            shapes = self.meta.get("state", {"video": [self.meta["dim"]]})
            for name, digest in record["sha256"].items():
                read_array(self.index.array_file(stem, name), len(rows), shapes.get(name, [self.meta["dim"]]), digest)
            self._checked[stem] = rows
        return self._checked[stem]

    def _hit(self, row: dict[str, Any], score: float) -> Hit:
        if "size" in row and "mtime_ns" in row:
            self._stamps[row["path"]] = (row["size"], row["mtime_ns"])
        return Hit(row["path"], round(float(score), 6), row.get("start"), row.get("end"))

    def _as_indexed(self, path: str) -> str | None:
        """None when the file at ``path`` is the one embedded; else why not: ``"gone"``, or ``"changed"``
        (size or modification time differ from its row's: its embedding describes another video)."""
        if not os.path.exists(path):
            return "gone"
        return "changed" if changed_since(path, self._stamps.get(path)) else None

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` without padding (-1) and without rows of recorded shards that are not complete."""
        ids = ids[ids >= 0]
        if self.missing:
            ids = ids[~np.isin(split_ids(ids)[0], [int(s) for s in self.missing])]
        return ids

    def _by_id(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        shard, pos = split_ids(ids)
        out = []
        for number, j, s in zip(shard.tolist(), pos.tolist(), scores.tolist()):
            stem = f"{number:06d}"
            if stem not in self.meta["shards"]:
                raise FeatureStoreError(f"{self.folder / self.meta['vectors']['file']}: holds row {j} of shard {stem}, "
                                        f"which meta.json does not record; {REBUILD}")
            out.append(self._hit(self._rows(stem)[j], s))
        return out

    def by_vector(self, query: np.ndarray, top: int) -> list[Hit]:
        """The ``top`` results for an L2-normalised embedding ``query`` (D,), by cosine, best first."""
        query = np.asarray(query, dtype=np.float32)
        if self.vectors is None:
            entries, emb = self._brute_force()
            scores = cosine_scores(emb, query)
            return self._finish(lambda k: [self._hit(entries[r], s) for r, s in _top(scores, k)], top)

        def ranked(k: int) -> list[Hit]:
            want = k if self.vectors.kind == EXACT else max(k, self.vectors.shortlist)
            ids = self._present(self.vectors.candidates(query[None], want)[0])
            exact = self.vectors.exact_scores(query, ids)  # from the shards: the scores returned
            best = np.argsort(-exact, kind="stable")[:k]
            return self._by_id(ids[best], exact[best])

        return self._finish(ranked, top)

    @torch.no_grad()
    def by_pairs(self, model: PairwiseScorer, text_state: torch.Tensor, text_embedding: np.ndarray, top: int,
                 device: torch.device) -> list[Hit]:
        """The ``top`` results for a sentence by a pairwise model's own score: every row of an exact
        (or no) vector index, an approximate one's shortlist by ``text_embedding`` (module docstring)."""
        if self.vectors is None or self.vectors.kind == EXACT:
            entries = self.index.entries()
            scores = pair_scores_over_index(model, self.index, text_state, device)  # every shard read and checked
            return self._finish(lambda k: [self._hit(entries[r], s) for r, s in _top(scores, k)], top)
        shortlist = self.vectors.candidates(np.asarray(text_embedding, dtype=np.float32)[None],
                                            max(PAIRWISE_SHORTLIST, 20 * top))[0]
        shortlist = self._present(shortlist)
        scores = self._pair_scores_of(model, shortlist, text_state, device)
        order = np.argsort(-scores, kind="stable")
        return self._finish(lambda k: self._by_id(shortlist[order[:k]], scores[order[:k]]), top)

    def _pair_scores_of(self, model: PairwiseScorer, ids: np.ndarray, text_state: torch.Tensor,
                        device: torch.device) -> np.ndarray:
        """(n,) pair scores of rows ``ids`` from their stored states (memory-mapped shards)."""
        names = list(self.meta.get("state", {"video": None}))
        shard, pos = split_ids(ids)
        out = np.empty(len(ids), dtype=np.float32)
        for number in np.unique(shard):
            stem, sel = f"{int(number):06d}", np.flatnonzero(shard == number)
            state = {n: torch.from_numpy(np.asarray(self._map(stem, n)[pos[sel]], dtype=np.float32)).to(device)
                     for n in names}  # (m, ...)
            out[sel] = model.pair_scores(state, text_state.to(device)).float().cpu()[:, 0].numpy()
        return out

    def _finish(self, ranked: Callable[[int], list[Hit]], top: int) -> list[Hit]:
        """``top`` results of ``ranked(k)`` (the best ``k`` rows, best first) whose files exist, without
        overlapping windows of one video; ``k`` grows until there are enough or no more rows (or
        ``MAX_RANKED``: an index that many files have left needs 'vcap index' again, as it says)."""
        total = min(self.size(), MAX_RANKED)
        if total == 0:
            return []
        k = min(total, top * (4 if self.moments else 2) + 16)
        while True:
            hits = ranked(k)
            why = {h.path: self._as_indexed(h.path) for h in hits}
            found = collapse(h for h in hits if why[h.path] is None)
            if len(found) >= top or k >= total:
                break
            k = min(total, k * 4)
        for reason, said in (("gone", "no longer exist"), ("changed", "changed since they were indexed")):
            if reason in why.values():
                warn(f"{self.folder}: some indexed videos {said} and were left out; rerun 'vcap index'")
        return found[:top]


def _top(scores: torch.Tensor, top: int) -> list[tuple[int, float]]:
    """The ``top`` highest of ``scores`` (N,): ``[(row, score)]``, best first."""
    values, rows = scores.topk(min(top, len(scores)))
    return [(int(r), round(float(v), 6)) for v, r in zip(values, rows)]


def cosine_scores(embeddings: np.ndarray, query: np.ndarray) -> torch.Tensor:
    """(N,) cosine of each row of ``embeddings`` (N, D) with ``query`` (D,) (both L2-normalised).
    Chunked, so a 100k-row fp16 index is never converted whole."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float32))
    scores = torch.empty(len(embeddings))
    for i in range(0, len(embeddings), 65536):
        scores[i:i + 65536] = torch.from_numpy(np.asarray(embeddings[i:i + 65536], dtype=np.float32)) @ q
    return scores


def rank(embeddings: np.ndarray, query: np.ndarray, top: int) -> list[tuple[int, float]]:
    """The ``top`` rows of ``embeddings`` (N, D) most similar to ``query`` (D,) by cosine (both
    L2-normalised): ``[(row, similarity)]``, best first."""
    return _top(cosine_scores(embeddings, query), top)


@torch.no_grad()
def pair_scores_over_index(model: PairwiseScorer, index: VideoIndex, text_state: torch.Tensor, device: torch.device,
                           videos_per_block: int = 1024) -> torch.Tensor:
    """(N,) a pairwise model's ``pair_scores`` of one query with every indexed row, rows of
    ``index.paths()``, float32 on the CPU.

    Args:
        text_state: (1, ...) the query's ``encode_text_state``.
        videos_per_block: rows scored per call; bounds the memory of the model's per-pair work
            and of the float32 copy of the stored fp16 states (X-CLIP ViT-B/32: ~100 KB a video).
    """
    text = text_state.to(device)
    out = []
    for block in index.state_blocks():
        n = len(block["video"])
        for i in range(0, n, videos_per_block):
            state = {k: torch.from_numpy(np.asarray(v[i:i + videos_per_block], dtype=np.float32)).to(device)
                     for k, v in block.items()}  # (bv, ...)
            out.append(model.pair_scores(state, text).float().cpu()[:, 0])  # (bv,)
    return torch.cat(out) if out else torch.zeros(0)


def rank_pairs(model: PairwiseScorer, index: VideoIndex, text_state: torch.Tensor, top: int, device: torch.device,
               videos_per_block: int = 1024) -> list[tuple[int, float]]:
    """``rank`` for a pairwise index: the ``top`` rows of ``index.paths()`` with the highest pair
    score (the model's cosine of each video with the query prompted by it), best first."""
    return _top(pair_scores_over_index(model, index, text_state, device, videos_per_block), top)
