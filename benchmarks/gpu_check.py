"""Every stage of the toolkit on a GPU (CUDA, bf16) in one command that fits 8 minutes on one H100,
and on the CPU in a few minutes, so it is known to work before a GPU exists (issue 29).

    python -m benchmarks.gpu_check                                  # CUDA, bf16, workers 0,4,8,16
    python -m benchmarks.gpu_check --device cpu [--quick]           # fp32, workers 0,2

On the demo's generated clips (224 px on a GPU, 64 px on a CPU) with a stage-1 tower of CLIP
ViT-B/32's size, random weights (224 px, 12 frames; on a CPU the demo's tiny tower), each part in a
time budget (a training part is stopped with Ctrl-C once it has its steps or its time is spent):

1. ``vcap pretrain`` per decode-worker count: videos/s and the share of step time spent waiting for
   data (the trainer's own data/compute split in ``log.jsonl``);
2. open_clip's ViT-B-32, ``pretrained=None``, 224 px, 12 frames, a small batch: videos/s of forward +
   backward + optimizer step;
3. kill and resume: 2 steps straight against 1 step, SIGKILL, ``--resume``, 1 step; the weights must be
   bit-identical on a CPU, on a GPU within ``CUDA_TOLERANCE`` of the redone step's update;
4. ``vcap extract`` videos/s, ``vcap train`` (stage 2) steps/s, ``vcap caption`` videos/s, ``vcap index``
   videos/s, one ``vcap search``, and queries/s as ``vcap serve`` answers them;
5. peak memory per part (GPU: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set).

Training is bf16 autocast on CUDA and fp32 on a CPU (``--precision`` changes it). It prints a table and
writes ``DIR/gpu_check.json`` (every figure, device, torch and CUDA versions, settings, pass/fail per
check; each part's commands and output in ``DIR/<part>/``); exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check_parts import (
    CUDA_TOLERANCE,
    Report,
    fresh,
    kill_and_resume,
    last_json,
    logged_steps,
    outcome,
    positive,
    print_table,
    run_child,
    step_rates,
    weight_difference,
)
from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from retrieval_pretrain.foundation.errors import ConfigError, VcapError
from retrieval_pretrain.reading.annotations import load_annotations
from vcap_toolkit.cli.main import one_line

# CLIP ViT-B/32's architecture from open_clip, random weights: the paper's tower at its size.
VIT_B32 = ["clip.model=ViT-B-32", "clip.pretrained=null", "clip.custom=null", "pretrain.head_layers=4",
           "pretrain.max_words=32"]
# Stage 2 at the paper's size (hidden 512, 8 heads, 1 + 3 layers) on a GPU; the demo's on a CPU.
CAPTION_PAPER = ["caption.hidden_size=512", "caption.num_heads=8", "caption.ffn_size=2048", "caption.max_frames=32"]
CUDA_SECONDS = 480  # the whole check must fit 8 minutes on one H100


@dataclass(frozen=True)
class Sizes:
    """How much each part does, and its budget in seconds (``PRESETS``)."""

    data: dict[str, int]  # the demo videos: DemoSpec's num_train, num_val, num_test, frames, size
    sweep_batch: int  # stage 1 per worker count: videos per step, steps wanted, budget
    sweep_steps: int
    sweep_budget_s: float
    vit_batch: int  # the ViT-B/32 part: videos per step, frames per video, steps wanted, budget
    vit_frames: int
    vit_steps: int
    vit_budget_s: float
    resume_batch: int  # kill and resume: 2 steps over 2 x resume_batch videos
    resume_budget_s: float
    infer_batch: int  # videos per batch of extract, caption and index
    stage2_epochs: int
    stage2_batch: int
    caption_videos: int
    queries: int
    pipeline_budget_s: float  # extract, train, caption, index, search together


PRESETS: dict[tuple[str, bool], Sizes] = {  # (device, --quick)
    ("cuda", False): Sizes(dict(num_train=512, num_val=32, num_test=64, frames=32, size=224), sweep_batch=32,
                           sweep_steps=40, sweep_budget_s=40, vit_batch=8, vit_frames=12, vit_steps=20, vit_budget_s=40,
                           resume_batch=8, resume_budget_s=100, infer_batch=32, stage2_epochs=6, stage2_batch=64,
                           caption_videos=64, queries=200, pipeline_budget_s=150),
    ("cuda", True): Sizes(dict(num_train=64, num_val=8, num_test=16, frames=16, size=224), sweep_batch=16,
                          sweep_steps=8, sweep_budget_s=30, vit_batch=4, vit_frames=12, vit_steps=4, vit_budget_s=30,
                          resume_batch=4, resume_budget_s=90, infer_batch=16, stage2_epochs=2, stage2_batch=32,
                          caption_videos=16, queries=20, pipeline_budget_s=120),
    ("cpu", False): Sizes(dict(num_train=96, num_val=8, num_test=16, frames=16, size=64), sweep_batch=16,
                          sweep_steps=16, sweep_budget_s=60, vit_batch=2, vit_frames=12, vit_steps=3, vit_budget_s=120,
                          resume_batch=8, resume_budget_s=120, infer_batch=16, stage2_epochs=2, stage2_batch=32,
                          caption_videos=16, queries=50, pipeline_budget_s=240),
    ("cpu", True): Sizes(dict(num_train=24, num_val=4, num_test=8, frames=8, size=64), sweep_batch=8,
                         sweep_steps=4, sweep_budget_s=40, vit_batch=2, vit_frames=2, vit_steps=2, vit_budget_s=60,
                         resume_batch=4, resume_budget_s=90, infer_batch=8, stage2_epochs=1, stage2_batch=16,
                         caption_videos=8, queries=10, pipeline_budget_s=150),
}


@dataclass
class Plan:
    """What one check runs: the device, precision and worker counts, the tower and caption model,
    and the sizes (``PRESETS`` for the device and ``--quick``)."""

    device: str
    precision: str
    workers: list[int]
    quick: bool
    tower: list[str]  # config overrides making the stage-1 tower (empty: the demo's tiny one)
    stage2: list[str]  # config overrides sizing the caption model (empty: the demo's)
    sizes: Sizes


def _workers(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give decode-worker counts >= 0, comma-separated (e.g. 0,4,8,16)")
    return list(dict.fromkeys(counts))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="BENCHMARKS.md, 'GPU check', says what each figure means.")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where every stage runs (default cuda)")
    p.add_argument("--out", default="gpu_check_out", metavar="DIR",
                   help="working folder: the generated videos (kept for reuse), each part's runs and output.log, "
                   "gpu_check.json (default ./gpu_check_out)")
    p.add_argument("--workers", type=_workers, default=None, metavar="N,N,...",
                   help="decode-worker counts of the stage-1 sweep (default 0,4,8,16 on cuda, 0,2 on cpu)")
    p.add_argument("--precision", choices=["bf16", "no"], default=None,
                   help="training precision, run.mixed_precision (default bf16 on cuda, no = fp32 on cpu)")
    p.add_argument("--quick", action="store_true", help="the smallest settings: every part runs, briefly")
    return p.parse_args(argv)


def plan_for(device: str, quick: bool = False, workers: list[int] | None = None, precision: str | None = None) -> Plan:
    """What runs on ``device`` (cuda or cpu): its preset, default precision, workers, tower and caption model."""
    cuda = device == "cuda"
    return Plan(device=device, precision=precision or ("bf16" if cuda else "no"),
                workers=workers or ([0, 4, 8, 16] if cuda else [0, 2]), quick=quick,
                tower=[*VIT_B32, "video.num_frames=12"] if cuda else [], stage2=CAPTION_PAPER if cuda else [],
                sizes=PRESETS[(device, quick)])


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan for the command line; ``ConfigError`` when it cannot run here."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is usable on this machine (torch.cuda.is_available() is "
                          "False); run with --device cpu")
    return plan_for(args.device, args.quick, args.workers, args.precision)


def _args(plan: Plan, ann: Path, *extra: str, tower: list[str] | None = None) -> list[str]:
    """``--config`` and overrides of a stage: the demo's config on these videos, on the device."""
    return ["--config", str(CONFIG_PATH), f"data.annotations={ann}", f"data.videos={ann.parent}",
            f"run.device={plan.device}", f"run.mixed_precision='{plan.precision}'", "run.log_every=1",
            "video.cache_frames=0", "pretrain.save_every=0", *(plan.tower if tower is None else tower), *extra]


