"""SCST against its control: from the same cross-entropy model, 3 epochs of SCST (CIDEr-D reward)
against 3 more epochs of cross-entropy with the same learning rate, batch, schedule and selection;
three seeds; test split. Issue 29: BENCHMARKS' earlier SCST rows compared SCST with the model it
started from, on one seed, while more cross-entropy epochs also raise CIDEr.

    python -m benchmarks.scst_control --output scst_control [--seeds 0 1 2]

For each seed: ``vcap demo --quick``'s pipeline (``run_demo``: data, stage 1, features, 8 epochs of
cross-entropy) with that seed, then both continuations from its caption model on its cached
features. Prints one JSON line per run, a table per seed, and the mean and sample standard
deviation over seeds of each continuation's test CIDEr and of the difference SCST - control (the
gain holds when the mean difference is above zero by more than its spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.scst_demo import SCST, _test_scores
from caption.demo.run import demo_config, run_demo

# Everything SCST's run sets except the objective and its sampling: the control differs in the loss only.
SHARED = ["caption.epochs=3", "caption.lr=3e-4", "caption.warmup_ratio=0", "caption.batch_size=16",
          "caption.select_by=last", "run.log_every=1", "decode.num_beams=5"]
CONTINUATIONS = {"start (8 epochs of cross-entropy)": None, "+3 epochs cross-entropy (control)": SHARED,
                 "+3 epochs SCST, CIDEr-D reward": SCST}
KEYS = ("CIDEr", "BLEU-4", "colour", "shape", "motion")


def run_seed(root: Path, seed: int) -> dict[str, dict[str, Any]]:
    """The three rows of one seed (each with its test scores and seconds)."""
    from caption.train import train

    t = time.perf_counter()
    run_demo(root, quick=True, seed=seed)
    rows: dict[str, dict[str, Any]] = {}
    data_dir = root / "data_quick"
    base = demo_config(data_dir, quick=True, seed=seed)
    for i, (name, overrides) in enumerate(CONTINUATIONS.items()):
        model = root / "stage2" / "model"
        if overrides is not None:
            t = time.perf_counter()
            model = train(demo_config(data_dir, quick=True, seed=seed, overrides=overrides), root / "features",
                          root / f"cont{i}", init_from=root / "stage2" / "model")
        seconds = time.perf_counter() - t
        rows[name] = {**_test_scores(model, base, root / "features", root / f"eval{i}", data_dir), "seconds": seconds}
        print(json.dumps({"seed": seed, "row": name, **rows[name]}), flush=True)
    return rows


def summary(per_seed: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines: the per-seed table and mean / sd over seeds, with SCST - control."""
    names = list(CONTINUATIONS)
    lines = ["| seed | " + " | ".join(f"{n}: CIDEr / motion" for n in names) + " | SCST - control, CIDEr |",
             "|---|" + "---|" * (len(names) + 1)]
    diffs = []
    for seed, rows in per_seed.items():
        diffs.append(rows[names[2]]["CIDEr"] - rows[names[1]]["CIDEr"])
        lines.append(f"| {seed} | " + " | ".join(f"{rows[n]['CIDEr']:.3f} / {rows[n]['motion']:.3f}" for n in names)
                     + f" | {diffs[-1]:+.3f} |")
    sd = statistics.stdev if len(per_seed) > 1 else (lambda _: float("nan"))
    lines += ["", "| continuation | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for n in names:
        cells = [[rows[n][k] for rows in per_seed.values()] for k in KEYS]
        lines.append(f"| {n} | " + " | ".join(f"{statistics.mean(c):.3f} ± {sd(c):.3f}" for c in cells) + " |")
    lines.append(f"\nSCST - control, test CIDEr: mean {statistics.mean(diffs):+.3f}, sd {sd(diffs):.3f}, "
                 f"per seed {', '.join(f'{d:+.3f}' for d in diffs)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("scst_control"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    per_seed = {seed: run_seed(args.output / f"seed{seed}", seed) for seed in args.seeds}
    (args.output / "scst_control.json").write_text(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2))
    print("\n".join(summary(per_seed)))


if __name__ == "__main__":
    main()
