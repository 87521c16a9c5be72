"""Long test videos whose every window's content is known: demo scenes (a coloured shape moving one
way over a background, as in ``vcap demo``) of ``window`` seconds each, played one after another.

Each distinct scene is rendered and H.264-encoded once (a keyframe every 2 s, as uploads are), and the
long video is those encoded scenes' packets copied one after another into one mp4 (no re-encode), so
a 60-minute 720p video takes about as long to make as its dozen distinct scenes. A scene is rendered
at the demo model's 64 px, scaled up to the frame height and centred between black bars, so the
centre crop a CLIP tower takes sees the whole scene.

``build_long_video(path, minutes, height)`` returns the scene of every window (colour, shape,
motion), which is what a correct caption of that window names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from caption.demo.render import object_colour, render_background, render_frames, sample_trajectory
from retrieval_pretrain.foundation.atomic import write_file

SCENES = [("red", "circle", "right"), ("blue", "square", "up"), ("green", "triangle", "left"),
          ("yellow", "star", "down"), ("purple", "cross", "grow"), ("orange", "circle", "shrink"),
          ("red", "star", "left"), ("blue", "triangle", "right"), ("green", "cross", "up"),
          ("yellow", "square", "down"), ("purple", "circle", "still"), ("orange", "square", "grow")]


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    motion: str


def _scene_frames(scene: Scene, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(frames, height, width, 3) uint8: the scene at 64 px, scaled to ``height`` and centred."""
    rng = np.random.default_rng(seed)
    small = render_frames(scene.shape, object_colour(scene.colour, rng), render_background("slate", 64, rng),
                          sample_trajectory(scene.motion, frames, rng))
    out = np.zeros((frames, height, width, 3), dtype=np.uint8)
    left = (width - height) // 2
    for i, f in enumerate(small):
        out[i, :, left:left + height] = np.asarray(Image.fromarray(f).resize((height, height), Image.BILINEAR))
    return out


def encode_scene(path: Path, frames: np.ndarray, fps: int, gop_seconds: float = 2.0) -> None:
    """H.264 (libx264, yuv420p, crf 23, a keyframe every ``gop_seconds``), atomically."""

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": "23", "preset": "veryfast", "g": str(int(fps * gop_seconds)),
                              "keyint_min": str(int(fps * gop_seconds)), "sc_threshold": "0"}
            stream.codec_context.time_base = Fraction(1, fps)
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))

    write_file(path, encode)


def concatenate(parts: list[Path], out: Path) -> None:
    """Copy the video packets of ``parts`` (same encoder settings) one after another into ``out``."""

    def remux(tmp: Path) -> None:
        with av.open(str(parts[0])) as first, av.open(str(tmp), mode="w", format="mp4") as dst:
            ost = dst.add_stream_from_template(first.streams.video[0])
            offset = 0
            for part in parts:
                with av.open(str(part)) as src:
                    stream = src.streams.video[0]
                    end = 0
                    for pkt in src.demux(stream):
                        if pkt.dts is None:
                            continue
                        end = max(end, pkt.pts + pkt.duration)
                        pkt.pts, pkt.dts, pkt.stream = pkt.pts + offset, pkt.dts + offset, ost
                        dst.mux(pkt)
                    offset += end

    write_file(out, remux)


def build_long_video(path: str | Path, minutes: float, height: int = 720, fps: int = 30, window: float = 10.0,
                     seed: int = 0) -> list[Scene]:
    """Write a ``minutes``-long video of ``window``-second demo scenes at ``height`` (16:9) and
    ``fps``; returns each window's scene. Cached: the scene list is kept beside the video
    (``.scenes.json``) and a complete pair is not rebuilt."""
    path = Path(path)
    listing = path.with_suffix(".scenes.json")
    if path.is_file() and listing.is_file():
        return [Scene(**s) for s in json.loads(listing.read_text())]
    width = (height * 16 // 9) // 2 * 2
    parts_dir = path.parent / f".{path.stem}_scenes"
    parts_dir.mkdir(parents=True, exist_ok=True)
    scenes = [Scene(*s) for s in SCENES]
    parts = []
    for k, scene in enumerate(scenes):
        part = parts_dir / f"{k:02d}_{height}p.mp4"
        if not part.is_file():
            encode_scene(part, _scene_frames(scene, int(window * fps), height, width, seed + k), fps)
        parts.append(part)
    count = int(round(minutes * 60 / window))
    rng = np.random.default_rng(seed)
    order = [int(k) for k in np.concatenate([rng.permutation(len(scenes)) for _ in range(-(-count // len(scenes)))])]
    order = order[:count]
    concatenate([parts[k] for k in order], path)
    listing.write_text(json.dumps([asdict(scenes[k]) for k in order]))
    return [scenes[k] for k in order]