def _entries(ann: Path) -> list[Any]:
    """The annotation entries of a generated folder, read as the toolkit reads them."""
    return load_annotations(load(CONFIG_PATH, [f"data.annotations={ann}", f"data.videos={ann.parent}"]).data).entries


def part_data(plan: Plan, out: Path, report: Report) -> tuple[Path, Path]:
    """The demo's videos (kept between runs): the main set, and the small set of the resume check."""
    s = plan.sizes
    t0, clips = time.perf_counter(), s.data["num_train"] + s.data["num_val"] + s.data["num_test"]
    workers = min(os.cpu_count() or 1, max(1, clips // 64))  # starting a process costs more than 64 small clips
    spec = demo_data.DemoSpec(**s.data, seed=0, captions_per_video=2)
    ann = demo_data.generate_dataset(out / "data", spec, progress=False, workers=workers)
    small = demo_data.DemoSpec(num_train=2 * s.resume_batch, num_val=2, num_test=2, frames=s.data["frames"],
                               size=s.data["size"], seed=1, captions_per_video=2)
    resume_ann = demo_data.generate_dataset(out / "data_resume", small, progress=False, workers=workers)
    report.data["parts"]["data"] = {"seconds": round(time.perf_counter() - t0, 2), "videos": len(_entries(ann)),
                                    "spec": asdict(spec)}
    return ann, resume_ann


def sweep_args(plan: Plan, ann: Path, workers: int) -> list[str]:
    """``vcap pretrain``'s config of the sweep with ``workers`` decode workers (epochs enough for its steps)."""
    s = plan.sizes
    epochs = math.ceil(s.sweep_steps / max(1, s.data["num_train"] // s.sweep_batch)) + 1
    return _args(plan, ann, f"run.num_workers={workers}", f"pretrain.batch_size={s.sweep_batch}",
                 f"pretrain.epochs={epochs}")


def vit_args(plan: Plan, ann: Path) -> list[str]:
    """``vcap pretrain``'s config of the ViT-B/32 part: that tower whatever the device, at a small batch."""
    s = plan.sizes
    epochs = math.ceil(s.vit_steps / max(1, s.data["num_train"] // s.vit_batch)) + 1
    return _args(plan, ann, f"run.num_workers={max(plan.workers)}", f"pretrain.batch_size={s.vit_batch}",
                 f"pretrain.epochs={epochs}", tower=[*VIT_B32, f"video.num_frames={s.vit_frames}"])


def _stage1(plan: Plan, folder: Path, args: list[str], batch: int, steps: int, budget_s: float) -> dict[str, Any]:
    """One ``vcap pretrain`` in a child, stopped once ``steps`` are logged or ``budget_s`` is spent."""
    run, log = folder / "run", folder / "run" / "log.jsonl"
    child = run_child({"device": plan.device, "steps": [{"name": "pretrain", "argv": ["pretrain", *args, "--output",
                                                                                       str(run)]}]},
                      fresh(folder), budget_s, lambda: logged_steps(log) >= steps)
    result = child.results.get("pretrain", {})
    return {**step_rates(log, batch), "ended": child.ended, "seconds": round(child.seconds, 2),
            "rc": result.get("rc"), "error": result.get("error"), "peak_mem_mb": result.get("peak_mem_mb")}


def _stage1_detail(r: dict[str, Any]) -> tuple[bool, str]:
    ok = r["measured_steps"] > 0 and r["rc"] in (0, 130) and r["ended"] != "killed"
    return ok, (f"{r['steps']} steps ({r['measured_steps']} measured), ended: {r['ended']}, exit {r['rc']}"
                + (f", {r['error']}" if r.get("error") else ""))


def part_sweep(plan: Plan, out: Path, ann: Path, report: Report) -> None:
    """Stage 1 once per decode-worker count: videos/s and the share of step time waiting for data."""
    s = plan.sizes
    for w in plan.workers:
        args = sweep_args(plan, ann, w)
        r = _stage1(plan, out / f"stage1_workers_{w}", args, s.sweep_batch, s.sweep_steps, s.sweep_budget_s)
        report.add(f"stage1_workers_{w}", r, {k: r.get(k) for k in ("videos_per_s", "data_wait_share", "peak_mem_mb")},
                   *_stage1_detail(r))
        report.write()


def part_vit(plan: Plan, out: Path, ann: Path, report: Report) -> None:
    """open_clip's ViT-B-32, random weights, 224 px: videos/s of forward + backward + optimizer step."""
    s = plan.sizes
    r = _stage1(plan, out / "vit_b32", vit_args(plan, ann), s.vit_batch, s.vit_steps, s.vit_budget_s)
    r.update(frames=s.vit_frames, batch=s.vit_batch, image_size=224)
    report.add("vit_b32", r, {"fwd_bwd_videos_per_s": r.get("compute_videos_per_s"),
                              "peak_mem_mb": r.get("peak_mem_mb")},
               *_stage1_detail(r))


def resume_args(plan: Plan, ann: Path) -> list[str]:
    """``vcap pretrain``'s config of the resume check: 2 steps in one epoch, a checkpoint after each."""
    return _args(plan, ann, "run.num_workers=0", f"pretrain.batch_size={plan.sizes.resume_batch}", "pretrain.epochs=1",
                 "pretrain.save_every=1")


def part_resume(plan: Plan, out: Path, ann: Path, report: Report) -> Path | None:
    """2 steps straight against 1 step + SIGKILL + ``--resume`` + 1 step; returns the uninterrupted
    run's model (the stage-1 model of the later parts), or None."""
    folder, cpu = fresh(out / "resume"), plan.device == "cpu"
    folder.mkdir(parents=True)
    try:
        straight, killed = kill_and_resume(["pretrain", *resume_args(plan, ann)], folder, cpu,
                                           plan.sizes.resume_budget_s)
        d = weight_difference(straight, killed)
    except RuntimeError as e:
        report.check("resume", False, str(e))
        return folder / "straight" / "model" if (folder / "straight" / "model").is_dir() else None
    rule = "bit-identical" if cpu else f"relative difference <= {CUDA_TOLERANCE:g} of the resumed step's update"
    passed = d["bit_identical"] if cpu else d["relative_difference"] <= CUDA_TOLERANCE
    report.data["parts"]["resume"] = {**d, "rule": rule}
    report.check("resume", passed, f"{'bit-identical' if d['bit_identical'] else 'not bit-identical'}: relative "
                 f"difference {d['relative_difference']:.3g}, largest {d['max_abs_difference']:.3g}, "
                 f"{d['tensors_differing']} tensors differ; the rule: {rule}")
    return straight / "model"


def pipeline_steps(plan: Plan, ann: Path, model: Path, folder: Path, test: list[Any]) -> list[dict[str, Any]]:
    """extract -> train (stage 2) -> caption -> index -> search -> queries, as one user would run them."""
    s, dev, workers = plan.sizes, plan.device, str(max(plan.workers))
    feats, run2, idx = folder / "features", folder / "stage2", folder / "index"
    queries = [c for e in test for c in e.captions]
    queries = (queries * (s.queries // max(1, len(queries)) + 1))[: s.queries]
    return [
        {"name": "extract", "argv": ["extract", "--model", str(model), "--output", str(feats), "--batch-size",
                                     str(s.infer_batch), *_args(plan, ann, f"run.num_workers={workers}")]},
        {"name": "stage2", "argv": ["train", "--features", str(feats), "--output", str(run2),
                                    *_args(plan, ann, f"run.num_workers={min(2, max(plan.workers))}",
                                           f"caption.epochs={s.stage2_epochs}", f"caption.batch_size={s.stage2_batch}",
                                           *plan.stage2)]},
        {"name": "caption", "argv": ["caption", *[str(e.path) for e in test], "--model", str(run2 / "model"),
                                     "--batch-size", str(s.infer_batch), "--json", "--device", dev]},
        {"name": "index", "argv": ["index", str(ann.parent / "videos"), "--model", str(model), "--output", str(idx),
                                   "--batch-size", str(s.infer_batch), "--num-workers", workers, "--device", dev]},
        {"name": "search", "argv": ["search", str(idx), queries[0], "--json", "--device", dev]},
        {"name": "queries", "queries": queries, "caption_model": str(run2 / "model"), "index": str(idx),
         "device": dev, "top": 10},
    ]


def part_pipeline(plan: Plan, out: Path, ann: Path, model: Path | None, report: Report) -> None:
    """``vcap extract``, ``train``, ``caption``, ``index`` and ``search`` with the stage-1 model, in one child."""
    if model is None:
        for part in ("extract", "stage2", "caption", "index", "search"):
            report.check(part, False, "not run: no stage-1 model (the resume part failed before its model was written)")
        return
    folder, s = fresh(out / "pipeline"), plan.sizes
    test = [e for e in _entries(ann) if e.split == "test"][: s.caption_videos]
    steps = pipeline_steps(plan, ann, model, folder, test)
    child = run_child({"device": plan.device, "steps": steps}, folder, s.pipeline_budget_s)
    r = {k: child.results.get(k, {}) for k in ("extract", "stage2", "caption", "index", "search", "queries")}
    extract, index = last_json(r["extract"]), last_json(r["index"])
    report.add("extract", extract, {"videos_per_s": extract.get("videos_per_s"), "peak_mem_mb":
                                    r["extract"].get("peak_mem_mb")}, *outcome(r["extract"]))
    rates = step_rates(folder / "stage2" / "log.jsonl", s.stage2_batch)
    ok, detail = outcome(r["stage2"])
    report.add("stage2", rates, {"steps_per_s": rates.get("steps_per_s"),
                                 "peak_mem_mb": r["stage2"].get("peak_mem_mb")},
               ok, f"{detail}; {rates['steps']} steps ({rates['measured_steps']} measured)")
    captions = last_json(r["caption"]).get("captions", {})
    ok, detail = outcome(r["caption"])
    report.add("caption", {"videos": len(captions), "seconds": r["caption"].get("seconds")},
               {"videos_per_s": len(captions) / r["caption"]["seconds"] if captions else None,
                "peak_mem_mb": r["caption"].get("peak_mem_mb")},
               ok and len(captions) == len(test), f"{detail}; {len(captions)} of {len(test)} videos captioned")
    report.add("index", index, {"videos_per_s": index["indexed"] / index["seconds"] if index.get("seconds") else None,
                                "peak_mem_mb": r["index"].get("peak_mem_mb")}, *outcome(r["index"]))
    (ok, detail), (ok_q, detail_q) = outcome(r["search"]), outcome(r["queries"])
    q = r["queries"]
    report.add("search", {"command": r["search"], "queries": q},
               {"queries_per_s": q["queries"] / q["seconds"] if ok_q and q.get("seconds") else None,
                "command_s": r["search"].get("seconds"), "peak_mem_mb": q.get("peak_mem_mb")},
               ok and ok_q, f"vcap search: {detail}; {q.get('queries', 0)} queries: {detail_q}")
    report.data["parts"]["pipeline"] = {"seconds": round(child.seconds, 2), "ended": child.ended}


def _guarded(report: Report, name: str, fn: Any, *args: Any) -> Any:
    """Run a part; an exception (a bug, a CUDA failure) fails its check and the other parts still run."""
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        return fn(*args)
    except Exception as e:
        traceback.print_exc()
        report.check(name, False, f"{type(e).__name__}: {e}")
        return None
    finally:
        report.data["seconds_per_part"][name] = round(time.perf_counter() - t0, 1)
        report.write()


def run_check(plan: Plan, out: Path) -> Report:
    """Every part in turn; returns the finished report (also in ``out/gpu_check.json``)."""
    report, t0 = Report(plan, out), time.perf_counter()
    data = _guarded(report, "data", part_data, plan, out, report)
    if data is not None:
        ann, resume_ann = data
        _guarded(report, "stage1", part_sweep, plan, out, ann, report)
        _guarded(report, "vit_b32", part_vit, plan, out, ann, report)
        model = _guarded(report, "resume", part_resume, plan, out, resume_ann, report)
        _guarded(report, "pipeline", part_pipeline, plan, out, ann, model, report)
    d = report.data
    d["seconds"] = round(time.perf_counter() - t0, 1)
    peaks = [v for k, v in d["figures"].items() if k.endswith(".peak_mem_mb") and positive(v)]
    d["figures"]["peak_mem_mb"] = max(peaks, default=None)
    d["peak_mem_kind"] = "torch.cuda.max_memory_allocated" if plan.device == "cuda" else "peak resident set (VmHWM)"
    if plan.device == "cuda" and not plan.quick:
        report.check("time", d["seconds"] <= CUDA_SECONDS, f"{d['seconds']:.0f} s of at most {CUDA_SECONDS} s")
    d["passed"] = all(c["passed"] for c in d["checks"].values())
    d["finished"] = True
    report.write()
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 when every check passed, 1 when one failed, 2 when the check cannot run here."""
    args = parse_args(argv)
    out = Path(args.out)
    try:
        plan = make_plan(args)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot make this folder ({e.strerror or e})") from None
    except VcapError as e:
        print(one_line(e), file=sys.stderr)
        return e.exit_code
    try:
        report = run_check(plan, out)
    except KeyboardInterrupt:  # the children got the same Ctrl-C; what was measured is in gpu_check.json
        print(f"gpu_check: interrupted; {out / 'gpu_check.json'} holds the parts done (finished: false)",
              file=sys.stderr)
        return 130
    print_table(report)
    return 0 if report.data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
