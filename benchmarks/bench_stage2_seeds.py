"""Stage 2 of a finished `vcap demo` run trained again, with other seeds or settings, on the same
stage-1 features: how much of the demo's caption numbers is stage 2's own noise.

    python -m benchmarks.bench_stage2_seeds --run vcap_demo --seeds 1 2 3 [KEY=VALUE ...]
    python -m benchmarks.bench_stage2_seeds --run vcap_demo --seeds 0 1 caption.epochs=7

``--run``: a demo folder (its ``data`` and ``features``). For each seed, stage 2 is trained with the
demo's config (plus the given overrides, ``run.seed`` set to the seed; the data stay the demo's)
into ``--out``/SEED, the test split captioned and scored as ``vcap demo`` does, and one JSON line
printed: CIDEr, the attribute accuracies (held-out pairs apart) and stage 2's seconds. Run it under
``OMP_WAIT_POLICY=ACTIVE`` for the demo's timing. BENCHMARKS.md ("Demo speed") lists what this measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished `vcap demo` folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", default="stage2_seeds", help="where each seed's stage 2 and captions go")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="changes to the demo's config")
    args = p.parse_args(argv)
    from caption.demo import data as demo_data
    from caption.demo.run import demo_config
    from caption.evaluate import evaluate
    from caption.train import train

    run, results = Path(args.run), []
    for seed in args.seeds:
        out = Path(args.out) / str(seed)
        cfg = demo_config(run / "data", overrides=[f"run.seed={seed}", *args.overrides])
        start = time.perf_counter()
        model = train(cfg, run / "features", out / "stage2")
        seconds = time.perf_counter() - start
        scores = evaluate(model, cfg, features=run / "features", split="test", output=out / "eval_caption")
        predictions = json.loads((out / "eval_caption" / "predictions.json").read_text())
        attributes = demo_data.attribute_accuracy(predictions, demo_data.load_attributes(run / "data"))
        results.append({"seed": seed, "overrides": args.overrides, "CIDEr": round(scores["CIDEr"], 3),
                        "attributes": attributes, "stage2_s": round(seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    from retrieval_pretrain.foundation.errors import VcapError

    try:
        main()
    except VcapError as e:  # e.g. --out holding an earlier run's stage 2: one line, as vcap says it
        raise SystemExit(f"bench_stage2_seeds: {e}") from None
