"""Search: query time on a 100k-video index (brute force over the checked shards, and through the
index's exact FAISS vector index), and R@1 of caption queries through the index on the demo's test
videos beside `vcap eval-retrieval`'s t2v R@1 (same model). Library scale (1M, 10M rows, the
approximate index): ``benchmarks/bench_vector_index.py``.

    python -m benchmarks.bench_search                                   # 100k generated embeddings
    python -m benchmarks.bench_search --model demo_out/stage1/model --data demo_out/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vcap_toolkit.jobs.search import IndexSearcher, VideoIndex, build_index, rank, update_vectors
from vcap_toolkit.jobs.vector_index import split_ids


def query_time(n: int = 100_000, dim: int = 512, queries: int = 20) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        index = VideoIndex(tmp)
        index.init({"model": "generated", "model_fingerprint": "0", "dim": dim, "dtype": "float16"})
        g = np.random.default_rng(0)
        for start in range(0, n, 10_000):
            emb = g.standard_normal((10_000, dim)).astype(np.float32)
            index.append([f"video{start + i}" for i in range(10_000)], emb / np.linalg.norm(emb, axis=1, keepdims=True))
        t0 = time.perf_counter()
        paths, emb = index.paths(), index.embeddings()
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for q in range(queries):
            best = rank(emb, np.asarray(emb[q * 997], dtype=np.float32), 10)
            assert best[0][0] == q * 997
        per_query = (time.perf_counter() - t0) / queries
        t0 = time.perf_counter()
        record = update_vectors(index)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        vectors = IndexSearcher(tmp).vectors
        opened = time.perf_counter() - t0
        t0 = time.perf_counter()
        for q in range(queries):
            scores, ids = vectors.search(np.asarray(emb[q * 997:q * 997 + 1], dtype=np.float32), 10)
            assert split_ids(ids[0, :1])[1][0] == q * 997 % 10_000
        faiss_query = (time.perf_counter() - t0) / queries
    print(f"{n} videos x {dim} fp16 ({emb.nbytes / 2**20:.0f} MB): open {load * 1000:.0f} ms "
          f"(paths + shards read and checked), {per_query * 1000:.1f} ms per query (top 10), {len(paths)} paths")
    print(f"the same through the {record['kind']} FAISS index ({record['bytes'] / 2**20:.0f} MB, built in "
          f"{build:.1f} s): open {opened * 1000:.0f} ms (memory-mapped, every shard's header checked), "
          f"{faiss_query * 1000:.1f} ms per query (top 10)")


def demo_recall(model: Path, data: Path) -> None:
    from caption.config import load
    from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
    from retrieval_pretrain.modeling.model_folder import from_pretrained
    from retrieval_pretrain.stage1.evaluate import embed_texts, evaluate_retrieval

    rows = [json.loads(x) for x in (data / "annotations.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test"]
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        build_index(model, [data / r["video"] for r in rows], Path(tmp) / "idx", cpu, num_workers=2)
        index = VideoIndex(Path(tmp) / "idx")
        paths, emb = index.paths(), index.embeddings()
        net, spec = from_pretrained(model)
        texts = [(c, str((data / r["video"]).absolute())) for r in rows for c in r["captions"]]
        queries = embed_texts(net, tokenizer_from_spec(spec), [t for t, _ in texts], cpu).numpy()
        hits = sum(paths[rank(emb, q, 1)[0][0]] == video for q, (_, video) in zip(queries, texts))
        cfg = load(None, [f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}", "run.num_workers=2"])
        metrics = evaluate_retrieval(model, cfg, split="test", output=Path(tmp) / "eval")
    print(f"demo test split: {len(rows)} videos, {len(texts)} caption queries; R@1 through the index "
          f"{hits / len(texts):.4f}, eval-retrieval t2v R@1 {metrics['t2v_R@1']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a demo stage-1 model folder (for the recall check)")
    parser.add_argument("--data", type=Path, help="the demo's data folder")
    args = parser.parse_args()
    query_time()
    if args.model:
        demo_recall(args.model, args.data)


if __name__ == "__main__":
    main()
