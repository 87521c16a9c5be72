"""The demo's built-in data: a procedural video-caption dataset of simple scenes.

Each clip shows one object - a colour (``COLOURS``), a shape (``SHAPES``) and a motion
(``MOTIONS``) - on a muted, softly shaded background, written as a real H.264 mp4 (PyAV, libx264,
yuv420p) and described by several paraphrased captions. ``vcap demo`` trains a tiny CLIP on it by
contrastive retrieval and then a captioner, and scores the generated captions by whether they name
the right colour, shape and motion (``caption_attributes``, ``attribute_accuracy``).

The visual signal is made clean and learnable at 64 px (rendering: ``caption.demo.render``): big
objects (a third to a half of the frame side), saturated, well separated hues on low-saturation
backgrounds, five shapes that stay distinct when small, and large motions. Direction is visible
only from frame order (a ``left`` clip is a ``right`` clip played backwards), so a single frame
cannot tell them apart.

Splits: ``test`` holds at most one video per (colour, shape, motion) combination, so text-to-video
R@1 is meaningful; the colour-shape pairs of ``HELD_OUT_PAIRS`` never occur in ``train`` or ``val``
but do in ``test`` (composition of seen attributes); every colour, shape and motion is plentiful in
``train``.

Files written in ``folder``: ``videos/<colour>_<shape>_<motion>_<index>.mp4``, ``annotations.jsonl``
(the toolkit's ``jsonl`` format plus an ``"attributes"`` key), ``attributes.json`` (video id ->
attributes; the video id is the ``video`` path without its extension) and, last and atomically,
``manifest.json`` holding the spec's hash. ``generate_dataset`` returns at once when the manifest
matches the spec; a folder without one (interrupted) is regenerated.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from caption.demo.captions import (  # noqa: F401  (re-exported: the demo's public vocabulary)
    ATTRIBUTE_KEYS,
    COLOURS,
    HELD_OUT_PAIRS,
    MAX_CAPTION_WORDS,
    MOTIONS,
    SHAPES,
    attribute_accuracy,
    caption_attributes,
    is_held_out,
    make_captions,
)
from caption.demo.render import (  # noqa: F401  (re-exported: the demo's rendering)
    BACKGROUNDS,
    BACKGROUNDS_NAMES,
    Trajectory,
    object_colour,
    render_background,
    render_frames,
    rgb_to_yuv420p,
    sample_trajectory,
    write_mp4,
)
from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import ConfigError

# Bump when the rendering or caption generation changes, so cached folders are regenerated.
GENERATOR_VERSION = 3


@dataclass
class DemoSpec:
    """What ``generate_dataset`` makes. The defaults (1,218 clips of 16 frames, 64 px, 8 fps; 11 MB)
    fit the demo's budget on a 2-core CPU: generation takes about 8 s on 2 processes, and training
    sees 6 clips of every seen (colour, shape, motion) combination per epoch (fewer clips are
    memorised instead of generalised from: BENCHMARKS.md). Clips are rendered at the demo model's
    input size, so the loader decodes without resizing: 3.3 ms per training sample instead of 6.2 ms
    for 96 px clips, which leaves more of the 2 cores to stage 1."""

    num_train: int = 1092  # 6 per seen (colour, shape, motion) combination: 182 combos x 6
    num_val: int = 42
    num_test: int = 84  # all 28 held-out combos + 56 seen ones, each combination once
    frames: int = 16  # per clip
    size: int = 64  # frame side in pixels (square, even; the demo model's input size)
    fps: int = 8
    seed: int = 0
    captions_per_video: int = 5
    crf: int = 18  # libx264 constant rate factor


def quick_spec() -> DemoSpec:
    """The smaller set for ``vcap demo --quick``: two clips per seen combination for training."""
    return DemoSpec(num_train=364, num_val=21, num_test=42)


def second_world_spec() -> DemoSpec:
    """Another world for benchmarks (set ``seed``: 7 in BENCHMARKS.md): ``quick_spec``'s sizes,
    but 24 frames per clip at 12 fps (a motion covers more ground within the sampled frames) and
    3 captions per clip."""
    return DemoSpec(num_train=364, num_val=21, num_test=42, frames=24, fps=12, captions_per_video=3)


# ----------------------------------------------------------------------------------------------
# Attributes, held-out pairs and splits
# ----------------------------------------------------------------------------------------------


def all_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]


@dataclass
class _Clip:
    index: int
    split: str
    colour: str
    shape: str
    motion: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}_{self.motion}_{self.index:04d}"

    @property
    def video(self) -> str:
        return f"videos/{self.name}.mp4"

    @property
    def video_id(self) -> str:
        return f"videos/{self.name}"


def _check_spec(spec: DemoSpec) -> None:
    if spec.num_train < 1 or spec.num_val < 0 or spec.num_test < 1:
        raise ValueError(f"need num_train >= 1, num_val >= 0, num_test >= 1; got {spec}")
    if spec.num_test > len(all_combinations()):
        raise ValueError(f"num_test={spec.num_test}: the test split holds each of the "
                         f"{len(all_combinations())} combinations at most once")
    if spec.size < 64 or spec.size % 2:
        # yuv420p needs even sides; decord 0.6 fails to read frames narrower than 64 px.
        raise ValueError(f"size must be even and >= 64, got {spec.size}")
    if spec.frames < 2 or spec.fps < 1 or spec.captions_per_video < 1:
        raise ValueError(f"need frames >= 2, fps >= 1, captions_per_video >= 1; got {spec}")


def plan_splits(spec: DemoSpec) -> list[_Clip]:
    """Which clip has which attributes and split (a pure function of the spec)."""
    _check_spec(spec)
    rng = np.random.default_rng([spec.seed, 7919])
    combos = all_combinations()
    held = [c for c in combos if is_held_out({"colour": c[0], "shape": c[1]})]
    seen = [c for c in combos if not is_held_out({"colour": c[0], "shape": c[1]})]

    # Test: about a third held-out combinations (round-robin over the pairs, so each pair shows
    # up), the rest seen ones; every combination at most once.
    n_held = min(len(held), spec.num_test, max(len(HELD_OUT_PAIRS), round(spec.num_test / 3)))
    by_pair = [[c for c in held if c[:2] == p] for p in HELD_OUT_PAIRS]
    for group in by_pair:
        rng.shuffle(group)
    held_order = [g[i] for i in range(len(MOTIONS)) for g in by_pair if i < len(g)]
    test = held_order[:n_held]
    seen_order = [seen[i] for i in rng.permutation(len(seen))]
    test += seen_order[: spec.num_test - n_held]

    # Train: cycles through every seen combination in a fresh order each round (balanced).
    train: list[tuple[str, str, str]] = []
    while len(train) < spec.num_train:
        train += [seen[i] for i in rng.permutation(len(seen))]
    train = train[: spec.num_train]
    # Val: seen combinations, unique while possible.
    val: list[tuple[str, str, str]] = []
    while len(val) < spec.num_val:
        val += [seen[i] for i in rng.permutation(len(seen))]
    val = val[: spec.num_val]

    clips = []
    for split, items in (("train", train), ("val", val), ("test", test)):
        for c, s, m in items:
            clips.append(_Clip(len(clips), split, c, s, m))
    return clips


# ----------------------------------------------------------------------------------------------
# The dataset folder
# ----------------------------------------------------------------------------------------------

MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.jsonl"
ATTRIBUTES = "attributes.json"


def spec_hash(spec: DemoSpec) -> str:
    blob = json.dumps({"spec": asdict(spec), "version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(folder: str | Path, spec: DemoSpec) -> bool:
    """Whether ``folder`` holds a finished dataset made from ``spec`` (manifest, tables, every video)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("hash") != spec_hash(spec):
        return False
    names = [ANNOTATIONS, ATTRIBUTES] + list(manifest.get("videos", []))
    return all((folder / n).is_file() for n in names)


