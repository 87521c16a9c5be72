"""The vector index of a search index folder: FAISS (Johnson, Douze & Jegou, "Billion-scale similarity
search with GPUs", 2017) over the current rows of the fp16 shards, which stay the source of truth.

Two kinds, chosen by size (``choose``; ``vcap index --vectors exact|approximate`` decides instead):

* **exact** (up to ``EXACT_MAX_ROWS`` rows): ``IndexIDMap(IndexFlatIP)`` over float32 copies of the
  rows' fp16 values - brute-force inner product, so the ids and scores are those of ranking the
  shards themselves (cosine: every row and query is L2-normalised). Opened with
  ``faiss.IO_FLAG_MMAP_IFC``: the vectors stay in the file, memory-mapped.
* **approximate**: ``IVF{nlist}_HNSW32,PQ{m}x4fs`` - k-means cells (inverted lists; ~4 sqrt(rows)
  of them) found through an HNSW graph over the cell centres, each row stored as ``m`` 4-bit
  product-quantisation codes (Jegou, Douze & Schmid, "Product quantization for nearest neighbor
  search", 2011; ``m / 2`` bytes: 32 for a 512-wide row) scanned with SIMD lookups ("fast scan",
  Andre, Kermarrec & Le Scouarnec, "Quicker ADC", 2019), trained on a sample of the rows. A query
  scans its ``nprobe`` nearest cells, takes the ``shortlist`` best rows by their codes and re-ranks
  them exactly from the fp16 shards (memory-mapped), so every score it returns is the exact cosine.
  Both are chosen when the index is trained (``_tune``): the cheapest pair (``_cost_us``) whose
  recall@10 against exact search reaches ``RECALL_TARGET`` on ``RECALL_QUERIES`` queries (indexed
  rows plus 1.25 times as much isotropic noise: cosine ~0.6 to their row, about as far as a caption's
  embedding from its video's); what it measured is recorded. Read into memory (40 bytes a row: 400
  MB at 10M rows): FAISS 1.15 memory-maps plain IVF lists (``IO_FLAG_MMAP``), not fast-scan ones
  (``open_vectors``).

Ids: row ``j`` of shard ``NNNNNN`` is ``NNNNNN << 32 | j`` (``row_ids``), so a shard leaves the index
as one id range. ``meta["vectors"]["shards"]`` holds a digest of what the index holds of each shard
(its SHA-256 and which rows are current); ``update`` brings the index in line with the shards - shards
gone or changed leave it, new ones are added, nothing else is touched - and trains a new one only when
the kind changes with size or the rows outgrow ``RETRAIN_GROWTH`` times those it was trained on.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import FeatureStoreError

AUTO, EXACT, APPROXIMATE = "auto", "exact", "approximate"
KINDS = (AUTO, EXACT, APPROXIMATE)
EXACT_MAX_ROWS = 100_000  # brute force: 28 ms a query at 100k rows of 512 on 2 busy cores (bench_search)
RECALL_TARGET = 0.95
RECALL_QUERIES = 200
QUERY_NOISE = 1.25  # recall queries: a row plus this much noise (text queries sit far from their video)
NPROBES = (4, 8, 16, 32, 64, 128, 256, 512)
SHORTLISTS = (100, 300, 1000)  # rows re-ranked exactly per query, tried at build time
TRAIN_PER_CELL = 40  # k-means sample per cell (faiss warns below 39)
MIN_APPROXIMATE_ROWS = 256  # fewer rows than this are searched exactly whatever is asked
RETRAIN_GROWTH = 4.0  # an approximate index trained on N rows is trained again past this many times N
_SHARD_BITS = 32


@dataclass(frozen=True)
class ShardVectors:
    """What the vector index needs of one shard: its stem, its current rows (positions, int64) and
    their digest, and its vectors - ``load()`` the current rows read and checked (float16 (n, dim)),
    ``mapped()`` the whole shard memory-mapped (for re-ranking by position)."""

    stem: str
    local: np.ndarray
    digest: str
    load: Callable[[], np.ndarray]
    mapped: Callable[[], np.ndarray]


def shard_digest(sha256: str, local: np.ndarray) -> str:
    """What the vector index records of a shard: the SHA-256 of its bytes' hash and its current rows."""
    return hashlib.sha256(sha256.encode() + np.asarray(local, dtype="<i8").tobytes()).hexdigest()


