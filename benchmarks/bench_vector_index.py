"""The search index's vector index (``vcap_toolkit.jobs.vector_index``, FAISS) at library scale: 1M
and 10M rows of ViT-B/32's width (512), on this machine.

    nice -n 19 python -m benchmarks.bench_vector_index --rows 1000000 --folder /tmp/vec1m --phase build
    python -m benchmarks.bench_vector_index --folder /tmp/vec1m --phase search
    nice -n 19 python -m benchmarks.bench_vector_index --rows 10000000 --folder /tmp/vec10m --phase build
    python -m benchmarks.bench_vector_index --folder /tmp/vec10m --phase search

The rows are realistic rather than uniform random (``Library``): CLIP embeddings share a common
direction (cosine ~0.35 between unrelated videos) and gather in topics (~0.6 within one), topic
sizes follow a power law (Zipf 0.8 over 10,000 topics), and the 8 moments of one video are close
(~0.9). Queries are text-like: one video's topic and own direction seen through a separate "text"
direction plus noise (the modality gap: cosine ~0.6 to that video's moments, ~0.25 to unrelated
rows), never rows of the index. The rows are generated in chunks into fp16 shard files
(``SHARD_ROWS`` each, memory-mapped ``.npy``, as ``vcap index`` writes them), so 10M x 512 takes
10 GB of disk and little memory.

Measured: the build (training, adding, nprobe tuning; seconds and peak RSS), the index on disk,
top-10 latency per query (p50 / p99 over ``--queries`` single queries, the exact re-ranking from
the memory-mapped shards included) and batched (``--batch`` queries per call), the process's
resident memory while searching (index memory-mapped), and recall@10 against exact search (brute
force over every shard, computed here for the benchmark's own queries, not the build's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on a shared 2-core machine

import numpy as np  # noqa: E402

from vcap_toolkit.jobs import vector_index  # noqa: E402
from vcap_toolkit.jobs.index_files import map_array  # noqa: E402

SHARD_ROWS = 250_000
DIM = 512


class Library:
    """Realistic embeddings of moments: ``topics`` topic directions around one common direction;
    each video (8 consecutive rows) has a topic and a direction of its own; each moment adds noise.
    Row ``i`` belongs to video ``i // 8``; everything about a video is a function of its number, so
    a query can describe one video (``queries``) without the rows in memory."""

    def __init__(self, dim: int = DIM, topics: int = 10_000, atoms: int = 65_536, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.common = _unit(rng.standard_normal(dim)).astype(np.float32)
        self.text = _unit(rng.standard_normal(dim)).astype(np.float32)  # the modality gap: text leans elsewhere
        self.topics = _unit(rng.standard_normal((topics, dim))).astype(np.float32)
        self.atoms = _unit(rng.standard_normal((atoms, dim))).astype(np.float32)
        cdf = np.cumsum(1.0 / np.arange(1, topics + 1) ** 0.8)  # a few big topics, many small ones
        self.cdf = cdf / cdf[-1]

    def _hash(self, video: np.ndarray, salt: int) -> np.ndarray:
        return ((video.astype(np.uint64) * np.uint64(2654435761) + np.uint64(salt * 40503 + self.seed))
                % np.uint64(2**32)).astype(np.float64) / 2**32

    def video_parts(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(topic direction, own direction) of each video: (V, dim) each."""
        topic = np.searchsorted(self.cdf, self._hash(video, 1))
        own = sum(self.atoms[(self._hash(video, 2 + a) * len(self.atoms)).astype(np.int64)] for a in range(3))
        return self.topics[topic], _unit(own).astype(np.float32)

    def rows(self, start: int, n: int) -> np.ndarray:
        """(n, dim) float32 unit rows ``start .. start+n-1``: 0.7 common + 0.7 topic + 0.5 video + 0.35 noise."""
        video = np.arange(start, start + n) // 8
        topic, own = self.video_parts(video)
        noise = np.random.default_rng((self.seed, start)).standard_normal((n, self.dim)).astype(np.float32)
        return _unit(0.7 * self.common + 0.7 * topic + 0.5 * own + 0.35 * _unit(noise)).astype(np.float32)

    def queries(self, n: int, rows: int, seed: int = 99) -> np.ndarray:
        """(n, dim) text-like queries, each describing a random video of the ``rows`` indexed: its
        topic and its own direction seen from the text side (cosine ~0.6 to its moments, ~0.25 to
        unrelated rows), plus noise."""
        rng = np.random.default_rng((self.seed, seed))
        video = rng.integers(0, max(1, rows // 8), n)
        topic, own = self.video_parts(video)
        noise = _unit(rng.standard_normal((n, self.dim)).astype(np.float32))
        return _unit(0.6 * self.text + 0.45 * self.common + 0.6 * topic + 0.4 * own + 0.4 * noise).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_shards(folder: Path, rows: int, library: Library, shard_rows: int = SHARD_ROWS) -> list[Path]:
    """fp16 ``.npy`` shards of ``rows`` rows in ``folder`` (kept when already there, complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        path = folder / f"{k:06d}.npy"
        if not (path.is_file() and np.load(path, mmap_mode="r").shape == (n, library.dim)):
            out = np.lib.format.open_memmap(folder / f".{k:06d}.tmp.npy", mode="w+", dtype=np.float16,
                                            shape=(n, library.dim))
            for i in range(0, n, 50_000):
                out[i:i + 50_000] = library.rows(start + i, min(50_000, n - i))
            out.flush()
            del out
            os.replace(folder / f".{k:06d}.tmp.npy", path)
        paths.append(path)
    return paths


def shard_vectors(paths: list[Path]) -> list[vector_index.ShardVectors]:
    """The shards as ``vector_index`` takes them (every row current), mapped as a search maps them
    (``index_files.map_array``: read-only, random access advised)."""
    out = []
    for path in paths:
        n = np.load(path, mmap_mode="r").shape[0]
        local = np.arange(n, dtype=np.int64)
        mapped = partial(map_array, path, n, [DIM])
        out.append(vector_index.ShardVectors(path.stem, local, vector_index.shard_digest(path.stem * 4, local),
                                             load=mapped, mapped=mapped))
    return out


def exact_top(paths: list[Path], queries: np.ndarray, k: int = 10) -> np.ndarray:
    """(Q, k) ids of the exact top-k by brute force over the fp16 shards."""
    top = vector_index._TopK(queries, k)
    for path in paths:
        rows = np.load(path, mmap_mode="r")
        for i in range(0, len(rows), 100_000):
            part = np.asarray(rows[i:i + 100_000], dtype=np.float32)
            top.add(part, vector_index.row_ids(path.stem, np.arange(i, i + len(part))))
    return top.ids


def memory_mb() -> dict[str, float]:
    """This process's resident memory (MB): all of it, its own (anonymous) and file pages mapped
    (the memory-mapped index and shards: page cache, given back under pressure)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    return {"rss": kb["VmRSS"] / 1024, "anon": kb["RssAnon"] / 1024, "file": kb["RssFile"] / 1024,
            "peak": kb["VmHWM"] / 1024}


def build(folder: Path, rows: int, kind: str) -> dict:
    """Generate the shards (kept when there) and build the vector index; its record in ``record.json``."""
    library = Library()
    t0 = time.perf_counter()
    paths = write_shards(folder / "shards", rows, library)
    generate = time.perf_counter() - t0
    t0 = time.perf_counter()
    record = vector_index.update(folder, None, shard_vectors(paths), DIM, kind)
    record.update(build_s=round(time.perf_counter() - t0, 1), generate_s=round(generate, 1),
                  build_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  build_load=os.getloadavg())
    (folder / "record.json").write_text(json.dumps(record))
    return record


def measure(folder: Path, queries: int, batch: int) -> dict:
    """Search the index ``build`` made: latency single and batched, memory, recall against exact."""
    record = json.loads((folder / "record.json").read_text())
    paths = sorted((folder / "shards").glob("[0-9]*.npy"))
    rows = sum(np.load(p, mmap_mode="r").shape[0] for p in paths)
    qs = Library().queries(queries, rows)
    cached = folder / f"truth_{queries}.npy"  # the exact top-10 of these queries (minutes at 10M): kept
    t0 = time.perf_counter()
    truth = np.load(cached) if cached.is_file() else exact_top(paths, qs)
    np.save(cached, truth)
    exact_s = time.perf_counter() - t0
    shards = shard_vectors(paths)
    before = memory_mb()
    t0 = time.perf_counter()
    searcher = vector_index.open_vectors(folder, record, {s.stem: s.mapped for s in shards})
    open_ms = 1000 * (time.perf_counter() - t0)
    times, found = [], []
    for q in qs:
        t = time.perf_counter()
        found.append(searcher.search(q[None], 10)[1][0])
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(qs), batch):
        searcher.search(qs[i:i + batch], 10)
    batched = (time.perf_counter() - t) / len(qs)
    after = memory_mb()
    keep = ("kind", "factory", "nprobe", "shortlist", "recall@10", "build_s", "train_seconds", "generate_s",
            "build_peak_rss_mb", "build_load")
    return {"rows": rows, "dim": DIM, **{("recall@10_build" if k == "recall@10" else k): record.get(k) for k in keep},
            "recall@10": round(vector_index.recall_at(np.array(found), truth), 4), "queries": len(qs),
            "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 2),
            "batched_ms_per_query": round(1000 * batched, 3), "batch": batch, "open_ms": round(open_ms, 1),
            "index_mb": round(record["bytes"] / 2**20, 1),
            "shards_mb": round(sum(p.stat().st_size for p in paths) / 2**20),
            "search_rss_mb": round(after["rss"]), "search_anon_mb": round(after["anon"]),
            "search_file_mb": round(after["file"]), "search_anon_added_mb": round(after["anon"] - before["anon"]),
            "exact_search_s": round(exact_s, 1), "search_load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, required=True, help="where the shards and the index go")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--kind", default="auto", choices=vector_index.KINDS)
    parser.add_argument("--phase", choices=["build", "search", "both"], default="both",
                        help="build (run it with nice -n 19 on a shared machine), search, or both")
    parser.add_argument("--clean", action="store_true", help="remove the folder afterwards")
    args = parser.parse_args()
    if args.phase in ("build", "both"):
        record = build(args.folder, args.rows, args.kind)
        print(json.dumps({k: v for k, v in record.items() if k != "shards"}))
    if args.phase in ("search", "both"):
        print(json.dumps(measure(args.folder, args.queries, args.batch)))
    if args.clean:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