@dataclass
class _Record:
    clip: _Clip
    background: str
    captions: list[str] = field(default_factory=list)

    def attributes(self) -> dict[str, str]:
        return {"colour": self.clip.colour, "shape": self.clip.shape, "motion": self.clip.motion,
                "background": self.background}


@dataclass
class RenderedClip:
    """What one clip is made of: its frames (T, H, W, 3) uint8 RGB, trajectory, object colour and
    background name."""

    frames: np.ndarray
    trajectory: Trajectory
    rgb: np.ndarray
    background: str


def render_clip(clip: _Clip, spec: DemoSpec) -> RenderedClip:
    """Render one planned clip (a pure function of the spec's seed and the clip's index)."""
    rng = np.random.default_rng([spec.seed, clip.index, 0])
    background = BACKGROUNDS_NAMES[int(rng.integers(len(BACKGROUNDS_NAMES)))]
    rgb = object_colour(clip.colour, rng)
    traj = sample_trajectory(clip.motion, spec.frames, rng)
    frames = render_frames(clip.shape, rgb, render_background(background, spec.size, rng), traj)
    return RenderedClip(frames, traj, rgb, background)


def _make_clip(clip: _Clip, spec: DemoSpec, folder: Path) -> _Record:
    """Render and write one clip; its captions come from their own random stream."""
    rendered = render_clip(clip, spec)
    write_mp4(folder / clip.video, rendered.frames, spec.fps, spec.crf)
    cap_rng = np.random.default_rng([spec.seed, clip.index, 1])
    captions = make_captions(clip.colour, clip.shape, clip.motion, rendered.background, spec.captions_per_video,
                             cap_rng, object_size=float(rendered.trajectory.size.mean()))
    return _Record(clip, rendered.background, captions)


