"""``vcap demo``: the toolkit's real job, end to end, on a CPU in minutes.

Generates the procedural video-caption dataset (``caption.demo_data``), then runs every stage as a
user would: stage 1 (a tiny CLIP trained from scratch by contrastive retrieval, ``seqTransf`` head),
retrieval evaluation, feature extraction, stage 2 (1-layer encoder + 3-layer decoder), caption
evaluation on the test split, and attribute accuracy: the share of generated captions that name the
right colour, shape and motion (overall, and on colour-shape pairs never seen in training).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from caption import demo_data
from caption.config import Config
from retrieval_pretrain.config import load_config

# The demo's configuration, one-to-one with configs/tiny_demo.yaml (a test keeps the two equal).
DEMO_CONFIG: dict[str, Any] = {
    "data": {"format": "jsonl"},
    # Stage 1 samples its training frames from the clips decoded once into memory (215 MB): the
    # decoder no longer competes with training for the 2 cores (0.27 vs 0.30 s per step).
    "video": {"num_frames": 4, "train_sampling": "tsn", "eval_sampling": "uniform", "cache_frames": 16},
    "clip": {
        "model": "tiny-resnet",
        "pretrained": None,
        "custom": {
            "embed_dim": 128,
            # open_clip's ModifiedResNet (a list of layers): learns shapes from scratch far faster
            # than a ViT of the same cost (BENCHMARKS.md, "the tiny demo model").
            "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 32, "image_size": 64},
            # One text layer: short template captions need no depth, and the shallower tower learns
            # faster (test t2v R@1 0.62 vs 0.48 with 3 layers after 600 equal steps; BENCHMARKS.md).
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 1},
        },
    },
    "pretrain": {"head": "seqTransf", "head_layers": 2, "head_input_norm": True, "max_words": 16,
                 "batch_size": 32, "epochs": 40, "lr": 1e-3, "clip_lr": 1e-3, "weight_decay": 0.05,
                 "warmup_ratio": 0.05, "save_every": 0, "eval_batch_size": 32,
                 # The from-scratch token embedding stays at its random init: trained, its 49,408 rows
                 # (a few hundred of them used) made learning far slower (test R@1 0.60 vs 0.82 and motion
                 # of the nearest canonical caption 0.49 vs 0.98 after 800 steps; BENCHMARKS.md).
                 "freeze": ["clip.token_embedding"]},
    "caption": {"hidden_size": 128, "num_heads": 4, "ffn_size": 256, "encoder_layers": 1, "decoder_layers": 3,
                "dropout": 0.1, "max_frames": 16, "max_length": 40, "vocab_size": 400, "batch_size": 64,
                "epochs": 10, "lr": 3e-3, "warmup_ratio": 0.05, "label_smoothing": 0.1, "val_max_videos": 0,
                # val loss, not val CIDEr: 42 val videos make CIDEr jump 0.2 between epochs (BENCHMARKS.md)
                "select_by": "loss", "save_every": 0, "eval_batch_size": 64},
    "decode": {"num_beams": 5, "max_new_tokens": 38, "batch_size": 64},
    "run": {"num_workers": 2, "log_every": 10, "mixed_precision": "no", "device": "cpu"},
}

# --quick: the same model on the smaller data set (quick_spec), shorter training; every stage runs.
QUICK_OVERRIDES = ["pretrain.epochs=22", "caption.epochs=8"]


def demo_config(data_dir: Path, quick: bool = False, seed: int = 0) -> Config:
    """The demo's config pointed at a generated dataset in ``data_dir``."""
    overrides = [f"data.annotations={data_dir / 'annotations.jsonl'}", f"data.videos={data_dir}",
                 f"run.seed={seed}"] + (QUICK_OVERRIDES if quick else [])
    tmp = _to_yaml_file(DEMO_CONFIG, data_dir / ".demo_config.yaml")
    return load_config(Config, tmp, overrides)


