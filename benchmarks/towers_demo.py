"""Stage 1's video towers side by side on the demo world (`vcap demo --quick` data and recipe), each
through both stages: stage-1 time, retrieval R@1 and the caption model's attribute accuracy.

    python -m benchmarks.towers_demo --output towers_out [--world second] [--only NAME ...]

``--world second``: another generated world (``caption.demo.data.second_world_spec``, seed 7:
24 frames per clip at 12 fps, 3 captions per clip), same recipe.

Variants: the demo's ResNet tower with the seqTransf (its default), meanP and seqLSTM heads; a tiny
ViT tower (2 blocks, 64 px) with meanP, with and without space-time mixing attention (st_mix needs
a ViT). One seed each: differences within a few points are run-to-run noise (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from caption.demo import data as demo_data
from caption.demo import run_demo

VIT = "clip.custom.vision_cfg={layers: 2, width: 64, head_width: 32, patch_size: 8, image_size: 64}"
# A tiny X-CLIP the size of the ViT variant (2 blocks of width 64 at 64 px, patch 8) with the demo's
# text width (128, 1 layer, 16 tokens), one MIT layer and one prompt-generator layer.
XCLIP = ("{projection_dim: 128, prompt_layers: 1, prompt_num_attention_heads: 4, "
         "text_config: {hidden_size: 128, intermediate_size: 256, num_hidden_layers: 1, num_attention_heads: 4, "
         "max_position_embeddings: 16}, "
         "vision_config: {hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 2, "
         "image_size: 64, patch_size: 8, mit_hidden_size: 128, mit_intermediate_size: 256, "
         "mit_num_hidden_layers: 1, mit_num_attention_heads: 4}}")
VARIANTS = {
    "ResNet + seqTransf (demo)": [],
    "ResNet + meanP": ["pretrain.head=meanP", "pretrain.head_input_norm=false"],
    "ResNet + seqLSTM": ["pretrain.head=seqLSTM", "pretrain.head_layers=1", "pretrain.head_input_norm=false"],
    "ViT + meanP": [VIT, "pretrain.head=meanP", "pretrain.head_input_norm=false"],
    "ViT + meanP + st_mix": [VIT, "pretrain.head=meanP", "pretrain.head_input_norm=false",
                             "clip.temporal_attention=st_mix"],
    "ResNet + tightTransf": ["pretrain.head=tightTransf", "pretrain.head_layers=2", "pretrain.head_input_norm=false"],
    "X-CLIP (tiny)": ["clip.kind=xclip", "clip.model=tiny-xclip", "clip.pretrained=null", f"clip.custom={XCLIP}",
                      "pretrain.freeze=[clip.text_model.embeddings.token_embedding]", "pretrain.head_input_norm=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("towers_out"))
    parser.add_argument("--only", nargs="*", help="names of VARIANTS to run")
    parser.add_argument("--world", choices=["demo", "second"], default="demo")
    args = parser.parse_args()
    spec, seed = (demo_data.second_world_spec(), 7) if args.world == "second" else (None, 0)
    rows = {}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        folder = args.output / args.world / name.replace(" ", "_").replace("+", "").replace("(", "").replace(")", "")
        m = run_demo(folder, quick=True, seed=seed, overrides=overrides, spec=spec)
        steps = [r for r in map(json.loads, (folder / "stage1" / "log.jsonl").read_text().splitlines())
                 if "compute_s" in r]  # compute_s sums the steps since the previous record
        m["step_ms"] = 1000 * float(np.median([b["compute_s"] / (b["step"] - a["step"])
                                               for a, b in zip(steps, steps[1:]) if b["step"] > a["step"]]))
        rows[name] = m
        print(json.dumps({name: m}))
    print(f"world: {args.world}")
    print("| tower | stage 1 s | step ms | t2v R@1 | v2t R@1 | CIDEr | colour | shape | motion | held-out c / s / m |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        a, r = m["attributes"], m["retrieval"]
        held = a.get("held_out", {})
        print(f"| {name} | {m['seconds']['stage1']:.0f} | {m['step_ms']:.0f} | {r['t2v_R@1']:.3f} | {r['v2t_R@1']:.3f} | "
              f"{m['caption']['CIDEr']:.3f} | {a['colour']:.3f} | {a['shape']:.3f} | {a['motion']:.3f} | "
              f"{_f(held.get('colour'))} / {_f(held.get('shape'))} / {_f(held.get('motion'))} |")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
