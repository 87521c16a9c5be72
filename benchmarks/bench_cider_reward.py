"""SCST reward: ``caption.cider_reward.CiderD`` against pycocoevalcap's ``Cider`` on one SCST batch.

    python -m benchmarks.bench_cider_reward                      # MSR-VTT test split, 64 x 5 samples
    python -m benchmarks.bench_cider_reward --videos 64 --samples 5 --repeat 20

References: the 2,990 MSR-VTT test videos x 20 captions of ``../shared/data`` (the only full split
there), tokenised by ``words``. ``build`` is ``CiderD(references)``: document frequencies,
``log(V)``, every reference's tf-idf norms and lengths, once (tokenisation timed apart).

A batch is ``--samples`` captions for each of ``--videos`` random videos (SCST draws k samples per
video): per video, two of its own captions with one word dropped and the rest captions of other
videos, so both near-misses and misses are scored. Timed on the same batch:

* ``CiderD.score``: the reward call SCST makes (document frequencies of the whole split);
* ``words``: tokenising the batch's caption strings, which the reward also pays;
* pycocoevalcap ``Cider().compute_score``: the same batch as ``gts``/``res`` (one item per sample,
  its video's 20 references), which cooks every reference and recomputes document frequencies on
  every call (from the batch, so its values differ: the ratio of times is the point).

Each time is the best of ``--repeat`` runs after one warm-up (the least disturbed on a shared CPU);
the median is printed beside it. The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from pycocoevalcap.cider.cider import Cider

from caption.cider_reward import CiderD, words

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations" / "msrvtt" / \
    "msrvtt_val_test_videodatainfo.json"


def load_test_captions(path: Path) -> dict[str, list[str]]:
    """``{video_id: [caption, ...]}`` of the MSR-VTT test split (official layout)."""
    info = json.loads(path.read_text())
    test = {v["video_id"]: [] for v in info["videos"] if v["split"] == "test"}
    for s in info["sentences"]:
        if s["video_id"] in test:
            test[s["video_id"]].append(s["caption"])
    return test


def make_batch(captions: dict[str, list[str]], videos: int, samples: int, seed: int) -> tuple[list[str], list[str]]:
    """``(video_ids, caption strings)``: ``samples`` per video for ``videos`` random videos."""
    rng = np.random.default_rng(seed)
    ids = list(captions)
    vids, texts = [], []
    for vid in rng.choice(ids, size=videos, replace=False):
        for k in range(samples):
            if k < 2:  # a near-miss: one of its own captions, one word dropped
                toks = captions[vid][rng.integers(len(captions[vid]))].split()
                toks.pop(rng.integers(len(toks)))
                text = " ".join(toks)
            else:  # a miss: a caption of another video
                other = ids[rng.integers(len(ids))]
                text = captions[other][rng.integers(len(captions[other]))]
            vids.append(str(vid))
            texts.append(text)
    return vids, texts


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) seconds of ``repeat`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotations", type=Path, default=ANNOTATIONS)
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--coco-repeat", type=int, default=3, help="timed runs of pycocoevalcap (slow)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    captions = load_test_captions(args.annotations)
    t0 = time.perf_counter()
    refs = {vid: [words(c) for c in caps] for vid, caps in captions.items()}
    tokenise_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer = CiderD(refs)
    build_s = time.perf_counter() - t0
    num_refs = sum(map(len, refs.values()))

    vids, texts = make_batch(captions, args.videos, args.samples, args.seed)
    cands = [words(t) for t in texts]
    ours_best, ours_median = timed(lambda: scorer.score(vids, cands), args.repeat)
    words_best, words_median = timed(lambda: [words(t) for t in texts], args.repeat)

    gts = {f"{v}#{i}": [" ".join(r) for r in refs[v]] for i, v in enumerate(vids)}
    res = {f"{v}#{i}": [" ".join(c)] for i, (v, c) in enumerate(zip(vids, cands))}
    coco_best, coco_median = timed(lambda: Cider().compute_score(gts, res), args.coco_repeat)

    rewards = scorer.score(vids, cands)
    batch = len(vids)
    print(f"references: {len(refs)} videos, {num_refs} captions; tokenise {tokenise_s:.2f} s, "
          f"build CiderD {build_s:.2f} s")
    print(f"batch: {args.videos} videos x {args.samples} samples = {batch} candidates "
          f"(mean reward {rewards.mean():.3f})")
    print(f"CiderD.score          {ours_best * 1e3:8.2f} ms per batch (median {ours_median * 1e3:.2f})")
    print(f"words() on the batch  {words_best * 1e3:8.2f} ms per batch (median {words_median * 1e3:.2f})")
    print(f"pycocoevalcap Cider   {coco_best * 1e3:8.2f} ms per batch (median {coco_median * 1e3:.2f})")
    print(f"pycocoevalcap / CiderD: {coco_best / ours_best:.0f}x")
    result = {"videos": len(refs), "references": num_refs, "tokenise_s": round(tokenise_s, 3),
              "build_s": round(build_s, 3), "batch": batch, "cider_d_ms": round(ours_best * 1e3, 3),
              "cider_d_median_ms": round(ours_median * 1e3, 3), "words_ms": round(words_best * 1e3, 3),
              "pycocoevalcap_ms": round(coco_best * 1e3, 2), "pycocoevalcap_median_ms": round(coco_median * 1e3, 2),
              "speedup": round(coco_best / ours_best, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
