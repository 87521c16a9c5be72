"""The demo's built-in data: a procedural video-caption dataset of simple scenes.

Each clip shows one object - a colour (``COLOURS``), a shape (``SHAPES``) and a motion
(``MOTIONS``) - on a muted, softly shaded background, written as a real H.264 mp4 (PyAV, libx264,
yuv420p) and described by several paraphrased captions. ``vcap demo`` trains a tiny CLIP on it by
contrastive retrieval and then a captioner, and scores the generated captions by whether they name
the right colour, shape and motion (``caption_attributes``, ``attribute_accuracy``).

The visual signal is made clean and learnable at 64 px: big objects (about a quarter to a half of
the frame side), saturated, well separated hues on low-saturation backgrounds, five shapes that stay
distinct when small, and large motions. Direction is visible only from frame order: a ``left``
clip is exactly a ``right`` clip played backwards (same sampled start/end range, see
``sample_trajectory``), and ``grow``/``shrink`` likewise, so a single frame cannot tell them apart.

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
import os
import re
import sys
import tempfile
from fractions import Fraction
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

# Bump when the rendering or caption generation changes, so cached folders are regenerated.
GENERATOR_VERSION = 2

COLOURS: list[str] = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross"]
MOTIONS: list[str] = ["left", "right", "up", "down", "grow", "shrink", "still"]
ATTRIBUTE_KEYS = ("colour", "shape", "motion")

# Colour-shape pairs that never occur in train or val, but do in test.
HELD_OUT_PAIRS: list[tuple[str, str]] = [("red", "star"), ("green", "triangle"), ("blue", "cross"),
                                         ("yellow", "square")]

# Saturated, well separated hues (RGB), jittered a little per clip.
_RGB = {"red": (225, 30, 30), "orange": (250, 135, 0), "yellow": (245, 225, 25), "green": (30, 180, 50),
        "blue": (35, 80, 235), "purple": (155, 45, 215)}
_COLOUR_JITTER = 10

# Muted backgrounds; their names share no word with COLOURS, SHAPES or the motion phrases.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (122, 122, 122), "dark grey": (62, 63, 66), "light grey": (176, 176, 172), "beige": (180, 166, 140),
    "black": (26, 26, 28), "brown": (104, 86, 70), "slate": (86, 96, 108),
}
BACKGROUNDS_NAMES = list(BACKGROUNDS)


@dataclass
class DemoSpec:
    """What ``generate_dataset`` makes. The defaults (490 clips of 16 frames, 96 px, 8 fps; 4 MB) fit
    the demo's budget on a 2-core CPU: generation takes about 6 s, a clip decodes in about 4 ms,
    and training sees 2 clips of every seen (colour, shape, motion) combination per epoch."""

    num_train: int = 364  # 2 per seen (colour, shape, motion) combination: 182 combos x 2
    num_val: int = 42
    num_test: int = 84  # all 28 held-out combos + 56 seen ones, each combination once
    frames: int = 16  # per clip
    size: int = 96  # frame side in pixels (square, even)
    fps: int = 8
    seed: int = 0
    captions_per_video: int = 5
    crf: int = 18  # libx264 constant rate factor


def quick_spec() -> DemoSpec:
    """The smaller set for ``vcap demo --quick``: one clip per seen combination for training."""
    return DemoSpec(num_train=182, num_val=21, num_test=42)


# ----------------------------------------------------------------------------------------------
# Attributes, held-out pairs and splits
# ----------------------------------------------------------------------------------------------


def is_held_out(attributes: Mapping[str, Any]) -> bool:
    """Whether an attribute dict's colour-shape pair is one of ``HELD_OUT_PAIRS``."""
    return (attributes.get("colour"), attributes.get("shape")) in HELD_OUT_PAIRS


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
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """Per-frame object centre (fractions of the frame side, y down) and size (fraction of the side:
    the shape's diameter)."""

    cx: np.ndarray
    cy: np.ndarray
    size: np.ndarray

    def reversed(self) -> "Trajectory":
        return Trajectory(self.cx[::-1].copy(), self.cy[::-1].copy(), self.size[::-1].copy())