def _to_yaml_file(raw: dict[str, Any], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _stage(name: str) -> float:
    print(f"\n=== {name} ===", file=sys.stderr)
    return time.perf_counter()


def run_demo(output: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the whole pipeline in ``output``; prints examples, returns (and prints last) the metrics."""
    from caption.evaluate import evaluate
    from caption.train import train as train_captioner
    from retrieval_pretrain.evaluate import evaluate_retrieval
    from retrieval_pretrain.extract import extract_features
    from retrieval_pretrain.train import train as pretrain

    t_start = time.perf_counter()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = _stage("1/6 generating the demo dataset (cached)")
    spec = demo_data.quick_spec() if quick else demo_data.DemoSpec()
    spec.seed = seed
    data_dir = output / ("data_quick" if quick else "data")
    demo_data.generate_dataset(data_dir, spec)
    cfg = demo_config(data_dir, quick=quick, seed=seed)
    timings["data"] = time.perf_counter() - t

    # Runs start fresh each time so two runs with one seed give the same numbers.
    for sub in ("stage1", "features", "stage2", "eval_retrieval", "eval_caption"):
        shutil.rmtree(output / sub, ignore_errors=True)

    t = _stage("2/6 stage 1: tiny CLIP video-text model, contrastive retrieval")
    stage1 = pretrain(cfg, output / "stage1")
    timings["stage1"] = time.perf_counter() - t

    t = _stage("3/6 retrieval evaluation (test split)")
    retrieval = evaluate_retrieval(stage1, cfg, split="test", dsl=True, output=output / "eval_retrieval")
    timings["eval_retrieval"] = time.perf_counter() - t

    t = _stage("4/6 feature extraction (every video once)")
    extract_features(stage1, cfg, output / "features", batch_size=16)
    timings["extract"] = time.perf_counter() - t

    t = _stage("5/6 stage 2: 1-layer encoder + 3-layer decoder caption model")
    stage2 = train_captioner(cfg, output / "features", output / "stage2")
    timings["stage2"] = time.perf_counter() - t

    t = _stage("6/6 captioning and scoring the test split")
    scores = evaluate(stage2, cfg, features=output / "features", split="test", output=output / "eval_caption")
    timings["eval_caption"] = time.perf_counter() - t

    predictions = json.loads((output / "eval_caption" / "predictions.json").read_text())
    attributes = demo_data.load_attributes(data_dir)
    accuracy = demo_data.attribute_accuracy(predictions, attributes)
    _print_examples(predictions, cfg, attributes)

    n_test = retrieval["videos"]
    metrics = {
        "retrieval": {k: retrieval[k] for k in ("t2v_R@1", "t2v_R@5", "v2t_R@1", "v2t_R@5", "dsl_t2v_R@1")},
        "caption": {k: scores[k] for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in scores},
        "attributes": accuracy,
        "chance": {"t2v_R@1": round(1 / n_test, 4), "t2v_R@5": round(min(1.0, 5 / n_test), 4),
                   "colour": round(1 / len(demo_data.COLOURS), 4), "shape": round(1 / len(demo_data.SHAPES), 4),
                   "motion": round(1 / len(demo_data.MOTIONS), 4)},
        "test_videos": n_test,
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t_start, 1)},
        "quick": quick,
        "seed": seed,
    }
    if not all(math.isfinite(v) for part in ("retrieval", "caption") for v in metrics[part].values()):
        print("warning: some metrics are not finite", file=sys.stderr)
    from retrieval_pretrain.runtime import atomic_write_json

    atomic_write_json(output / "metrics.json", metrics)
    print(f"\nDemo finished in {metrics['seconds']['total']:.0f} s; everything is in {output}/", file=sys.stderr)
    print(json.dumps(metrics))
    return metrics


def _print_examples(predictions: dict[str, str], cfg: Config, attributes: dict[str, dict[str, str]], n: int = 8) -> None:
    from retrieval_pretrain.annotations import load_annotations

    entries = {e.video_id: e for e in load_annotations(cfg.data).split("test")}
    print("\nSome test videos (generated caption | a reference):")
    for vid in sorted(predictions)[:n]:
        ref = entries[vid].captions[0] if vid in entries else "?"
        held = " [held-out pair]" if demo_data.is_held_out(attributes.get(vid, {})) else ""
        print(f"  {Path(vid).name}{held}\n    generated: {predictions[vid]}\n    reference: {ref}")
