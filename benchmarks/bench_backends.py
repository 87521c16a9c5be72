"""Decoder backends side by side: frames per second of decord, torchcodec and PyAV (issue 28).

    python -m benchmarks.bench_backends                      # everything below, about 25 minutes on 2 cores
    python -m benchmarks.bench_backends --skip-long          # the real clips only
    python -m benchmarks.bench_backends --long-seconds 60 --repeat 1

Measured, for every installed backend (``video.backend``) and PyAV twice - seeking to the key frame
before each wanted frame (what the backend does, ``pyav_backend.SEEK_GAP``) and one sequential pass
keeping only the wanted frames (``SEEK_GAP`` = infinity) -, at native size and at 224 short side
(resized in the decoder):

* real clips: ``read_frames(path, 12, "uniform")`` on every clip of ``--videos`` that every backend
  reads (the AV1 clip, which decord cannot open, is timed apart), the call every data loader makes:
  open, index, decode 12 frames. Frames per second = 12 x clips / the summed best-of-``--repeat`` time.
* a long clip: ``--long-seconds`` of 1280x720 H.264 at 30 fps (x264's defaults: a key frame every
  250 frames at most), made once from the real clips (scaled, looped) and kept in ``--cache``:
  ``sampled`` (12 frames uniform over the whole clip), ``windows`` (12 frames in each 10 s time
  range, one reader reused, as dense captioning reads) and ``dense`` (every frame, in chunks of 32).
* decoder threads: the long clip's ``sampled`` and ``dense`` at 224 with 1, 2 and 4 threads.

Prints Markdown tables, then one JSON object (every number) as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from retrieval_pretrain.reading.clips import Clip
from retrieval_pretrain.reading.decoding import pyav_backend
from retrieval_pretrain.reading.decoding.base import BACKENDS, resized
from retrieval_pretrain.reading.decoding.choice import open_decoder, unavailable
from retrieval_pretrain.reading.video import VideoReadError, read_frames

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm"}
SIZES = ("native", "224")


def variants() -> list[tuple[str, str, int]]:
    """``(label, backend, SEEK_GAP)`` of every installed backend; PyAV also as one sequential pass."""
    rows = []
    for backend in BACKENDS:
        if unavailable(backend):
            continue
        rows.append((backend, backend, pyav_backend.SEEK_GAP))
        if backend == "pyav":
            rows.append(("pyav, one pass", backend, 1 << 40))
    return rows


@contextlib.contextmanager
def seek_gap(value: int) -> Iterator[None]:
    before, pyav_backend.SEEK_GAP = pyav_backend.SEEK_GAP, value
    try:
        yield
    finally:
        pyav_backend.SEEK_GAP = before


def best_seconds(fn: Callable[[], Any], repeat: int) -> float:
    """The least of ``repeat`` timed runs after one warm-up (the least disturbed on a shared machine)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def short_of(size: str) -> int | None:
    return None if size == "native" else int(size)


def decode_all(path: Path, backend: str, short: int | None, threads: int, chunk: int = 32) -> int:
    """Every frame of ``path`` through the backend interface, ``chunk`` at a time; the frame count."""
    decoder = open_decoder(str(path), backend, threads)
    size = None if short is None else resized(*decoder.native_size(), short)
    n = decoder.timing.n
    for start in range(0, n, chunk):
        decoder.frames(np.arange(start, min(n, start + chunk)), size)
    decoder.close()
    return n


def read_windows(path: Path, backend: str, short: int | None, threads: int, seconds: float = 10.0) -> int:
    """12 frames of each ``seconds`` time range of ``path`` (the thread's reader is reused from one
    range to the next); the real frames returned."""
    total, start, frames = open_decoder(str(path), "pyav", 1).timing.end, 0.0, 0
    while start < total - 1e-6:
        got = read_frames(Clip(path, start, min(total, start + seconds)), 12, "uniform", short_side=short,
                          num_threads=threads, backend=backend)
        frames += int(got.mask.sum())
        start += seconds
    return frames


def make_long_clip(path: Path, seconds: int, sources: list[Path]) -> Path:
    """``seconds`` of 1280x720 H.264 at 30 fps made from the frames of ``sources`` (scaled, looped);
    written once (to a temporary name, then renamed)."""
    import av  # deferred: only when the long clip must be made

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.mp4")
    wanted = seconds * 30
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        made = 0
        while made < wanted:
            for src in sources:
                with av.open(str(src)) as inp:
                    for frame in inp.decode(video=0):
                        scaled = frame.reformat(width=1280, height=720, format="yuv420p")
                        scaled.pts, scaled.time_base = made, Fraction(1, 30)
                        out.mux(stream.encode(scaled))
                        made += 1
                        if made >= wanted:
                            break
                if made >= wanted:
                    break
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def real_clips(videos: Path) -> tuple[list[Path], list[Path]]:
    """The clips every backend reads, and those only some do (each read once with each backend)."""
    every, some = [], []
    for path in sorted(f for f in videos.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES):
        ok = []
        for _, backend, _ in variants():
            try:
                read_frames(path, 12, backend=backend)
                ok.append(backend)
            except VideoReadError:
                pass
        if ok:
            (every if len(set(ok)) == len({b for _, b, _ in variants()}) else some).append(path)
    return every, some