def sample_trajectory(motion: str, frames: int, rng: np.random.Generator) -> Trajectory:
    """A random trajectory for ``motion``. Opposite motions draw the same range and only swap its
    ends, so ``left`` with a given draw is exactly ``right`` with that draw played backwards."""
    t = np.linspace(0.0, 1.0, frames)
    if motion in ("left", "right", "up", "down"):
        size = rng.uniform(0.26, 0.36)
        margin = size / 2 + 0.02  # fully visible
        lo = rng.uniform(margin, margin + 0.06)
        hi = rng.uniform(1 - margin - 0.06, 1 - margin)
        across = rng.uniform(margin, 1 - margin)
        along = lo + (hi - lo) * t  # increasing; the opposite motion is this array reversed
        if motion in ("left", "up"):
            along = along[::-1].copy()
        fixed = np.full(frames, across)
        cx, cy = (along, fixed) if motion in ("left", "right") else (fixed, along)
        return Trajectory(cx, cy, np.full(frames, size))
    if motion in ("grow", "shrink"):
        small, big = rng.uniform(0.14, 0.20), rng.uniform(0.42, 0.50)
        margin = big / 2 + 0.02
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        size = small + (big - small) * t
        if motion == "shrink":
            size = size[::-1].copy()
        return Trajectory(np.full(frames, cx), np.full(frames, cy), size)
    if motion == "still":
        size = rng.uniform(0.26, 0.40)
        margin = size / 2 + 0.02
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        return Trajectory(np.full(frames, cx), np.full(frames, cy), np.full(frames, size))
    raise ValueError(f"unknown motion '{motion}'; one of {MOTIONS}")


def _star(points: int = 5, outer: float = 0.52, inner: float = 0.25) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


def _centre_bbox(verts: np.ndarray) -> np.ndarray:
    return verts - (verts.max(0) + verts.min(0)) / 2


# Polygons in units of the object's size (its diameter), centred on their bounding box, y down.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.42, -0.42], [0.42, -0.42], [0.42, 0.42], [-0.42, 0.42]]),
    "triangle": _centre_bbox(np.array([[0.0, -0.56], [0.52, 0.34], [-0.52, 0.34]])),
    "star": _centre_bbox(_star()),
    "cross": np.array([[-0.16, -0.48], [0.16, -0.48], [0.16, -0.16], [0.48, -0.16], [0.48, 0.16], [0.16, 0.16],
                       [0.16, 0.48], [-0.16, 0.48], [-0.16, 0.16], [-0.48, 0.16], [-0.48, -0.16], [-0.16, -0.16]]),
}
_CIRCLE_RADIUS = 0.47


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (in object units, centred) lie inside ``shape`` (even-odd rule for polygons)."""
    if shape == "circle":
        return x * x + y * y <= _CIRCLE_RADIUS**2
    verts = _POLYGONS[shape]
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(verts, np.roll(verts, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        inside ^= crosses & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
    return inside


def render_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A muted background: a soft linear gradient in a random direction and faint static grain."""
    base = np.asarray(BACKGROUNDS[name], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy)[..., None]
    amplitude = rng.uniform(14, 28)
    tint = rng.uniform(-5, 5, size=3).astype(np.float32)
    grain = rng.normal(0.0, 2.5, size=(size, size, 1)).astype(np.float32)
    return np.clip(base + tint + amplitude * ramp + grain, 0, 255).astype(np.float32)


def render_frames(shape: str, rgb: Iterable[float], background: np.ndarray, traj: Trajectory,
                  supersample: int = 3) -> np.ndarray:
    """(frames, H, W, 3) uint8: the object drawn over ``background`` along ``traj``, anti-aliased by
    supersampling only the object's bounding box."""
    size = background.shape[0]
    colour = np.asarray(list(rgb), dtype=np.float32)
    out = np.empty((len(traj.cx), size, size, 3), dtype=np.uint8)
    ss = supersample
    offsets = (np.arange(ss) + 0.5) / ss
    for f, (cx, cy, d) in enumerate(zip(traj.cx, traj.cy, traj.size)):
        frame = background.copy()
        cxp, cyp, dp = cx * size, cy * size, d * size
        x0, x1 = max(0, int(np.floor(cxp - 0.6 * dp))), min(size, int(np.ceil(cxp + 0.6 * dp)))
        y0, y1 = max(0, int(np.floor(cyp - 0.6 * dp))), min(size, int(np.ceil(cyp + 0.6 * dp)))
        if x1 > x0 and y1 > y0:
            xs = ((np.arange(x0, x1)[:, None] + offsets[None]).ravel() - cxp) / dp
            ys = ((np.arange(y0, y1)[:, None] + offsets[None]).ravel() - cyp) / dp
            cover = _inside(shape, xs[None, :], ys[:, None]).astype(np.float32)
            alpha = cover.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))[..., None]
            region = frame[y0:y1, x0:x1]
            frame[y0:y1, x0:x1] = region * (1 - alpha) + colour * alpha
        out[f] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


