"""Frames per second of CLIP ViT-B/32's image tower (the stage-1 / extraction cost per frame).

    python -m benchmarks.bench_clip_tower                       # batches 12 and 48, fp32, CPU
    python -m benchmarks.bench_clip_tower --batch-sizes 12 48 96 --device cuda

Randomly initialised weights (``pretrained=None``: speed does not depend on the values), eval mode,
``torch.no_grad``, fp32 unless ``--precision`` says otherwise. One warm-up batch, then ``--iters``
timed batches per size. One JSON line per batch size, then a summary JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import open_clip
import torch


def bench(model: torch.nn.Module, batch: int, iters: int, device: torch.device, dtype: torch.dtype) -> dict:
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.float32)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        model.encode_image(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model.encode_image(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    best, mean = min(times), sum(times) / len(times)
    return {"batch": batch, "iters": iters, "mean_s": round(mean, 4), "best_s": round(best, 4),
            "frames_per_s": round(batch / mean, 1), "frames_per_s_best": round(batch / best, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[12, 48])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    model = open_clip.create_model(args.model, pretrained=None).to(device).eval()
    rows = []
    for b in args.batch_sizes:
        row = bench(model, b, args.iters, device, dtype)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "model": args.model, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "precision": args.precision, "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "frames_per_s": {str(r["batch"]): r["frames_per_s"] for r in rows},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
