"""Stage 2 after cross-entropy: SCST with the CIDEr-D reward, and with CIDEr-D + the stage-1 CLIP
similarity, from the same cross-entropy model on the same cached features; test-split CIDEr and
attribute accuracy after each phase, the time each took, and the reward's share of an SCST step.

    python -m benchmarks.scst_demo --output scst_out                 # the demo world (vcap demo's data)
    python -m benchmarks.scst_demo --output scst_out --world second  # another generated world

``demo``: ``vcap demo --quick``'s data and recipe (364 training clips). ``second``: another world
(``caption.demo.data.second_world_spec``) - seed 7, 24 frames per clip at 12 fps (each motion covers
more ground), 3 captions per clip, the same sizes and training length. One seed each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from caption.demo import data as demo_data
from caption.demo.run import demo_config, run_demo

WORLDS = {
    "demo": dict(quick=True, seed=0, spec=None),
    "second": dict(quick=True, seed=7, spec=demo_data.second_world_spec()),
}
SCST = ["caption.objective=scst", "caption.epochs=3", "caption.lr=3e-4", "caption.warmup_ratio=0",
        "caption.batch_size=16", "caption.scst.samples=5", "caption.select_by=last", "run.log_every=1",
        "decode.num_beams=5"]
PHASES = {"SCST, CIDEr-D reward": [], "SCST, CIDEr-D + CLIP reward": ["caption.reward.clip_weight=1.0"]}


def _test_scores(model: Path, cfg, features: Path, out: Path, data_dir: Path) -> dict[str, float]:
    from caption.evaluate import evaluate

    scores = evaluate(model, cfg, features=features, split="test", output=out)
    preds = json.loads((out / "predictions.json").read_text())
    acc = demo_data.attribute_accuracy(preds, demo_data.load_attributes(data_dir))
    return {"CIDEr": scores["CIDEr"], "BLEU-4": scores["BLEU-4"], **{k: acc[k] for k in ("colour", "shape", "motion")},
            "held_out": acc.get("held_out", {})}


def main() -> None:
    from caption.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("scst_out"))
    parser.add_argument("--world", choices=sorted(WORLDS), default="demo")
    args = parser.parse_args()
    w = WORLDS[args.world]
    root = args.output / args.world
    m = run_demo(root, quick=w["quick"], seed=w["seed"], spec=w["spec"])
    data_dir = root / ("data_quick" if w["quick"] else "data")
    base = demo_config(data_dir, quick=w["quick"], seed=w["seed"])
    rows = {"cross-entropy (the demo's stage 2)": {
        **_test_scores(root / "stage2" / "model", base, root / "features", root / "eval_xe", data_dir),
        "seconds": m["seconds"]["stage2"]}}
    for name, extra in PHASES.items():
        tag = "sc_clip" if extra else "sc_cider"
        cfg = demo_config(data_dir, quick=w["quick"], seed=w["seed"], overrides=SCST + extra)
        t = time.perf_counter()
        model = train(cfg, root / "features", root / tag, init_from=root / "stage2" / "model")
        seconds = time.perf_counter() - t
        steps = [json.loads(x) for x in (root / tag / "log.jsonl").read_text().splitlines()]
        steps = [r for r in steps if "reward_s" in r]
        step_s = np.array([r["data_s"] + r["compute_s"] for r in steps])
        reward_s = np.array([r["reward_s"] for r in steps])
        rows[name] = {**_test_scores(model, base, root / "features", root / f"eval_{tag}", data_dir),
                      "seconds": seconds, "reward_share": float(reward_s.sum() / step_s.sum()),
                      "reward_ms": float(1000 * reward_s.mean()), "step_ms": float(1000 * step_s.mean())}
        first, last = steps[: len(steps) // 5 or 1], steps[-(len(steps) // 5 or 1):]
        rows[name]["sample_reward_first_last"] = [round(float(np.mean([r["reward"] for r in first])), 3),
                                                   round(float(np.mean([r["reward"] for r in last])), 3)]
        print(json.dumps({name: rows[name]}))
    print(f"world: {args.world}, test videos: {m['test_videos']}")
    print("| phase | test CIDEr | BLEU-4 | colour | shape | motion | held-out c / s / m | phase s | "
          "sample reward first -> last fifth | reward ms / step ms (share) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        h = r["held_out"]
        share = (f"{r['reward_ms']:.1f} / {r['step_ms']:.0f} ({100 * r['reward_share']:.1f}%)"
                 if "reward_share" in r else "-")
        trend = " -> ".join(f"{v:.3f}" for v in r["sample_reward_first_last"]) if "sample_reward_first_last" in r else "-"
        print(f"| {name} | {r['CIDEr']:.3f} | {r['BLEU-4']:.3f} | {r['colour']:.3f} | {r['shape']:.3f} | "
              f"{r['motion']:.3f} | {_f(h.get('colour'))} / {_f(h.get('shape'))} / {_f(h.get('motion'))} | "
              f"{r['seconds']:.0f} | {trend} | {share} |")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