def object_colour(colour: str, rng: np.random.Generator) -> np.ndarray:
    """The clip's object colour: the named RGB with a small per-clip jitter."""
    base = np.asarray(_RGB[colour], dtype=np.float32)
    return np.clip(base + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, size=3), 0, 255)


# ----------------------------------------------------------------------------------------------
# Video files
# ----------------------------------------------------------------------------------------------


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 / 2, W) uint8 planar yuv420p, BT.601 limited range (what decoders
    assume for untagged video), chroma averaged over 2x2 blocks.

    Done here rather than by PyAV's ``VideoFrame.reformat``: swscale's RGB->YUV path gave slightly
    different bytes from one call to the next (measured with PyAV 18), which broke "same seed, same
    files"."""
    h, w, _ = rgb.shape
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    sub = x.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    planes = [y.ravel(), cb.ravel(), cr.ravel()]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as H.264 (libx264, yuv420p) mp4, atomically: a temporary
    name in the same folder, then a rename."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1  # deterministic, and no oversubscription on small machines
            # mbtree off: with it, x264 gave different bytes for the same input now and then (about 1 in
            # 250 encodes, PyAV 18); without it the output is byte-for-byte reproducible.
            stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
            stream.codec_context.time_base = Fraction(1, fps)
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
                frame.pts = i  # explicit timestamps: x264's rate control reads them
                frame.time_base = Fraction(1, fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

# Each motion: (finite verb phrase, participle phrase) paraphrases, all recognised by the parser.
_MOTION_PHRASES: dict[str, list[tuple[str, str]]] = {
    "left": [("moves to the left", "moving to the left"), ("moves left", "moving left"),
             ("heads left", "heading left"), ("slides leftward", "sliding leftward"),
             ("travels to the left", "travelling to the left"), ("drifts left", "drifting left"),
             ("goes from right to left", "going from right to left"), ("glides to the left", "gliding to the left")],
    "right": [("moves to the right", "moving to the right"), ("moves right", "moving right"),
              ("heads right", "heading right"), ("slides rightward", "sliding rightward"),
              ("travels to the right", "travelling to the right"), ("drifts right", "drifting right"),
              ("goes from left to right", "going from left to right"),
              ("glides to the right", "gliding to the right")],
    "up": [("moves up", "moving up"), ("rises", "rising"), ("goes upward", "going upward"),
           ("floats up", "floating up"), ("climbs upward", "climbing upward"), ("travels up", "travelling up"),
           ("goes from bottom to top", "going from bottom to top"), ("slides upward", "sliding upward")],
    "down": [("moves down", "moving down"), ("falls", "falling"), ("sinks", "sinking"),
             ("drops down", "dropping down"), ("slides downward", "sliding downward"), ("descends", "descending"),
             ("goes from top to bottom", "going from top to bottom"), ("travels down", "travelling down")],
    "grow": [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding"),
             ("grows larger", "growing larger"), ("becomes larger", "becoming larger"), ("swells", "swelling"),
             ("increases in size", "increasing in size"), ("gets larger", "getting larger")],
    "shrink": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting"),
               ("becomes smaller", "becoming smaller"), ("shrinks away", "shrinking away"),
               ("decreases in size", "decreasing in size"), ("dwindles", "dwindling"),
               ("gets smaller and smaller", "getting smaller and smaller")],
    "still": [("stays still", "staying still"), ("does not move", "not moving"),
              ("remains in place", "remaining in place"), ("stays in place", "staying in place"),
              ("sits still", "sitting still"), ("stays put", "staying put"), ("stands still", "standing still"),
              ("remains motionless", "remaining motionless")],
}
_SHAPE_WORDS: dict[str, list[str]] = {
    "circle": ["circle", "circle", "ball", "disc", "round shape"],
    "square": ["square", "square", "box", "block", "square shape"],
    "triangle": ["triangle", "triangle", "triangular shape", "triangle shape"],
    "star": ["star", "star", "star shape", "five-pointed star"],
    "cross": ["cross", "cross", "plus sign", "plus shape", "cross shape"],
}
_BG_PHRASES = ["on a {bg} background", "against a {bg} backdrop", "over a {bg} background",
               "in front of a {bg} background"]
# {np}: "a red ball", {the}: "the red ball", {mv}: finite motion, {ing}: participle, {bg}: background.
_TEMPLATES = [
    "{np} {mv}", "{np} {mv}", "{np} {mv} {bg}", "{np} {mv} {bg}", "{the} {mv}", "{the} {mv} {bg}",
    "there is {np} that {mv}", "in this clip {np} {mv}", "{np} {ing} {bg}", "{np} {ing}",
    "video of {np} {ing}", "a clip showing {np} {ing}", "we see {np} {ing} {bg}", "{np} {mv} {tail}",
]
_TAILS = {"left": ["across the screen", "across the frame"], "right": ["across the screen", "across the frame"],
          "up": ["across the screen", "through the frame"], "down": ["across the screen", "through the frame"],
          "grow": ["over time", "steadily"], "shrink": ["over time", "steadily"],
          "still": ["the whole time", "throughout"]}
