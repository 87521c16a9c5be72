"""Sampled-frame decoding (``read_frames``, 12 frames, uniform) against decoding every frame.

    python -m benchmarks.bench_decode                        # every clip decord opens, best of 5
    python -m benchmarks.bench_decode --repeat 3 --videos DIR --sizes native 224 112

For each clip in ``--videos`` (default ``../shared/data/videos``) that ``read_frames`` can read, and
each output size (``native``; ``224``/``112`` = shorter side resized in the decoder):

* ``sampled``: ``read_frames(path, 12, "uniform", short_side=...)``, the call the data loaders make:
  open, index, (for a resize: decode frame 0 to learn the size and reopen), seek, decode 12 frames.
* ``all``: what a loader that decodes the whole clip pays: a decord ``VideoReader`` at the same
  output size, ``next()`` until the end. Sequential ``next()`` is the fastest full decode decord
  offers here (``get_batch(range(n))`` was slower), so the ratio is a conservative one.
* ``native+PIL`` (resized sizes only): the alternative to resizing in the decoder, ``read_frames``
  at native size, then PIL bicubic resize of the 12 frames to the same size.

Both use one decoder thread (as in a DataLoader worker). Each time is the best of ``--repeat``
timed runs after one warm-up run (the minimum is the least disturbed by other processes on a
shared machine); ``all/sampled`` is how many times faster sampling is. Prints a Markdown table,
then one JSON object (every row) as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import decord
import numpy as np
from PIL import Image

from retrieval_pretrain.reading.video import VideoReadError, probe_video, read_frames

ROOT = Path(__file__).resolve().parents[1]

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".wav", ".mp3"}


def _best_ms(fn, repeat: int) -> float:
    fn()  # warm-up: page cache, decoder tables
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def _resized(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Same rule as ``read_frames``: shorter side ``short_side``, aspect kept."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def _decode_all(path: Path, height: int, width: int) -> int:
    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    count = 0
    while True:
        try:
            reader.next()
        except StopIteration:
            return count
        count += 1


def _native_then_pil(path: Path, num_frames: int, height: int, width: int) -> list[np.ndarray]:
    frames = read_frames(path, num_frames, "uniform").frames
    return [np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames]


def bench_clip(path: Path, sizes: list[str], num_frames: int, repeat: int) -> list[dict]:
    info = probe_video(path)
    rows = []
    for size in sizes:
        short = None if size == "native" else int(size)
        h, w = (info["height"], info["width"]) if short is None else _resized(info["height"], info["width"], short)
        sampled = _best_ms(lambda: read_frames(path, num_frames, "uniform", short_side=short), repeat)
        dh, dw = (-1, -1) if short is None else (h, w)  # native: no scale filter in decord
        full = _best_ms(lambda: _decode_all(path, dh, dw), repeat)
        post = None if short is None else _best_ms(lambda: _native_then_pil(path, num_frames, h, w), repeat)
        rows.append({"clip": str(path), "frames": info["num_frames"], "source": f"{info['height']}x{info['width']}",
                     "size": size, "out": f"{h}x{w}", "sampled_ms": round(sampled, 1),
                     "all_ms": round(full, 1), "ratio": round(full / sampled, 2),
                     "native_pil_ms": None if post is None else round(post, 1)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "data" / "videos")
    p.add_argument("--sizes", nargs="+", default=["native", "224", "112"])
    p.add_argument("--num-frames", type=int, default=12)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best reported)")
    args = p.parse_args(argv)
    files = sorted(f for f in args.videos.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
    rows, skipped = [], []
    for path in files:
        try:
            read_frames(path, args.num_frames)  # clips decord cannot read are listed, not timed
        except VideoReadError as e:
            skipped.append({"clip": str(path), "reason": e.reason})
            continue
        rows.extend(bench_clip(path, args.sizes, args.num_frames, args.repeat))
    base = args.videos
    print(f"decord {decord.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, 1 decoder thread, "
          f"best of {args.repeat} runs, {args.num_frames} frames uniform\n")
    print("| clip | frames | source HxW | size | out HxW | sampled ms | all ms | all/sampled | native+PIL ms |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        post = "" if r["native_pil_ms"] is None else r["native_pil_ms"]
        print(f"| {Path(r['clip']).relative_to(base)} | {r['frames']} | {r['source']} | {r['size']} | {r['out']} "
              f"| {r['sampled_ms']} | {r['all_ms']} | {r['ratio']}x | {post} |")
    totals = {}
    for size in args.sizes:
        chosen = [r for r in rows if r["size"] == size]
        s = sum(r["sampled_ms"] for r in chosen)
        a = sum(r["all_ms"] for r in chosen)
        post = sum(r["native_pil_ms"] for r in chosen) if chosen and chosen[0]["native_pil_ms"] is not None else None
        totals[size] = {"sampled_ms": round(s, 1), "all_ms": round(a, 1), "ratio": round(a / s, 2) if s else None,
                        "native_pil_ms": None if post is None else round(post, 1)}
        if s:
            print(f"| **all clips** | | | {size} | | {s:.1f} | {a:.1f} | {a / s:.2f}x | "
                  f"{'' if post is None else f'{post:.1f}'} |")
    if skipped:
        print("\nnot timed (read_frames raises VideoReadError):")
        for item in skipped:
            print(f"- {Path(item['clip']).relative_to(base)}: {item['reason']}")
    summary = {"repeat": args.repeat, "num_frames": args.num_frames, "rows": rows, "totals": totals,
               "skipped": skipped}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
