"""Long videos: wall time per hour of video (real-time factor) and peak memory, decoding alone and
``vcap caption --segments``, on videos of demo scenes whose every window's content is known
(``benchmarks.long_video``).

    python -m benchmarks.bench_long_video --out /tmp/lv [--minutes 10 60] [--heights 480 720]
        [--model CAPTION_MODEL ...] [--window 10]

For each video (minutes x height):

* ``decode 1fps``: ``read_frames`` of every ``window``-second range at one frame per second (``fps``
  sampling) resized in the decoder to a 224 short side - what a captioner at 1 frame per second
  reads - in a fresh process; real-time factor = video seconds / wall seconds; peak RSS of that process.
* ``decode 12``: the same with 12 uniform frames a window (the stage-1 default).
* ``decode all``: every frame in order (decord's sequential reader), the control for the sampled reads
  (10-minute videos only: the 60-minute one would take a quarter of an hour here).
* for each ``--model``: ``vcap caption VIDEO --model M --segments WINDOW --json`` as a subprocess:
  real-time factor, peak RSS, and window accuracy - the share of windows whose caption names the
  window's colour, shape and motion (each attribute scored, and all three), and the share of scene
  boundaries that fall within one window of a caption boundary.

Peak memory of a 10- vs a 60-minute video is the flatness check: frames are decoded per window.
Prints a table and writes ``OUT/bench_long_video.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.long_video import Scene, build_long_video
from caption.demo.captions import caption_attributes

_DECODE = """
import sys, time
from retrieval_pretrain.reading.clips import Clip
from retrieval_pretrain.reading.video import probe_video, read_frames
path, window, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
duration = probe_video(path)["duration"]
t0 = time.perf_counter()
frames = 0
if mode == "all":
    import decord
    reader = decord.VideoReader(path, num_threads=0)
    for i in range(len(reader)):
        reader.next()
        frames += 1
else:
    s = 0.0
    while s < duration - 1e-6:
        e = min(s + window, duration)
        got = read_frames(Clip(path, s, e), int(window) if mode == "1fps" else 12,
                          "fps" if mode == "1fps" else "uniform", short_side=224)
        frames += int(got.mask.sum())
        s = e
print(duration, time.perf_counter() - t0, frames)
"""

# What each motion's caption says (caption/demo/captions.py words for the seven motions).
_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr[-3000:]); "
         "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(u.ru_utime + u.ru_stime); print(u.ru_maxrss); "
         "sys.exit(p.returncode)")


def peak_run(cmd: list[str]) -> tuple[float, float, str, float]:
    """Run ``cmd`` in a fresh process: ``(wall seconds, peak RSS MB of its largest process, stdout,
    CPU seconds of it and its children)`` - CPU time is the figure other work on the machine does not inflate."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {proc.stderr[-2000:]}")
    *out, cpu, peak = proc.stdout.rstrip("\n").split("\n")
    return wall, int(peak) / 1024, "\n".join(out), float(cpu)


def run_decode(path: Path, window: float, mode: str) -> dict[str, Any]:
    """One decode measurement in a fresh process (``mode``: 1fps, 12 or all)."""
    wall, peak, out, cpu = peak_run([sys.executable, "-c", _DECODE, str(path), str(window), mode])
    duration, seconds, frames = out.split()[-3:]
    return {"mode": mode, "video_s": float(duration), "decode_s": round(float(seconds), 2), "process_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "frames": int(frames), "rtf": round(float(duration) / float(seconds), 1),
            "peak_rss_mb": round(peak, 1)}


def _names(caption: str, scene: Scene) -> dict[str, bool]:
    """Whether ``caption`` names the scene's colour, shape and motion, read as the demo's metrics read
    captions (``caption_attributes``: its synonyms - "plus sign" is a cross, "climbs upward" up)."""
    named = caption_attributes(caption)
    return {k: named[k] == getattr(scene, k) for k in ("colour", "shape", "motion")}


def window_accuracy(segments: list[dict[str, Any]], scenes: list[Scene], window: float) -> dict[str, float]:
    """Each window's caption (the segment covering its middle) against its scene; and how many scene
    changes have a caption boundary within one window."""
    scores = {"colour": 0, "shape": 0, "motion": 0, "all": 0}
    for k, scene in enumerate(scenes):
        mid = (k + 0.5) * window
        cap = next((s["caption"] for s in segments if s["start"] <= mid < s["end"]), "")
        hit = _names(cap, scene)
        for key in ("colour", "shape", "motion"):
            scores[key] += hit[key]
        scores["all"] += all(hit.values())
    changes = [k * window for k in range(1, len(scenes)) if scenes[k] != scenes[k - 1]]
    bounds = [s["start"] for s in segments[1:]]
    near = sum(any(abs(b - c) <= window for b in bounds) for c in changes)
    out = {k: round(v / len(scenes), 4) for k, v in scores.items()}
    out["boundaries_within_one_window"] = round(near / max(1, len(changes)), 4)
    return out