MAX_CAPTION_WORDS = 12


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def make_captions(colour: str, shape: str, motion: str, background: str, n: int, rng: np.random.Generator,
                  object_size: float | None = None) -> list[str]:
    """``n`` distinct paraphrases naming the colour, the shape (or a synonym) and the motion;
    some mention the background; each at most ``MAX_CAPTION_WORDS`` words. ``object_size`` (a
    fraction of the frame side) allows a truthful "small"/"big" for objects that keep their size."""
    size_words: list[str] = []
    if object_size is not None and motion not in ("grow", "shrink"):
        size_words = ["small", "little"] if object_size < 0.3 else ["big", "large"] if object_size > 0.34 else []
    captions: list[str] = []
    for _ in range(200):
        if len(captions) == n:
            break
        shape_word = _SHAPE_WORDS[shape][int(rng.integers(len(_SHAPE_WORDS[shape])))]
        words = [colour, shape_word]
        if rng.random() < 0.15:
            words.insert(0, "bright")
        if size_words and rng.random() < 0.4:
            words.insert(0, size_words[int(rng.integers(len(size_words)))])
        noun = " ".join(words)
        mv, ing = _MOTION_PHRASES[motion][int(rng.integers(len(_MOTION_PHRASES[motion])))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        bg = _BG_PHRASES[int(rng.integers(len(_BG_PHRASES)))].format(bg=background)
        tail = _TAILS[motion][int(rng.integers(len(_TAILS[motion])))]
        text = template.format(np=_article(noun), the="the " + noun, mv=mv, ing=ing, bg=bg, tail=tail)
        if len(text.split()) <= MAX_CAPTION_WORDS and text not in captions:
            captions.append(text)
    if len(captions) < n:
        raise RuntimeError(f"could only make {len(captions)} distinct captions for {colour} {shape} {motion}")
    return captions


def _compile(table: list[tuple[str, str]]) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(rf"\b(?:{pattern})\b"), value) for pattern, value in table]


_COLOUR_PATTERNS = _compile([(c, c) for c in COLOURS] + [("violet", "purple")])
_SHAPE_PATTERNS = _compile([
    ("circles?|circular|balls?|discs?|disks?|dots?|round", "circle"), ("squares?|box|boxes|blocks?|cube", "square"),
    ("triangles?|triangular", "triangle"), ("stars?|starry", "star"), ("cross|crosses|plus", "cross"),
])
# Tried in order; a match is blanked out before later patterns run, so "from right to left" is
# one leftward motion, and "does not move" never reads as a direction.
_MOTION_PATTERNS = _compile([
    (r"(?:stays?|staying|sits?|sitting|stands?|standing|remains?|remaining|is|keeps?)\s+"
     r"(?:still|in place|put|motionless|stationary|static)", "still"),
    (r"(?:does not|doesn't|do not|don't|is not|isn't|not)\s+(?:move|moves|moving)", "still"),
    (r"motionless|stationary|static|unmoving|without moving", "still"),
    (r"from (?:the )?right to (?:the )?left", "left"), (r"from (?:the )?left to (?:the )?right", "right"),
    (r"from (?:the )?bottom to (?:the )?top", "up"), (r"from (?:the )?top to (?:the )?bottom", "down"),
    (r"(?:increas\w*|grows?|growing) in size", "grow"), (r"(?:decreas\w*|reduc\w*) in size", "shrink"),
    (r"grows?|growing|grew|expands?|expanding|expanded|swells?|swelling|enlarg\w*|bigger|larger", "grow"),
    (r"shrinks?|shrinking|shrank|contracts?|contracting|dwindl\w*|smaller", "shrink"),
    (r"left|leftward|leftwards", "left"), (r"right|rightward|rightwards", "right"),
    (r"up|upward|upwards|rises|rising|rise|rose|climbs?|climbing|ascends?|ascending", "up"),
    (r"down|downward|downwards|falls?|falling|fell|sinks?|sinking|drops?|dropping|descends?|descending", "down"),
])


def _find(patterns: list[tuple[re.Pattern[str], str]], text: str, consume: bool) -> str | None:
    found: set[str] = set()
    for pattern, value in patterns:
        if pattern.search(text):
            found.add(value)
            if consume:
                text = pattern.sub(" | ", text)
    return found.pop() if len(found) == 1 else None