def row_ids(stem: str, local: np.ndarray) -> np.ndarray:
    """The ids of rows ``local`` of shard ``stem`` (int64)."""
    return (np.int64(int(stem)) << _SHARD_BITS) | np.asarray(local, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shard numbers, positions)`` of ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> _SHARD_BITS, ids & ((1 << _SHARD_BITS) - 1)


def _pq_m(dim: int) -> int:
    """Sub-quantisers of the codes: ``dim / 8`` (8 dimensions each: 64 for ViT-B/32's 512), or the
    largest even divisor of ``dim`` below that (4-bit fast-scan codes come in pairs)."""
    return max((m for m in range(2, max(2, dim // 8) + 1, 2) if dim % m == 0), default=0)


def choose(rows: int, dim: int, kind: str = AUTO) -> dict[str, Any]:
    """The index for ``rows`` rows of width ``dim``: ``{"kind", "factory", "nlist", "m"}``. ``auto``:
    exact up to ``EXACT_MAX_ROWS``. Approximate: ~4 sqrt(rows) cells (FAISS's guideline; a power of
    two), at most rows / ``TRAIN_PER_CELL`` so that every cell trains on enough rows; fewer than
    ``MIN_APPROXIMATE_ROWS`` rows cannot train its codebooks and are searched exactly."""
    if kind not in KINDS:
        raise ValueError(f"vector index kind {kind!r}: one of {KINDS}")
    if kind == EXACT or (kind == AUTO and rows <= EXACT_MAX_ROWS) or rows < MIN_APPROXIMATE_ROWS:
        return {"kind": EXACT, "factory": "IDMap,Flat", "nlist": 0, "m": 0}
    nlist = min(2 ** round(math.log2(4 * math.sqrt(rows))), 2 ** int(math.log2(max(rows // TRAIN_PER_CELL, 1))))
    m = _pq_m(dim)
    codes = f"PQ{m}x4fs" if m else f"PQ{dim}x8np"  # an odd width: one byte a dimension, scanned plainly
    return {"kind": APPROXIMATE, "factory": f"IVF{nlist}_HNSW32,{codes}", "nlist": nlist, "m": m or dim}


def _new(plan: dict[str, Any], dim: int) -> faiss.Index:
    return faiss.index_factory(dim, plan["factory"], faiss.METRIC_INNER_PRODUCT)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _add(index: faiss.Index, shard: ShardVectors, chunk: int = 65536) -> np.ndarray:
    """Add ``shard``'s current rows to ``index``; returns them (float32)."""
    vectors = _f32(shard.load())
    ids = row_ids(shard.stem, shard.local)
    for i in range(0, len(ids), chunk):
        index.add_with_ids(vectors[i:i + chunk], ids[i:i + chunk])
    return vectors


def _sample(shards: list[ShardVectors], count: int, seed: int = 0) -> np.ndarray:
    """About ``count`` current rows drawn uniformly from all shards (float32), one shard read at a time."""
    total = sum(len(s.local) for s in shards)
    rng = np.random.default_rng(seed)
    parts = []
    for s in shards:
        take = min(len(s.local), int(round(count * len(s.local) / max(total, 1))))
        if take:
            parts.append(_f32(s.load()[np.sort(rng.choice(len(s.local), take, replace=False))]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _queries(sample: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Recall queries: ``count`` sampled rows plus isotropic noise of ``QUERY_NOISE`` times their
    norm, L2-normalised (cosine ~0.6 to their row: about as far as a caption from its video's)."""
    rng = np.random.default_rng(seed)
    rows = sample[rng.choice(len(sample), min(count, len(sample)), replace=False)]
    noise = rng.standard_normal(rows.shape).astype(np.float32)
    noise *= QUERY_NOISE * np.linalg.norm(rows, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    q = rows + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class _TopK:
    """Running exact top-``k`` ids of each query over the shards as they are added."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.q @ vectors.T], axis=1)  # (Q, k + n)
        ids = np.concatenate([self.ids, np.broadcast_to(ids, (len(self.q), len(ids)))], axis=1)
        if scores.shape[1] > self.k:
            part = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]  # the k best, unordered
            scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
        order = np.argsort(-scores, axis=1, kind="stable")
        self.scores, self.ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's true top-``k`` ids among its ``found`` top-``k``."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def _cost_us(nprobe: int, shortlist: int, rows: int, nlist: int) -> float:
    """The modelled time of one query (microseconds): the fast-scan codes of ``nprobe`` cells (~1 ns
    a code) and ``shortlist`` rows re-ranked from the memory-mapped shards (~4 us a row, cached).
    Choosing by this, not by the times measured while building, keeps the choice the same on a busy
    machine (the build runs at low priority beside other work)."""
    return nprobe * rows / nlist / 1000 + 4 * shortlist


def _tune(index: faiss.Index, shards: list[ShardVectors], queries: np.ndarray, truth: np.ndarray
          ) -> tuple[int, int, float, dict[str, Any]]:
    """The cheapest ``(nprobe, shortlist)`` (``_cost_us``) whose re-ranked recall@10 reaches
    ``RECALL_TARGET`` (else the most accurate), its recall, and what was measured of each tried
    (``"nprobe/shortlist": [recall, ms per query]``). For each shortlist nprobe doubles until the
    target is reached, the recall stops growing (the codes, not the cells, limit it: a longer
    shortlist is tried) or a shorter shortlist already reached it with as many cells."""
    searcher = VectorSearcher(index, {s.stem: s.mapped for s in shards}, APPROXIMATE, 1, SHORTLISTS[0])
    tried: dict[str, list[float]] = {}
    nlist, reached = faiss.extract_index_ivf(index).nlist, None
    for shortlist in SHORTLISTS:
        searcher.shortlist, last = shortlist, -1.0
        for nprobe in [n for n in NPROBES if n <= nlist] or [nlist]:
            if reached is not None and nprobe >= reached:
                break
            searcher.set_nprobe(nprobe)
            t0 = time.perf_counter()
            found = np.concatenate([searcher.search(q[None], 10)[1] for q in queries])  # one query at a time, as served
            recall, ms = recall_at(found, truth), 1000 * (time.perf_counter() - t0) / len(queries)
            tried[f"{nprobe}/{shortlist}"] = [round(recall, 4), round(ms, 2)]
            if recall >= RECALL_TARGET:
                reached = nprobe
                break
            if recall - last < 0.002:
                break
            last = recall
    good = [k for k, (r, _) in tried.items() if r >= RECALL_TARGET]
    cost = {k: _cost_us(*map(int, k.split("/")), index.ntotal, nlist) for k in tried}
    best = min(good, key=cost.__getitem__) if good else max(tried, key=lambda k: tried[k][0])
    nprobe, shortlist = map(int, best.split("/"))
    return nprobe, shortlist, tried[best][0], tried


def _train_new(plan: dict[str, Any], dim: int, shards: list[ShardVectors], log: Callable[[str], None]
               ) -> tuple[faiss.Index, dict[str, Any]]:
    """A new index of every shard's current rows; an approximate one trained, tuned and measured."""
    index, total, t0 = _new(plan, dim), sum(len(s.local) for s in shards), time.perf_counter()
    extra: dict[str, Any] = {"trained_rows": total}
    top = None
    if plan["kind"] == APPROXIMATE:
        sample = _sample(shards, plan["nlist"] * TRAIN_PER_CELL)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = 10  # k-means iterations: 2.5x faster than FAISS's 25, the same recall after re-ranking
        if plan["nlist"] >= 4096:  # k-means assigns through an HNSW graph of the centres: O(log k), not O(k)
            ivf.clustering_index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        log(f"vectors: training {plan['factory']} on {len(sample)} of {total} rows")
        index.train(sample)
        queries = _queries(sample, RECALL_QUERIES)
        top = _TopK(queries, 10)
        extra.update(train_sample=len(sample), train_seconds=round(time.perf_counter() - t0, 1))
    for shard in shards:
        vectors = _add(index, shard)
        if top is not None:
            top.add(vectors, row_ids(shard.stem, shard.local))
    if top is not None:
        nprobe, shortlist, recall, tried = _tune(index, shards, top.q, top.ids)
        extra.update({"nprobe": nprobe, "shortlist": shortlist, "recall@10": recall, "recall_target": RECALL_TARGET,
                      "tuning": tried,
                      "recall_queries": len(top.q), "measured_rows": total})
        log(f"vectors: nprobe {nprobe}, shortlist {shortlist}: recall@10 {recall:.3f} against exact search "
            f"({len(top.q)} queries, {tried[f'{nprobe}/{shortlist}'][1]} ms each)")
        if recall < RECALL_TARGET:
            log(f"warning: no setting tried reached recall@10 {RECALL_TARGET}; kept the most accurate ({recall:.3f})")
    extra["build_seconds"] = round(time.perf_counter() - t0, 1)
    return index, extra


def update(folder: Path, old: dict[str, Any] | None, shards: list[ShardVectors], dim: int, kind: str = AUTO,
           log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Bring the vector index of ``folder`` in line with ``shards`` (each shard's current rows) and
    return its record for ``meta["vectors"]``. ``old``: the record of the index there now (None:
    none); its file is used only when its size and SHA-256 are as recorded. The file written is
    ``vectors-HASH.faiss``, named by its content's SHA-256 (a record names one content, whatever a
    killed run left); ``kind``: ``auto``, ``exact`` or ``approximate`` (``choose``)."""
    shards = [s for s in shards if len(s.local)]
    total = sum(len(s.local) for s in shards)
    want = {s.stem: s.digest for s in shards}
    chosen = kind if kind != AUTO else (old or {}).get("chosen", AUTO)  # a rerun keeps an explicit choice
    plan = choose(total, dim, chosen)
    path = folder / old["file"] if old is not None else None
    reuse = (path is not None and path.is_file() and old["kind"] == plan["kind"]
             and (plan["kind"] == EXACT or old["factory"] == plan["factory"]
                  or total <= RETRAIN_GROWTH * old.get("trained_rows", 0))
             and path.stat().st_size == old["bytes"] and file_sha256(path) == old["sha256"])
    if reuse:
        index = faiss.read_index(str(path))
        extra = {k: v for k, v in old.items() if k not in ("file", "rows", "bytes", "sha256", "shards", "faiss")}
        stale = [stem for stem, d in old["shards"].items() if want.get(stem) != d]
        for stem in stale:
            index.remove_ids(faiss.IDSelectorRange(int(row_ids(stem, [0])[0]), int(row_ids(stem, [0])[0]) + (1 << 32)))
        for shard in shards:
            if old["shards"].get(shard.stem) != shard.digest:
                _add(index, shard)
        added = [stem for stem in want if old["shards"].get(stem) != want[stem]]
        if not stale and not added:
            return old  # nothing changed: the file stays as it is
        log(f"vectors: {len(stale)} shard(s) out, {len(added)} in ({plan['kind']}, no retraining)")
    else:
        index, extra = _train_new(plan, dim, shards, log)
        extra.update(factory=plan["factory"], kind=plan["kind"], nlist=plan["nlist"], m=plan["m"])
        extra.setdefault("nprobe", 0)
    if index.ntotal != total:
        raise FeatureStoreError(f"{folder}: the vector index holds {index.ntotal} rows after the update, not the "
                                f"shards' {total}; run 'vcap index' again")
    data = faiss.serialize_index(index)  # uint8 (bytes,): named by its hash, so a record names one content
    digest = hashlib.sha256(memoryview(data)).hexdigest()
    name = f"vectors-{digest[:16]}.faiss"
    write_file(folder / name, memoryview(data))
    return {"file": name, "shortlist": SHORTLISTS[0], **extra, "chosen": chosen, "rows": total, "bytes": len(data),
            "sha256": digest, "shards": want, "faiss": faiss.__version__}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


class VectorSearcher:
    """Top-k search over a vector index: exact, or approximate and re-ranked exactly from the shards.

    Args:
        index: the FAISS index (``open_vectors`` reads it memory-mapped).
        mapped: shard stem -> a callable giving the shard's whole fp16 array (memory-mapped).
        kind, nprobe, shortlist: as recorded in ``meta["vectors"]``.
    """

    def __init__(self, index: faiss.Index, mapped: dict[str, Callable[[], np.ndarray]], kind: str, nprobe: int,
                 shortlist: int):
        self.index, self.kind, self.shortlist = index, kind, shortlist
        self._mapped, self._arrays = mapped, {}
        if kind == APPROXIMATE:
            self.set_nprobe(nprobe)

    def set_nprobe(self, nprobe: int) -> None:
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = nprobe
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(64, 2 * nprobe)  # the cells' graph finds nprobe

    def rows(self, stem: str) -> np.ndarray:
        """Shard ``stem``'s fp16 rows, memory-mapped once."""
        if stem not in self._arrays:
            self._arrays[stem] = self._mapped[stem]()
        return self._arrays[stem]

    def candidates(self, queries: np.ndarray, count: int) -> np.ndarray:
        """(Q, <=count) ids the index ranks highest for each query (-1: fewer rows than asked)."""
        return self.index.search(_f32(queries), min(count, max(1, self.index.ntotal)))[1]

    def exact_scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(n,) float32 cosine of ``query`` with rows ``ids``, read from the fp16 shards."""
        shard, pos = split_ids(ids)
        out = np.empty(len(ids), dtype=np.float32)
        for number in np.unique(shard):
            sel = np.flatnonzero(shard == number)
            order = np.argsort(pos[sel])  # ascending positions: the mapped file read forwards
            rows = np.asarray(self.rows(f"{int(number):06d}")[pos[sel][order]], dtype=np.float32)  # (m, D)
            out[sel[order]] = np.einsum("md,d->m", rows, query)  # not BLAS: its threads cost more than this
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` (Q, k) of the ``k`` best rows of each query, best first (ids -1 and
        scores -inf past the index's size). Scores are exact inner products of the fp16 rows."""
        queries = _f32(queries)
        if self.kind == EXACT:
            scores, ids = self.index.search(queries, k)
            return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids
        cand = self.candidates(queries, max(self.shortlist, k))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (q, row) in enumerate(zip(queries, cand)):
            row = row[row >= 0]
            exact = self.exact_scores(q, row)
            best = np.argsort(-exact, kind="stable")[:k]
            scores[i, :len(best)], ids[i, :len(best)] = exact[best], row[best]
        return scores, ids


def open_vectors(folder: Path, record: dict[str, Any], mapped: dict[str, Callable[[], np.ndarray]]) -> VectorSearcher:
    """The vector index of ``folder`` as ``record`` describes it: the exact index memory-mapped
    (``IO_FLAG_MMAP_IFC``), the approximate one read (see below); the shards it re-ranks from stay
    memory-mapped (``mapped``). A file of another size than recorded, or one FAISS cannot read, is a
    ``FeatureStoreError``."""
    path = folder / record["file"]
    if not path.is_file() or path.stat().st_size != record["bytes"]:
        raise FeatureStoreError(f"{path}: missing, or not the {record['bytes']} bytes meta.json records "
                                "(cut or replaced); run 'vcap index' on the folder again to rebuild it")
    # The exact index's vectors are memory-mapped (IO_FLAG_MMAP_IFC: zero-copy, pages from the file).
    # FAISS 1.15 reads fast-scan inverted lists into memory whatever the flag (measured at 1M rows:
    # IO_FLAG_MMAP reads them, IO_FLAG_MMAP_IFC maps the file and copies them as well), so the
    # approximate index is read plainly: its codes and ids, 40 bytes a row, in the process's memory.
    flag = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if record["kind"] == EXACT else 0
    try:
        index = faiss.read_index(str(path), flag)
    except RuntimeError as e:
        raise FeatureStoreError(f"{path}: not a readable FAISS index ({str(e).splitlines()[0][:200]}); "
                                "run 'vcap index' on the folder again to rebuild it") from None
    if index.ntotal != record["rows"]:
        raise FeatureStoreError(f"{path}: holds {index.ntotal} rows, not the {record['rows']} meta.json records; "
                                "run 'vcap index' on the folder again to rebuild it")
    return VectorSearcher(index, mapped, record["kind"], record["nprobe"], record["shortlist"])
