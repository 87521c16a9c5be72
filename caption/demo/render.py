"""Rendering the demo's clips: trajectories of the seven motions, the five shapes drawn anti-aliased
over a muted background, and the H.264 mp4 writer (PyAV, libx264, yuv420p). Pure functions of
their random generator, so a clip is the same bytes on every run and in any worker process.

Direction is visible only from frame order: a ``left`` clip is exactly a ``right`` clip played
backwards (same sampled start/end range, see ``sample_trajectory``), and ``grow``/``shrink``
likewise, so a single frame cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from caption.demo.captions import MOTIONS
from retrieval_pretrain.foundation.atomic import write_file

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
        size = rng.uniform(0.34, 0.44)
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
        small, big = rng.uniform(0.18, 0.24), rng.uniform(0.54, 0.62)
        margin = big / 2 + 0.02
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        size = small + (big - small) * t
        if motion == "shrink":
            size = size[::-1].copy()
        return Trajectory(np.full(frames, cx), np.full(frames, cy), size)
    if motion == "still":
        size = rng.uniform(0.34, 0.48)
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
                  supersample: int = 3, inside: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                  ) -> np.ndarray:
    """(frames, H, W, 3) uint8: the object drawn over ``background`` along ``traj``, anti-aliased by
    supersampling only the object's bounding box. ``inside(x, y)``: the shape's mask in object
    coordinates (default: the demo's ``shape``; other worlds pass their own)."""
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
            cover = (inside(xs[None, :], ys[:, None]) if inside is not None
                     else _inside(shape, xs[None, :], ys[:, None])).astype(np.float32)
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
    import av  # deferred: PyAV (FFmpeg) only when a clip is written

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
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

    write_file(path, encode)
