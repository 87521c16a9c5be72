"""Stage 1's video towers side by side on the demo world (`vcap demo --quick` data and recipe), each
through both stages: stage-1 time, retrieval R@1 and the caption model's attribute accuracy.

    python benchmarks/towers_demo.py --output towers_out

Variants: the demo's ResNet tower with the seqTransf (its default), meanP and seqLSTM heads; a tiny
ViT tower (2 blocks, 64 px) with meanP, with and without space-time mixing attention (st_mix needs
a ViT). One seed each: differences within a few points are run-to-run noise (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caption.demo import run_demo

VIT = "clip.custom.vision_cfg={layers: 2, width: 64, head_width: 32, patch_size: 8, image_size: 64}"
VARIANTS = {
    "ResNet + seqTransf (demo)": [],
    "ResNet + meanP": ["pretrain.head=meanP", "pretrain.head_input_norm=false"],
    "ResNet + seqLSTM": ["pretrain.head=seqLSTM", "pretrain.head_layers=1", "pretrain.head_input_norm=false"],
    "ViT + meanP": [VIT, "pretrain.head=meanP", "pretrain.head_input_norm=false"],
    "ViT + meanP + st_mix": [VIT, "pretrain.head=meanP", "pretrain.head_input_norm=false",
                             "clip.temporal_attention=st_mix"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("towers_out"))
    parser.add_argument("--only", nargs="*", help="names of VARIANTS to run")
    args = parser.parse_args()
    rows = {}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        m = run_demo(args.output / name.replace(" ", "_").replace("+", "").replace("(", "").replace(")", ""),
                     quick=True, seed=0, overrides=overrides)
        rows[name] = m
        print(json.dumps({name: m}))
    print("| tower | stage 1 s | t2v R@1 | v2t R@1 | CIDEr | colour | shape | motion | held-out c / s / m |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        a, r = m["attributes"], m["retrieval"]
        held = a.get("held_out", {})
        print(f"| {name} | {m['seconds']['stage1']:.0f} | {r['t2v_R@1']:.3f} | {r['v2t_R@1']:.3f} | "
              f"{m['caption']['CIDEr']:.3f} | {a['colour']:.3f} | {a['shape']:.3f} | {a['motion']:.3f} | "
              f"{_f(held.get('colour'))} / {_f(held.get('shape'))} / {_f(held.get('motion'))} |")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
