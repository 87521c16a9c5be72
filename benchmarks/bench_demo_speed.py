"""Where `vcap demo`'s time goes, and what each speed-up is worth (issue 29).

    python -m benchmarks.bench_demo_speed profile [--steps 15] [--threads 1]
    python -m benchmarks.bench_demo_speed compare [--stage1-epochs 3] [--stage2-epochs 2] [--rounds 2] [--threads 1]
                                                  [NAME=OVERRIDES ...]

``profile``: one stage-1 and one stage-2 training step of the demo's config (caption/demo/tiny_demo.yaml)
taken apart, on synthetic batches of the real shapes (32 videos x 4 frames at 64 px; 64 captions of
40 tokens over 4 frame features): stage 1's image tower forward+backward, text tower, whole step
(the rest: head, loss, clipping, AdamW); stage 2's forward, backward, optimizer. Each is timed in
this process's CPU time (user+sys) and wall time, first as the demo ran before issue 29 (fp32,
contiguous frames) and then as it runs now (the config's ``run.mixed_precision`` and
``run.channels_last``), followed by torch.profiler's top operators of the current stage-1 step.

``compare``: the real ``vcap pretrain`` loop (``--stage1-epochs`` on the full demo data, 35 steps an
epoch) and ``vcap train`` loop (``--stage2-epochs`` over features of a short stage-1 run) under
each configuration: ``NAME=key=value,key=value`` (default: the ladder of issue 29's kept changes,
each adding one to the previous; an item ``env.NAME=value`` sets an environment variable of the
run's process instead, e.g. ``env.OMP_WAIT_POLICY=ACTIVE``; ``malloc=keep`` runs it after
``keep_freed_memory()``, as ``vcap demo`` does). Every run is a process of its own, and
the configurations are interleaved round by round (A B C A B C), so load from other processes falls
on all of them alike; a run's CPU time (user+sys of its process and children) is the
contention-robust figure, its wall time is printed beside it (with ``--threads 2`` on an idle
machine, the wall time is what a user waits: spinning OpenMP threads cost CPU time, not wall
time). Prints a table and, last, a JSON summary with each configuration's ratio against the one
before it, in CPU time and in the wall time of a training step (the logged steps, start-up left out).

Both commands run torch on one thread unless told otherwise: on a machine shared with other jobs
the CPU time of a 2-thread step grew with the load (2-5x, measured), a 1-thread step's stayed
within 15%. BENCHMARKS.md, "Demo speed (issue 29)", lists what this measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.bench_training import split_times  # noqa: E402
from caption.demo import data as demo_data  # noqa: E402
from caption.demo.run import demo_config  # noqa: E402

# issue 29's kept changes, one at a time (the last is caption/demo/tiny_demo.yaml's run section)
LADDER = {
    "before (fp32, 2 workers)": "run.num_workers=2,run.mixed_precision='no',run.channels_last=false",
    "0 workers": "run.num_workers=0,run.mixed_precision='no',run.channels_last=false",
    "+ channels-last": "run.num_workers=0,run.mixed_precision='no',run.channels_last=true",
    "+ bf16 where native": "run.num_workers=0,run.mixed_precision=auto,run.channels_last=true",
    # vcap demo's own wait policy (vcap_toolkit/cli/main.py); only shows with --threads 2
    "+ OpenMP active waits": "run.num_workers=0,run.mixed_precision=auto,run.channels_last=true,"
                             "env.OMP_WAIT_POLICY=ACTIVE",
    "+ spinning ~3 ms": "run.num_workers=0,run.mixed_precision=auto,run.channels_last=true,"
                        "env.OMP_WAIT_POLICY=ACTIVE,env.GOMP_SPINCOUNT=300000",
    # vcap demo's keep_freed_memory (glibc's malloc keeps freed memory for reuse)
    "+ malloc keeps freed memory (now)": "run.num_workers=0,run.mixed_precision=auto,run.channels_last=true,"
                                         "env.OMP_WAIT_POLICY=ACTIVE,env.GOMP_SPINCOUNT=300000,malloc=keep",
}
BEFORE = ["run.mixed_precision='no'", "run.channels_last=false"]


def cpu_seconds() -> float:
    """User+sys CPU time of this process and of its children that have ended."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], Any], steps: int) -> dict[str, float]:
    """Milliseconds of CPU and wall time per call of ``fn`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    c, t = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        fn()
    return {"cpu_ms": round(1000 * (cpu_seconds() - c) / steps, 1),
            "wall_ms": round(1000 * (time.perf_counter() - t) / steps, 1)}


def _stage1_parts(cfg: Any, steps: int) -> tuple[dict[str, dict[str, float]], Callable[[], Any]]:
    from retrieval_pretrain.foundation.accelerate_setup import resolve_precision
    from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer
    from retrieval_pretrain.modeling.parts import build_loss, build_video_text_model, freeze_parameters
    from retrieval_pretrain.stage1.train import _optimizer, channels_last_frames

    torch.manual_seed(0)
    model, tok = build_video_text_model(cfg), build_tokenizer(cfg)
    freeze_parameters(model, cfg.pretrain.freeze)
    loss_fn, opt = build_loss(cfg), _optimizer(model, cfg)
    bf16 = resolve_precision(cfg.run.mixed_precision, cpu=True) == "bf16"
    s, b, t = model.image_size, cfg.pretrain.batch_size, cfg.video.num_frames
    frames = torch.randn(b, t, 3, s, s)  # (B, T, 3, S, S)
    frames = channels_last_frames(frames) if cfg.run.channels_last else frames
    tokens = tok(["a red star moves left on a grey background"] * b)
    model.train()

    def tower() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.clip.visual(frames.flatten(0, 1))
        out.float().sum().backward()
        model.zero_grad()

    def text() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.encode_text(tokens)
        out.float().sum().backward()
        model.zero_grad()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(frames=frames, mask=None, tokens=tokens), tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.pretrain.max_grad_norm)
        opt.step()
        opt.zero_grad()

    return {"image tower fwd+bwd": timed(tower, steps), "text tower fwd+bwd": timed(text, steps),
            "whole step": timed(step, steps)}, step


def _stage2_parts(cfg: Any, steps: int) -> dict[str, dict[str, float]]:
    from decoders.loss import caption_loss
    from decoders.model import CaptionModel, caption_model_config
    from retrieval_pretrain.foundation.accelerate_setup import resolve_precision

    torch.manual_seed(0)
    c = cfg.caption
    model = CaptionModel(caption_model_config(c.model_settings(), 128, pad_token_id=0, bos_token_id=1,
                                              eos_token_id=2, video_tower={}, decode=cfg.decode))
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr)
    bf16 = resolve_precision(cfg.run.mixed_precision, cpu=True) == "bf16"
    feats, mask = torch.randn(c.batch_size, 4, 128), torch.ones(c.batch_size, 4, dtype=torch.bool)
    ids = torch.randint(3, c.vocab_size, (c.batch_size, c.max_length))  # (B, L)
    model.train()
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(frame_features=feats, frame_mask=mask, decoder_input_ids=ids[:, :-1]).logits
            state["loss"] = caption_loss(logits, ids[:, 1:], c.label_smoothing, 0)

    def forward_backward() -> None:
        forward()
        state["loss"].backward()

    def optimizer() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
        opt.step()

    forward_backward()
    return {"forward": timed(forward, steps), "forward+backward": timed(forward_backward, steps),
            "clip + AdamW": timed(optimizer, steps)}


def profile(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    demo_data.generate_dataset(data, demo_data.DemoSpec())
    now = demo_config(data)
    before = demo_config(data, overrides=BEFORE)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "cpu": _cpu_name(),
                              "capability": torch.backends.cpu.get_cpu_capability()}
    for name, cfg in (("before", before), ("now", now)):
        parts, step = _stage1_parts(cfg, args.steps)
        result[f"stage1 {name}"] = parts
        result[f"stage2 {name}"] = _stage2_parts(cfg, args.steps)
        for part, t in {**parts, **result[f"stage2 {name}"]}.items():
            print(f"{name:>7} {part:<22} cpu {t['cpu_ms']:7.1f} ms  wall {t['wall_ms']:7.1f} ms", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    return result


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    """A child process: one stage's training loop under ``args.overrides``; prints its JSON."""
    from caption.train import train as train_captioner
    from retrieval_pretrain.foundation.machine import keep_freed_memory
    from retrieval_pretrain.stage1.train import train as pretrain

    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    cfg = demo_config(Path(args.data), overrides=["run.log_every=1", f"pretrain.epochs={args.epochs}",
                                                  f"caption.epochs={args.epochs}", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        c, t = cpu_seconds(), time.perf_counter()
        if args.stage == 1:
            pretrain(cfg, Path(tmp) / "run")
        else:
            train_captioner(cfg, Path(args.features), Path(tmp) / "run")
        out = {"cpu_s": round(cpu_seconds() - c, 2), "wall_s": round(time.perf_counter() - t, 2),
               **split_times(Path(tmp) / "run" / "log.jsonl")}
    print(json.dumps(out))
    return out


def _child(stage: int, epochs: int, data: Path, features: Path, threads: int, overrides: list[str]) -> dict[str, Any]:
    env = {**os.environ, **dict(o[len("env."):].split("=", 1) for o in overrides if o.startswith("env."))}
    keep = ["--keep-freed-memory"] if "malloc=keep" in overrides else []
    overrides = [o for o in overrides if not o.startswith("env.") and o != "malloc=keep"]
    cmd = [sys.executable, "-m", "benchmarks.bench_demo_speed", "_one", "--stage", str(stage), "--epochs", str(epochs),
           "--data", str(data), "--features", str(features), "--threads", str(threads), *keep, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _features(data: Path, folder: Path) -> Path:
    """Features of a 2-epoch stage-1 model (stage 2's speed does not depend on how good they are)."""
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train as pretrain

    if not (folder / "features" / "meta.json").is_file():
        cfg = demo_config(data, overrides=["pretrain.epochs=2"])
        model = pretrain(cfg, folder / "stage1")
        extract_features(model, cfg, folder / "features", batch_size=16)
    return folder / "features"


def compare(args: argparse.Namespace) -> dict[str, Any]:
    configs = dict(c.split("=", 1) for c in args.configs) if args.configs else LADDER
    data, work = Path(args.data), Path(args.data).parent / "bench_demo_speed_runs"
    demo_data.generate_dataset(data, demo_data.DemoSpec())
    features = _features(data, work)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"stage1": [], "stage2": []} for n in configs}
    for r in range(args.rounds):
        for name, overrides in configs.items():
            ov = [o for o in overrides.split(",") if o]
            for stage, epochs in ((1, args.stage1_epochs), (2, args.stage2_epochs)):
                res = _child(stage, epochs, data, features, args.threads, ov)
                runs[name][f"stage{stage}"].append(res)
                print(f"round {r + 1} {name:<28} stage {stage}: {res['steps'] + 1} steps, cpu {res['cpu_s']:.1f} s, "
                      f"wall {res['wall_s']:.1f} s, {1000 * res['step_s']:.0f} ms a step "
                      "(measured under whatever load the machine had)", flush=True)
    return _summary(runs, args)


def _summary(runs: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {"cpu": _cpu_name(), "torch": torch.__version__, "rounds": args.rounds, "threads": args.threads,
                               "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs, "configs": {}}
    previous: dict[str, float] | None = None
    print(f"\n{'configuration':<28} {'stage-1 cpu s':>14} {'stage-2 cpu s':>14} {'wall s (1+2)':>13} "
          f"{'cpu ratio vs previous (1 / 2)':>30} {'ms a step (1 / 2)':>18} {'step-time ratio (1 / 2)':>24}")
    step_before: dict[str, float] | None = None
    for name, stages in runs.items():
        cpu = {s: min(r["cpu_s"] for r in rs) for s, rs in stages.items()}  # least disturbed run
        wall = {s: min(r["wall_s"] for r in rs) for s, rs in stages.items()}
        step = {s: min(r["step_s"] for r in rs) for s, rs in stages.items()}  # wall time of a logged step
        ratio = {s: round(previous[s] / cpu[s], 2) for s in cpu} if previous else None
        step_ratio = {s: round(step_before[s] / step[s], 2) for s in step} if step_before else None
        summary["configs"][name] = {"cpu_s": cpu, "wall_s": wall, "cpu_ratio_vs_previous": ratio, "step_s": step,
                                    "step_ratio_vs_previous": step_ratio}
        shown = f"{ratio['stage1']:.2f}x / {ratio['stage2']:.2f}x" if ratio else "-"
        shown_step = f"{step_ratio['stage1']:.2f}x / {step_ratio['stage2']:.2f}x" if step_ratio else "-"
        print(f"{name:<28} {cpu['stage1']:14.1f} {cpu['stage2']:14.1f} {wall['stage1'] + wall['stage2']:13.1f} "
              f"{shown:>30} {1000 * step['stage1']:8.0f} / {1000 * step['stage2']:<7.0f} {shown_step:>24}")
        previous, step_before = cpu, step
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    default_data = str(Path(tempfile.gettempdir()) / "vcap_bench_demo" / "data")
    p = sub.add_parser("profile", help="one stage-1 and one stage-2 step, taken apart")
    p.add_argument("--steps", type=int, default=15, help="timed steps of each part")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as compare's)")
    p.add_argument("--data", default=default_data, help="the demo's full data set (generated once, cached)")
    c = sub.add_parser("compare", help="the real training loops under several configurations, interleaved")
    c.add_argument("--stage1-epochs", type=int, default=3)
    c.add_argument("--stage2-epochs", type=int, default=2)
    c.add_argument("--rounds", type=int, default=2, help="each configuration this many times; the least CPU counts")
    c.add_argument("--data", default=default_data, help="the demo's full data set (generated once, cached)")
    c.add_argument("--threads", type=int, default=1,
                   help="torch threads of each run (default 1: on a loaded machine, the CPU time of several "
                        "OpenMP threads grows with the load - they spin at barriers - while one thread's does not)")
    c.add_argument("configs", nargs="*", metavar="NAME=OVERRIDES",
                   help="e.g. 'bf16=run.mixed_precision=bf16,run.num_workers=0' (default: issue 29's ladder)")
    o = sub.add_parser("_one")  # a child process of compare
    o.add_argument("--stage", type=int, choices=(1, 2), required=True)
    o.add_argument("--epochs", type=int, required=True)
    o.add_argument("--data", required=True)
    o.add_argument("--features", required=True)
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--keep-freed-memory", action="store_true", help="glibc's malloc keeps freed memory (vcap demo's)")
    o.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    return {"profile": profile, "compare": compare, "_one": one_run}[args.command](args)


if __name__ == "__main__":
    main()
