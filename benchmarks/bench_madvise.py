"""What ``MADV_RANDOM`` on the index shards saves: page cache brought in by re-ranking reads.

    sudo python -m benchmarks.bench_madvise --folder /tmp/madv --rows 2000000 --queries 100 --rerank 1000

A search re-ranks its FAISS shortlist by reading those rows from the memory-mapped fp16 shards
(``vcap_toolkit.jobs.index_files.map_array``, which advises random access). This writes one shard-like
``.npy`` file of ``--rows`` x 512 fp16 rows (kept in ``--folder`` for reruns), then, in rounds that
alternate the two advices - random (as ``map_array`` maps) and normal (the kernel's default, the
mapping before) - drops the page cache (``/proc/sys/vm/drop_caches``: needs root), reads ``--queries``
x ``--rerank`` random rows through the mapping as a re-rank does, twice (the first queries after the
drop, then as many more), and after each measures the file's pages in the page cache with
util-linux's ``fincore`` and the mean time a query took. Prints one line per round and a JSON summary last.
BENCHMARKS.md ("Search at library scale") lists what this measured.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from vcap_toolkit.jobs.index_files import map_array

WIDTH = 512


def write_shard(path: Path, rows: int, chunk: int = 250_000) -> None:
    """``rows`` x 512 random fp16 rows as an ``.npy`` file (written once, then reused)."""
    if path.is_file() and np.load(path, mmap_mode="r").shape == (rows, WIDTH):
        return
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(rows, WIDTH))
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        out[start:start + chunk] = rng.standard_normal((min(chunk, rows - start), WIDTH), dtype=np.float32)
    out.flush()
    del out
    tmp.replace(path)


def cached_bytes(path: Path) -> int:
    """The bytes of ``path`` in the page cache (``fincore``)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def one_round(path: Path, rows: int, advice: str, queries: int, rerank: int, seed: int) -> dict[str, float]:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    array = map_array(path, rows, [WIDTH])  # advised MADV_RANDOM
    if advice == "normal":
        array.base.madvise(mmap.MADV_NORMAL)
    rng = np.random.default_rng(seed)
    total, ms, cached = 0.0, [], []
    for _ in range(2):  # the first queries after the drop, then as many more
        t = time.perf_counter()
        for _ in range(queries):
            shortlist = np.sort(rng.choice(rows, size=rerank, replace=False))
            total += float(array[shortlist].astype(np.float32).sum())
        ms.append(round(1000 * (time.perf_counter() - t) / queries, 2))
        cached.append(round(cached_bytes(path) / 2**20, 1))
    return {"advice": advice, "page_cache_mb": cached, "ms_a_query": ms, "checksum": total}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True, help="where the shard file is written (and kept)")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--rerank", type=int, default=1000, help="rows read a query (the shortlist)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if not hasattr(mmap, "MADV_RANDOM") or shutil.which("fincore") is None:
        p.error("needs Linux's madvise and util-linux's fincore")
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        p.error("needs root: each round drops the page cache first (/proc/sys/vm/drop_caches)")
    args.folder.mkdir(parents=True, exist_ok=True)
    path = args.folder / "shard.npy"
    write_shard(path, args.rows)
    results = []
    for r in range(args.rounds):
        for advice in ("random", "normal"):  # the same rows for both advices in a round
            res = one_round(path, args.rows, advice, args.queries, args.rerank, seed=r)
            print(f"round {r + 1} {advice:>6}: after {args.queries} / {2 * args.queries} queries of {args.rerank} rows, "
                  f"{res['page_cache_mb'][0]} / {res['page_cache_mb'][1]} MB of the {path.stat().st_size / 2**20:.0f}-MB "
                  f"file in the page cache; {res['ms_a_query'][0]} / {res['ms_a_query'][1]} ms a query", flush=True)
            results.append(res)
    summary = {"rows": args.rows, "queries": args.queries, "rerank": args.rerank, "rounds": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