def run_caption(vcap: str, model: str, path: Path, scenes: list[Scene], window: float, out: Path) -> dict[str, Any]:
    """``vcap caption --segments`` in a subprocess: real-time factor, peak RSS and window accuracy."""
    result = out / f"{path.stem}.{Path(model).parent.name}_{Path(model).name}.json"
    wall, peak, stdout, cpu = peak_run([vcap, "caption", str(path), "--model", model, "--segments", f"{window:g}",
                                   "--json", "--device", "cpu"])
    listing = json.loads(stdout.strip().splitlines()[-1])  # {"captions": {video: [{start, end, caption}]}, ...}
    result.write_text(json.dumps(listing))
    segments = next(iter(listing["captions"].values()))
    duration = len(scenes) * window
    return {"model": model, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "rtf": round(duration / wall, 1),
            "peak_rss_mb": round(peak, 1), "windows": len(scenes),
            "segments": len(segments), "accuracy": window_accuracy(segments, scenes, window)}


# CLIP ViT-B/32's architecture (open_clip, random weights: hubs are unreachable here), 10 frames a window
# (1 frame per second on 10-second windows), the demo's stage-2 model over its features.
VIT_B32 = ["clip.model=ViT-B-32", "clip.pretrained=null", "clip.custom=null", "pretrain.head_layers=4",
           "pretrain.max_words=32", "video.num_frames=10", "video.cache_frames=0", "pretrain.epochs=1",
           "pretrain.batch_size=4", "pretrain.freeze=[]", "caption.epochs=1", "caption.batch_size=8"]


def make_vitb32_model(folder: Path, vcap: str = "vcap") -> Path:
    """A caption model folder whose video tower is ViT-B/32-sized (random weights, one short epoch of
    each stage on 8 demo clips): what its captions say is noise, its speed is a ViT-B/32 tower's.
    Cached: returns ``folder/s2/model`` when it exists."""
    from caption.demo import CONFIG_PATH
    from caption.demo import data as demo_data

    model = folder / "s2" / "model"
    if model.is_dir():
        return model
    demo_data.generate_dataset(folder / "data", demo_data.DemoSpec(num_train=8, num_val=2, num_test=2, frames=16,
                                                                    size=64, captions_per_video=1), progress=False)
    args = ["--config", str(CONFIG_PATH), f"data.annotations={folder / 'data' / 'annotations.jsonl'}",
            f"data.videos={folder / 'data'}", *VIT_B32]
    for cmd in (["pretrain", "--output", str(folder / "s1")],
                ["extract", "--model", str(folder / "s1" / "model"), "--output", str(folder / "feats")],
                ["train", "--features", str(folder / "feats"), "--output", str(folder / "s2")]):
        subprocess.run([vcap, *cmd, *args], check=True, capture_output=True, text=True)
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the videos (cached) and the results")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--heights", type=int, nargs="+", default=[480, 720])
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--model", action="append", default=[], help="a caption model folder to time (repeatable)")
    ap.add_argument("--vitb32", action="store_true", help="also time a ViT-B/32-sized tower (built once in OUT/vitb32)")
    ap.add_argument("--vcap", default="vcap")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.vitb32:
        args.model.append(str(make_vitb32_model(args.out / "vitb32", args.vcap)))
    rows = []
    for height in args.heights:
        for minutes in args.minutes:
            path = args.out / f"long_{minutes:g}min_{height}p.mp4"
            t0 = time.perf_counter()
            scenes = build_long_video(path, minutes, height, window=args.window)
            row: dict[str, Any] = {"video": path.name, "minutes": minutes, "height": height,
                                   "build_s": round(time.perf_counter() - t0, 1), "decode": []}
            for mode in ["1fps", "12"] + (["all"] if minutes <= 10 else []):
                row["decode"].append(run_decode(path, args.window, mode))
            row["caption"] = [run_caption(args.vcap, m, path, scenes, args.window, args.out) for m in args.model]
            row["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine meanwhile
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "bench_long_video.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
