"""Label fine-tuning on the demo world (ActionCLIP's recipe, base-to-novel as Open-VCLIP measures it):
the demo's caption-trained stage-1 model fine-tuned on the *motion labels* of 4 motions through
prompt templates, then scored on the test clips of those base motions and, zero-shot, of the 3
novel motions it never saw as labels. KL loss (clips sharing a label are positives) against
InfoNCE (they are negatives of each other).

    vcap demo --output demo_out
    python -m benchmarks.labels_demo --model demo_out/stage1/model --data demo_out/data --epochs 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.modeling.model_folder import from_pretrained
from vcap_toolkit.jobs.recognition import evaluate_classification

PHRASE = {"still": "staying still", "grow": "growing", "shrink": "shrinking"}
NOVEL = ("down", "shrink", "still")


def _label(motion: str) -> str:
    return PHRASE.get(motion, f"moving {motion}")


def _write(data: Path, out: Path) -> list[str]:
    rows = [json.loads(x) for x in (data / "annotations.jsonl").read_text().splitlines()]
    (out / "labels.jsonl").write_text("".join(json.dumps({"video": r["video"], "label": _label(r["attributes"]["motion"]),
                                                          "split": r["split"]}) + "\n" for r in rows))
    (out / "novel.txt").write_text("".join(_label(m) + "\n" for m in NOVEL))
    return ["data.format=labels", f"data.annotations={out / 'labels.jsonl'}", f"data.videos={data}",
            f"data.novel_labels={out / 'novel.txt'}", "run.num_workers=2"]


def _score(model: Path, overrides: list[str]) -> dict:
    cfg = load(CONFIG_PATH, overrides)
    net, spec = from_pretrained(model, device=torch.device("cpu"))
    m = evaluate_classification(net, spec, cfg, split="test")
    return {"base": m["base"]["top1"], "novel": m["novel"]["top1"], "hm": m["harmonic_mean"], "all": m["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    from retrieval_pretrain.stage1.train import train

    with tempfile.TemporaryDirectory() as tmp:
        overrides = _write(args.data, Path(tmp))
        results = {"caption-trained, no labels": _score(args.model, overrides)}
        for loss in ("kl", "infonce"):
            cfg = load(CONFIG_PATH, overrides + [f"pretrain.loss={loss}", f"pretrain.epochs={args.epochs}",
                                                 f"pretrain.init_from={args.model}", "pretrain.save_every=0"])
            tuned = train(cfg, Path(tmp) / f"run_{loss}")
            results[f"fine-tuned on base labels, {loss}"] = _score(tuned, overrides)
    print(f"test clips; base labels: 4 motions, novel: {', '.join(NOVEL)} (never labels in training)")
    for name, r in results.items():
        print(f"{name:<36} base {r['base']:.3f}  novel {r['novel']:.3f}  HM {r['hm']:.3f}  all-7 top-1 {r['all']:.3f}")


if __name__ == "__main__":
    main()
