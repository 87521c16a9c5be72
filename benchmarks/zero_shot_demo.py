"""Zero-shot recognition on the demo world: colour, shape and motion of the test clips named through
prompts by a demo stage-1 model that never saw a label (it was trained on captions only).

    vcap demo --output demo_out          # or any finished demo run
    python -m benchmarks.zero_shot_demo --model demo_out/stage1/model --data demo_out/data

Prints accuracy per attribute beside chance, with the built-in 16-template ensemble and with the
label phrases alone (template "{}").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from caption.config import load
from vcap_toolkit.jobs.recognition import TEMPLATES, classify_videos, load_recognizer

# The label of each attribute value, as a caption would word it.
PHRASES = {
    "colour": lambda v: f"a {v} shape",
    "shape": lambda v: f"a {v}",
    "motion": lambda v: {"still": "a shape staying still", "grow": "a shape growing",
                         "shrink": "a shape shrinking"}.get(v, f"a shape moving {v}"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a demo stage-1 model folder")
    parser.add_argument("--data", required=True, help="the demo's data folder (annotations.jsonl + videos)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    rows = [json.loads(x) for x in (Path(args.data) / "annotations.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == args.split]
    cfg = load(None, ["run.num_workers=2"])
    device = torch.device("cpu")
    net, spec = load_recognizer(cfg, args.model, None, device)
    videos = [(r["video"], Path(args.data) / r["video"]) for r in rows]
    print(f"{len(rows)} {args.split} clips; model {args.model}")
    for attribute, phrase in PHRASES.items():
        values = sorted({r["attributes"][attribute] for r in rows})
        labels = [phrase(v) for v in values]
        truth = {r["video"]: phrase(r["attributes"][attribute]) for r in rows}
        for name, templates in (("16-template ensemble", TEMPLATES), ("label alone", ("{}",))):
            ranked, failed = classify_videos(net, spec, videos, labels, templates, device, top=1)
            correct = sum(ranked[v][0][0] == truth[v] for v in ranked)
            print(f"{attribute:<7} {name:<21} top-1 {correct / len(rows):.3f}  (chance {1 / len(values):.3f}, "
                  f"{len(values)} labels; {len(failed)} unreadable)")


if __name__ == "__main__":
    main()
