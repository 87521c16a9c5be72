"""Small sets of real H.264 clips from the demo generator, and `vcap` arguments over them, shared by
the end-to-end tests of stage 1's parts (tightTransf, X-CLIP, interpolation, prompt tuning)."""

from __future__ import annotations

from pathlib import Path


def make_clips(folder: Path, frames: int = 8, num_test: int = 4) -> Path:
    """8 training and ``num_test`` test clips of ``frames`` frames at 64 px, one distinct caption
    each (demo world, seed 3), written into ``folder``; returns it."""
    from caption.demo import data as demo_data

    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=num_test, frames=frames, size=64, seed=3,
                              captions_per_video=1)
    demo_data.generate_dataset(folder, spec, progress=False, workers=1)
    return folder


def data_args(data: Path) -> list[str]:
    """The config overrides that point a run at ``make_clips``'s folder."""
    return [f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}"]


def cli_args(data: Path, *overrides: str) -> list[str]:
    """``--config <the demo config> data.* ... overrides`` for a `vcap` command over ``data``."""
    from caption.demo import CONFIG_PATH

    return ["--config", str(CONFIG_PATH), *data_args(data), *overrides]