def generate_dataset(folder: str | Path, spec: DemoSpec | None = None, progress: bool = True,
                     workers: int | None = None) -> Path:
    """Write the dataset into ``folder`` and return the path of its ``annotations.jsonl``.

    ``workers`` processes render and encode clips (default: the CPU count, at most 4).

    Seeded and cached: a folder that already holds a complete dataset of the same spec (its
    ``manifest.json``, written last, matches) is returned at once; otherwise (no manifest: a
    different spec, or an interrupted run) everything is regenerated, stale clips of ours removed.
    """
    spec = spec if spec is not None else DemoSpec()
    folder = Path(folder)
    annotations = folder / ANNOTATIONS
    if is_complete(folder, spec):
        return annotations
    clips = plan_splits(spec)
    videos = folder / "videos"
    if videos.is_symlink():  # it would write (and clear stale clips) wherever the link points: a hostile test's find
        raise ConfigError(f"{videos} is a symbolic link (to {os.readlink(videos)}); the demo's videos are written "
                          "only inside its own data folder: remove the link, or give another folder")
    videos.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder is incomplete

    workers = max(1, min(os.cpu_count() or 1, 4)) if workers is None else max(1, workers)
    bar = tqdm(total=len(clips), desc="demo videos", unit="clip", file=sys.stderr, disable=not progress)
    if workers == 1:
        records = []
        for c in clips:
            records.append(_make_clip(c, spec, folder))
            bar.update(1)
    else:  # each clip is a pure function of (seed, index): the same bytes on any number of processes
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            records = []
            for record in pool.map(_make_clip, clips, [spec] * len(clips), [folder] * len(clips), chunksize=16):
                records.append(record)
                bar.update(1)
    bar.close()

    lines = [json.dumps({"video": r.clip.video, "captions": r.captions, "split": r.clip.split,
                         "attributes": r.attributes()}) for r in records]
    write_file(annotations, "\n".join(lines) + "\n")
    table = {r.clip.video_id: r.attributes() for r in records}
    write_file(folder / ATTRIBUTES, json.dumps(table, indent=1) + "\n")

    keep = {Path(r.clip.video).name for r in records}
    # our clips, and the temporaries killed writes left (atomic.write_file names them .NAME.tmp-<random>)
    pattern = re.compile(r"^[a-z]+_[a-z]+_[a-z]+_\d{4}\.mp4$|^\..+\.mp4\.tmp-\w+$")
    for stale in (folder / "videos").iterdir():
        if stale.name not in keep and pattern.match(stale.name):
            stale.unlink()

    counts = {s: sum(r.clip.split == s for r in records) for s in ("train", "val", "test")}
    manifest = {"hash": spec_hash(spec), "version": GENERATOR_VERSION, "spec": asdict(spec), "splits": counts,
                "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS], "videos": [r.clip.video for r in records]}
    write_file(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return annotations


def load_attributes(folder: str | Path) -> dict[str, dict[str, str]]:
    """Video id (``videos/<name>``) -> ``{"colour", "shape", "motion", "background"}`` of a generated folder."""
    return json.loads((Path(folder) / ATTRIBUTES).read_text())


def attributes_of(entry: str | Mapping[str, Any], folder: str | Path | None = None) -> dict[str, str]:
    """The attributes of one video: from a jsonl entry (its ``"attributes"``), or from a video id /
    path looked up in ``folder``'s ``attributes.json``."""
    if isinstance(entry, Mapping):
        if "attributes" in entry:
            return dict(entry["attributes"])
        entry = str(entry["video"])
    if folder is None:
        raise ValueError("attributes_of(video id) needs the dataset folder")
    table = load_attributes(folder)
    vid = Path(entry).with_suffix("").as_posix() if str(entry).endswith(".mp4") else str(entry)
    if vid in table:
        return table[vid]
    by_name = {Path(k).name: v for k, v in table.items()}
    if Path(vid).name in by_name:
        return by_name[Path(vid).name]
    raise KeyError(f"no attributes for video '{entry}' in {Path(folder) / ATTRIBUTES}")
