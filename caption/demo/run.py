"""``vcap demo``: the toolkit's real job, end to end, on a CPU in minutes.

Generates the procedural video-caption dataset (``caption.demo.data``), then runs every stage as a
user would: stage 1 (a tiny CLIP trained from scratch by contrastive retrieval, ``seqTransf`` head),
retrieval evaluation, feature extraction, stage 2 (1-layer encoder + 3-layer decoder), caption
evaluation on the test split, and attribute accuracy: the share of generated captions that name the
right colour, shape and motion (overall, and on colour-shape pairs never seen in training).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from caption.config import Config, load
from caption.demo import data as demo_data
from caption.metrics import meteor_session
from retrieval_pretrain.foundation.atomic import write_file, write_json
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.machine import release_freed_memory
from retrieval_pretrain.foundation.ownership import FolderKind, claim_folder, holds_only
from retrieval_pretrain.reading.annotations import load_annotations

# The demo's configuration: the YAML shipped beside this module (package data), the one source.
CONFIG_PATH = Path(__file__).resolve().with_name("tiny_demo.yaml")

# --quick: the same model on the smaller data set (quick_spec), shorter training; every stage runs.
QUICK_OVERRIDES = ["pretrain.epochs=22", "caption.epochs=8"]

# How the demo runs on this machine, beside the model's settings in the YAML (which the test suite's
# tiny runs also start from, in fp32): bf16 autocast where the CPU has native bf16 (AVX512-BF16,
# AMX), fp32 elsewhere; stage 1's frames channels-last (oneDNN's faster convolution layout); no
# DataLoader workers - stage 1 samples frames already in memory, stage 2 memory-mapped features, so
# workers (started again every epoch) only take the 2 cores' time, and the numbers are the same
# without them. BENCHMARKS.md, "Demo speed (issue 29)".
SPEED_OVERRIDES = ["run.mixed_precision=auto", "run.channels_last=true", "run.num_workers=0"]


# What the demo writes in its folder; an unrecorded folder holding only these, with a generated
# dataset's manifest, is a demo folder an earlier release wrote.
DEMO_NAMES = frozenset({"data", "data_quick", "stage1", "features", "stage2", "eval_retrieval", "eval_caption",
                        "metrics.json", "examples.txt"})
DEMO = FolderKind("vcap demo folder", "vcap demo", lambda folder: holds_only(folder, DEMO_NAMES) and any(
    (folder / data / demo_data.MANIFEST).is_file() for data in ("data", "data_quick")))


# an escaped backslash (kept as it is, so that a literal backslash before "ud83d" is not read as an
# escape), or a JSON surrogate pair
_SURROGATE_PAIR = re.compile(r"\\\\|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _yaml_string(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that reads back verbatim. An ASCII JSON string is one
    (line breaks YAML knows beyond JSON's, U+0085 and U+2028, stay escaped), but for a character
    beyond U+FFFF (an emoji) it writes two surrogates, which YAML decodes one by one: those pairs
    become YAML's eight-hex-digit ``\\U`` escapes."""
    def astral(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group(0)
        high, low = int(m.group(1), 16), int(m.group(2), 16)
        return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"

    return _SURROGATE_PAIR.sub(astral, json.dumps(text))


def demo_config(data_dir: Path, quick: bool = False, seed: int = 0, overrides: list[str] | None = None) -> Config:
    """The demo's config (``CONFIG_PATH``) pointed at a generated dataset in ``data_dir``, plus the
    user's ``overrides`` (applied last)."""
    # the paths as YAML double-quoted strings: '#x' or 'a: b' in a folder name would otherwise read as
    # a comment or a mapping, and the refusal would name this internal override
    own = [f"data.annotations={_yaml_string(str(data_dir / 'annotations.jsonl'))}",
           f"data.videos={_yaml_string(str(data_dir))}",
           f"run.seed={seed}", *SPEED_OVERRIDES] + (QUICK_OVERRIDES if quick else [])
    users = list(overrides or [])
    # a key the user sets is theirs alone: a refusal of their value then quotes only their override
    theirs = {o.split("=", 1)[0].strip() for o in users}
    return load(CONFIG_PATH, [o for o in own if o.split("=", 1)[0] not in theirs] + users)


def _stage(name: str) -> float:
    print(f"\n=== {name} ===", file=sys.stderr)
    return time.perf_counter()


def run_demo(output: Path, quick: bool = False, seed: int = 0, overrides: list[str] | None = None,
             spec: demo_data.DemoSpec | None = None, before_torch: Callable[[Config], Any] = id) -> dict[str, Any]:
    """Run the whole pipeline in ``output``; returns the metrics (also in ``output/metrics.json``; the
    CLI prints them last) - and generated captions beside references in ``output/examples.txt``.
    ``overrides``: changes to the demo's config. ``spec``: another generated world (benchmarks), its
    ``seed`` replaced by ``seed``. ``before_torch(config)``: after the claim, before torch loads (``id``: no-op)."""
    checked = demo_config(Path(output) / "data", quick=quick, seed=seed, overrides=overrides)  # refused first
    output = claim_folder(Path(output), DEMO)  # it removes its stage folders below: only in a demo folder
    _fresh_start(output)
    # METEOR's Java scorer (the last stage's) starts now: its seconds of start-up run in their own
    # process while this one loads torch (one core) and generates the data, not after stage 2.
    with meteor_session(start=True):
        before_torch(checked)
        return _pipeline(output, quick, seed, overrides, spec)


def _pipeline(output: Path, quick: bool, seed: int, overrides: list[str] | None,
              spec: demo_data.DemoSpec | None) -> dict[str, Any]:
    """``run_demo``'s stages, in a claimed and emptied ``output``."""
    # The stages load torch (seconds); caption.demo is often imported for CONFIG_PATH or the data alone.
    from caption.evaluate import evaluate  # deferred: torch stage
    from caption.train import train as train_captioner  # deferred: torch stage
    from retrieval_pretrain.stage1.evaluate import evaluate_retrieval  # deferred: torch stage
    from retrieval_pretrain.stage1.extract import extract_features  # deferred: torch stage
    from retrieval_pretrain.stage1.train import train as pretrain  # deferred: torch stage

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t = _stage("1/6 generating the demo dataset (cached)")
    spec = dataclasses.replace(spec or (demo_data.quick_spec() if quick else demo_data.DemoSpec()), seed=seed)
    data_dir = output / ("data_quick" if quick else "data")
    demo_data.generate_dataset(data_dir, spec)
    cfg = demo_config(data_dir, quick=quick, seed=seed, overrides=overrides)
    timings["data"] = time.perf_counter() - t


    t = _stage("2/6 stage 1: tiny CLIP video-text model, contrastive retrieval")
    decoded: list = []  # stage 1's decoded training clips, which extraction reads instead of decoding again
    stage1 = pretrain(cfg, output / "stage1", keep_frames=decoded)
    release_freed_memory()  # what stage 1 freed (vcap demo's malloc keeps it otherwise)
    timings["stage1"] = time.perf_counter() - t

    t = _stage("3/6 retrieval evaluation (test split)")
    retrieval = evaluate_retrieval(stage1, cfg, split="test", dsl=True, output=output / "eval_retrieval")
    timings["eval_retrieval"] = time.perf_counter() - t

    t = _stage("4/6 feature extraction (every video once)")
    extract_features(stage1, cfg, output / "features", batch_size=16, frames=decoded[0] if decoded else None)
    decoded.clear()  # 215 MB
    release_freed_memory()
    timings["extract"] = time.perf_counter() - t

    t = _stage("5/6 stage 2: 1-layer encoder + 3-layer decoder caption model")
    stage2 = train_captioner(cfg, output / "features", output / "stage2")
    timings["stage2"] = time.perf_counter() - t

    t = _stage("6/6 captioning and scoring the test split")
    scores = evaluate(stage2, cfg, features=output / "features", split="test", output=output / "eval_caption")
    timings["eval_caption"] = time.perf_counter() - t

    predictions = json.loads((output / "eval_caption" / "predictions.json").read_text())
    attributes = demo_data.load_attributes(data_dir)
    metrics = _summary(retrieval, scores, demo_data.attribute_accuracy(predictions, attributes), timings,
                       time.perf_counter() - t_start) | {"quick": quick, "seed": seed}
    if not all(math.isfinite(v) for part in ("retrieval", "caption") for v in metrics[part].values()):
        print("warning: some metrics are not finite", file=sys.stderr)
    write_json(output / "metrics.json", metrics)
    write_file(output / "examples.txt", examples_text(predictions, cfg, attributes) + "\n")
    print(f"\nDemo finished in {metrics['seconds']['total']:.0f} s; everything is in {output}/", file=sys.stderr)
    return metrics


def _fresh_start(output: Path) -> None:
    """Remove what an earlier run in this (claimed) demo folder wrote, but the cached data: runs start
    fresh so two runs with one seed give the same numbers, and an earlier run's metrics never sit
    beside a run that was stopped half-way. A symbolic link among its names is refused: the demo would
    write its data (or runs) into wherever it points (a hostile test's find)."""
    linked = [name for name in sorted(DEMO_NAMES) if (output / name).is_symlink()]
    if linked:
        raise ConfigError(f"{output / linked[0]} is a symbolic link (to {os.readlink(output / linked[0])}); "
                          "vcap demo writes only inside its own folder: remove the link, or give another --output")
    for sub in ("stage1", "features", "stage2", "eval_retrieval", "eval_caption"):
        shutil.rmtree(output / sub, ignore_errors=True)
    for name in ("metrics.json", "examples.txt"):
        (output / name).unlink(missing_ok=True)


def _summary(retrieval: dict[str, Any], scores: dict[str, Any], accuracy: dict[str, Any],
             timings: dict[str, float], total: float) -> dict[str, Any]:
    """The demo's metrics: retrieval, caption scores, attribute accuracy, and chance levels."""
    n_test = retrieval["videos"]
    return {
        "retrieval": {k: retrieval[k] for k in ("t2v_R@1", "t2v_R@5", "v2t_R@1", "v2t_R@5", "dsl_t2v_R@1")},
        "caption": {k: scores[k] for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in scores},
        "attributes": accuracy,
        "chance": {"t2v_R@1": round(1 / n_test, 4), "t2v_R@5": round(min(1.0, 5 / n_test), 4),
                   "colour": round(1 / len(demo_data.COLOURS), 4), "shape": round(1 / len(demo_data.SHAPES), 4),
                   "motion": round(1 / len(demo_data.MOTIONS), 4)},
        "test_videos": n_test,
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(total, 1)},
    }


def examples_text(predictions: dict[str, str], cfg: Config, attributes: dict[str, dict[str, str]], n: int = 8) -> str:
    """A few test videos: the generated caption beside a reference."""
    entries = {e.video_id: e for e in load_annotations(cfg.data).split("test")}
    lines = ["Some test videos (generated caption | a reference):"]
    for vid in sorted(predictions)[:n]:
        ref = entries[vid].captions[0] if vid in entries else "?"
        held = " [held-out pair]" if demo_data.is_held_out(attributes.get(vid, {})) else ""
        lines += [f"  {Path(vid).name}{held}", f"    generated: {predictions[vid]}", f"    reference: {ref}"]
    return "\n".join(lines)