def caption_attributes(caption: str) -> dict[str, str | None]:
    """Which colour, shape and motion a caption names: ``{"colour", "shape", "motion"}``, each
    ``None`` when the caption names none, or names two different ones (ambiguous)."""
    text = " ".join(re.sub(r"[^a-z']+", " ", caption.lower()).split())
    return {"colour": _find(_COLOUR_PATTERNS, text, consume=False),
            "shape": _find(_SHAPE_PATTERNS, text, consume=False),
            "motion": _find(_MOTION_PATTERNS, text, consume=True)}


def _score(pairs: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {"videos": len(pairs)}
    hits = {k: 0 for k in ATTRIBUTE_KEYS + ("all",)}
    for caption, truth in pairs:
        named = caption_attributes(caption)
        ok = [named[k] == truth.get(k) for k in ATTRIBUTE_KEYS]
        for k, good in zip(ATTRIBUTE_KEYS, ok):
            hits[k] += good
        hits["all"] += all(ok)
    for k, v in hits.items():
        result[k] = round(v / len(pairs), 4) if pairs else None
    return result


def attribute_accuracy(predictions: Mapping[str, str], attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Share of generated captions that name the right colour / shape / motion / all three.

    Args:
        predictions: video id -> generated caption.
        attributes: video id -> ``{"colour", "shape", "motion", ...}`` (``load_attributes``).
            An id is matched exactly, else by its last path component.

    Returns ``{"colour", "shape", "motion", "all", "videos", "held_out": {...}, "seen_pairs": {...},
    "unmatched"}``: ``held_out`` scores only videos whose colour-shape pair is in
    ``HELD_OUT_PAIRS`` (never seen in training), ``seen_pairs`` the others; ``unmatched`` counts
    predictions with no attributes (left out). Fractions are ``None`` for an empty group.
    """
    by_name = {Path(k).name: v for k, v in attributes.items()}
    pairs, unmatched = [], 0
    for vid, caption in predictions.items():
        truth = attributes.get(vid) or by_name.get(Path(vid).name)
        if truth is None:
            unmatched += 1
            continue
        pairs.append((caption, truth))
    result = _score(pairs)
    result["held_out"] = _score([p for p in pairs if is_held_out(p[1])])
    result["seen_pairs"] = _score([p for p in pairs if not is_held_out(p[1])])
    result["unmatched"] = unmatched
    return result


# ----------------------------------------------------------------------------------------------
# The dataset folder
# ----------------------------------------------------------------------------------------------

MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.jsonl"
ATTRIBUTES = "attributes.json"


def spec_hash(spec: DemoSpec) -> str:
    blob = json.dumps({"spec": asdict(spec), "version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def generate_dataset(folder: str | Path, spec: DemoSpec | None = None, progress: bool = True) -> Path:
    """Write the dataset into ``folder`` and return the path of its ``annotations.jsonl``.

    Seeded and cached: a folder that already holds a complete dataset of the same spec (its
    ``manifest.json``, written last, matches) is returned at once; otherwise (no manifest: a
    different spec, or an interrupted run) everything is regenerated, stale clips of ours removed.
    """
    from tqdm import tqdm

    spec = spec if spec is not None else DemoSpec()
    folder = Path(folder)
    annotations = folder / ANNOTATIONS
    if is_complete(folder, spec):
        return annotations
    clips = plan_splits(spec)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder is incomplete

    records = [_make_clip(c, spec, folder)
               for c in tqdm(clips, desc="demo videos", unit="clip", file=sys.stderr, disable=not progress)]

    lines = [json.dumps({"video": r.clip.video, "captions": r.captions, "split": r.clip.split,
                         "attributes": r.attributes()}) for r in records]
    _atomic_write_text(annotations, "\n".join(lines) + "\n")
    table = {r.clip.video_id: r.attributes() for r in records}
    _atomic_write_text(folder / ATTRIBUTES, json.dumps(table, indent=1) + "\n")

    keep = {Path(r.clip.video).name for r in records}
    pattern = re.compile(r"^[a-z]+_[a-z]+_[a-z]+_\d{4}\.mp4$|^\..*\.tmp$")
    for stale in (folder / "videos").iterdir():
        if stale.name not in keep and pattern.match(stale.name):
            stale.unlink()

    counts = {s: sum(r.clip.split == s for r in records) for s in ("train", "val", "test")}
    manifest = {"hash": spec_hash(spec), "version": GENERATOR_VERSION, "spec": asdict(spec), "splits": counts,
                "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS], "videos": [r.clip.video for r in records]}
    _atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
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