def clip_rows(clips: list[Path], repeat: int, label: str) -> list[dict]:
    """Frames per second of 12 sampled frames over ``clips``, per backend and size (summed times).
    Backends take turns clip by clip, so a load that comes and goes on a shared machine hits all."""
    total: dict[tuple[str, str], float] = {}
    done: dict[tuple[str, str], int] = {}
    for path in clips:
        for name, backend, gap in variants():
            for size in SIZES:
                with seek_gap(gap):
                    try:
                        seconds = best_seconds(lambda: read_frames(path, 12, "uniform", short_side=short_of(size),
                                                                   backend=backend), repeat)
                    except VideoReadError:
                        continue
                total[name, size] = total.get((name, size), 0.0) + seconds
                done[name, size] = done.get((name, size), 0) + 12
    return [{"set": label, "backend": name, "size": size, "clips": done[name, size] // 12,
             "seconds": round(total[name, size], 4), "fps": round(done[name, size] / total[name, size], 1)}
            for name, size in total]


def _long_one(path: Path, backend: str, short: int | None, mode: str, threads: int, repeat: int) -> tuple[float, int]:
    """``(seconds, frames)`` of one mode on the long clip (dense and windows timed once: seconds each)."""
    if mode == "sampled":
        return best_seconds(lambda: read_frames(path, 12, "uniform", short_side=short, num_threads=threads,
                                                backend=backend), repeat), 12
    fn = read_windows if mode == "windows" else decode_all
    t0 = time.perf_counter()
    frames = fn(path, backend, short, threads)
    return time.perf_counter() - t0, frames


def long_rows(path: Path, repeat: int, threads: int = 1, sizes: tuple[str, ...] = SIZES,
              modes: tuple[str, ...] = ("sampled", "windows", "dense")) -> list[dict]:
    """Frames per second on the long clip: ``sampled`` (12 of the whole clip), ``windows`` (12 per
    10 s range), ``dense`` (every frame); backends take turns within each mode and size."""
    rows = []
    for mode in modes:
        for size in sizes:
            for name, backend, gap in variants():
                with seek_gap(gap):
                    seconds, frames = _long_one(path, backend, short_of(size), mode, threads, repeat)
                rows.append({"backend": name, "size": size, "mode": mode, "threads": threads, "frames": frames,
                             "seconds": round(seconds, 3), "fps": round(frames / seconds, 1)})
    return rows


def table(rows: list[dict], keys: list[str]) -> None:
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "data" / "videos")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per short measurement (the least reported)")
    p.add_argument("--long-seconds", type=int, default=180, help="length of the 720p clip (default 3 minutes)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vcap_bench_backends")
    p.add_argument("--skip-long", action="store_true", help="the real clips only")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="decoder threads to compare")
    args = p.parse_args(argv)
    versions = {b: ("installed" if not unavailable(b) else unavailable(b)) for b in BACKENDS}
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; backends: {versions}\n")
    every, some = real_clips(args.videos)
    rows = clip_rows(every, args.repeat, "read by all") + clip_rows(some, args.repeat, "read by some")
    print(f"Real clips, 12 frames uniform, 1 thread ({len(every)} clips every backend reads; apart: "
          f"{', '.join(c.name for c in some)})\n")
    table(rows, ["set", "backend", "size", "clips", "seconds", "fps"])
    summary: dict[str, Any] = {"real": rows, "every": [str(c) for c in every], "some": [str(c) for c in some]}
    if not args.skip_long:
        sources = [args.videos / "mmaction2/test.mp4", args.videos / "swinbert/G0mjFqytJt4_000152_000162.mp4",
                   args.videos / "mmaction2/demo.mp4"]
        long = make_long_clip(args.cache / f"long_720p_{args.long_seconds}s.mp4", args.long_seconds, sources)
        print(f"Long clip: {long} (1280x720, {args.long_seconds} s, 30 fps), 1 thread\n")
        summary["long"] = long_rows(long, args.repeat)
        table(summary["long"], ["backend", "size", "mode", "frames", "seconds", "fps"])
        summary["threads"] = [r for t in args.threads
                              for r in long_rows(long, 1, t, sizes=("224",), modes=("sampled", "dense"))]
        print("Decoder threads, long clip at 224\n")
        table(summary["threads"], ["backend", "mode", "threads", "frames", "seconds", "fps"])
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
