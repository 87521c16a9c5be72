"""Training throughput of both stages, split into waiting for data and computing, in one run.

    python -m benchmarks.bench_training [--epochs 2] [--workers 2]

On the demo's generated data (the ``--quick`` set, cached in ``--data``) with the demo's tiny
configuration (caption/demo/tiny_demo.yaml), it runs the real training functions - ``vcap pretrain``'s
and ``vcap train``'s - for ``--epochs`` epochs each (on the quick demo data) and reads their JSONL logs, whose
``data_s`` / ``compute_s`` fields come from the loops' own ``StepTimer``:

1. stage 1: decoding in DataLoader workers (TSN sampling) overlapped with the video-text model;
2. stage 2: memory-mapped fp16 features, the caption model's teacher-forced steps.

The first logged step (workers starting, first batch) is left out of the rates. Prints one
summary JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from caption.config import load  # noqa: E402
from caption.demo import CONFIG_PATH  # noqa: E402
from caption.demo import data as demo_data  # noqa: E402


def split_times(log: Path, skip_first: bool = True) -> dict[str, float]:
    """Sum of data-wait and compute seconds over the logged steps (each record covers the steps
    since the previous one)."""
    records = [r for r in map(json.loads, log.read_text().splitlines()) if "data_s" in r]
    if skip_first:
        records = [r for r in records if r["step"] > 1]
    steps = records[-1]["step"] - 1 if skip_first else records[-1]["step"]
    data = sum(r["data_s"] for r in records)
    compute = sum(r["compute_s"] for r in records)
    return {"steps": steps, "data_s": round(data, 3), "compute_s": round(compute, 3),
            "step_s": round((data + compute) / steps, 4), "steps_per_s": round(steps / (data + compute), 2),
            "data_share": round(data / (data + compute), 3)}


def quick_demo_arguments(doc: str, epochs_help: str) -> argparse.ArgumentParser:
    """``--epochs``, ``--workers`` and ``--data`` (the quick demo set, generated once and cached)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help=epochs_help)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (run.num_workers)")
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "vcap_bench_data"),
                    help="folder for the generated videos (cached between runs)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = quick_demo_arguments(__doc__, "epochs per stage (quick demo data)").parse_args(argv)

    from caption.train import train as train_captioner
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train as pretrain

    data = Path(args.data)
    demo_data.generate_dataset(data, demo_data.quick_spec())
    overrides = [f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}",
                 f"run.num_workers={args.workers}", "run.log_every=1", "pretrain.save_every=0",
                 "caption.save_every=0", "caption.val_max_videos=0"]
    overrides += [f"pretrain.epochs={args.epochs}", f"caption.epochs={args.epochs}"]
    cfg = load(CONFIG_PATH, overrides)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.workers} workers, {args.epochs} epoch(s) per stage", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        model = pretrain(cfg, run / "s1")
        s1 = split_times(run / "s1" / "log.jsonl")
        s1["videos_per_s"] = round(cfg.pretrain.batch_size * s1["steps_per_s"], 1)
        t = time.perf_counter()
        extract_features(model, cfg, run / "feats", batch_size=16)
        setup_s = time.perf_counter() - t
        train_captioner(cfg, run / "feats", run / "s2")
        s2 = split_times(run / "s2" / "log.jsonl")
        s2["pairs_per_s"] = round(cfg.caption.batch_size * s2["steps_per_s"], 1)
    summary = {"stage1": s1, "stage2": s2, "setup_s": round(setup_s, 1), "workers": args.workers,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "config": "caption/demo/tiny_demo.yaml"}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
