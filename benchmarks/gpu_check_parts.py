"""The parts of ``benchmarks.gpu_check``: the processes that run ``vcap``'s commands, and what is read
back from them (their logs, reports and weights).

Every figure comes from the toolkit's own code run as a user runs it: ``vcap pretrain``, ``extract``,
``train``, ``caption``, ``index`` and ``search`` through ``vcap_toolkit.cli.main.main`` (the console
script's entry point) in a child process, and queries through ``ServeModels.search`` (what ``vcap
serve`` does per query). The child imports torch and the commands' modules before it starts timing,
so no figure includes import time, and it records each command's peak memory:
``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set (``VmHWM``) on a CPU.

    python -m benchmarks.gpu_check_parts RESULTS.json PLAN.json   # the child; gpu_check starts it
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.run_log import read_log
from vcap_toolkit.cli.main import main as vcap_main
from vcap_toolkit.web.models import ServeModels

ROOT = Path(__file__).resolve().parents[1]
VCAP = Path(sys.executable).with_name("vcap")  # the installed console script (pip install -e .)
# What vcap's commands import when they start (deferred there so `vcap --help` stays fast): the
# child imports them before timing anything.
WARM = ("retrieval_pretrain.stage1.train", "retrieval_pretrain.stage1.extract", "caption.train", "caption.pipeline",
        "vcap_toolkit.jobs.search")
GRACE_S = 60  # after Ctrl-C, how long a command may take to stop before it is killed
# On a GPU a resumed run is compared with the uninterrupted one to this share of the resumed
# step's own update (||w_resumed - w_straight|| / ||w_straight(step 2) - w_straight(step 1)||):
# a lost random, optimizer or scheduler state redoes the step differently (a share near 1), while
# GPU kernels whose sums run in another order (atomics, bf16) differ by far less.
CUDA_TOLERANCE = 1e-2


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every process the check starts: ``OMP_WAIT_POLICY=PASSIVE`` before torch
    loads (``vcap`` sets it itself, too late once the child has imported torch), the repository
    on the path (``benchmarks`` is not installed)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": path, **extra}


def vcap_command() -> list[str]:
    """How to run ``vcap``: the installed script, else its module (a checkout used in place)."""
    return [str(VCAP)] if VCAP.is_file() else [sys.executable, "-m", "vcap_toolkit.cli.main"]


# --- The child: vcap commands (and queries) one after another, each timed, with its peak memory ---


def _reset_peak(cuda: bool) -> None:
    if cuda:
        torch.cuda.init()  # the command would start CUDA anyway; its allocator's peak is counted from here
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM, the peak resident set
            Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(cuda: bool) -> float:
    """Peak memory since ``_reset_peak``, MiB: CUDA allocations on a GPU, this process's RSS on a CPU."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the process's peak so far


def _run_vcap(argv: list[str], cuda: bool) -> dict[str, Any]:
    """One ``vcap`` command through its entry point: exit code, seconds, peak memory and its last
    stdout line (the JSON report of a command that has one)."""
    out, error = io.StringIO(), None
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            rc = vcap_main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside the command's own handling
        rc = 130
    except Exception as e:  # a bug in the toolkit: recorded with its traceback, the next command still runs
        rc, error = 1, f"{type(e).__name__}: {e}"
        traceback.print_exc()
    seconds = time.perf_counter() - t0
    sys.stdout.write(out.getvalue())
    lines = [x for x in out.getvalue().splitlines() if x.strip()]
    return {"argv": argv, "rc": rc, "seconds": seconds, "last_line": lines[-1] if lines else "", "error": error}


def _run_queries(step: dict[str, Any]) -> dict[str, Any]:
    """Queries per second as ``vcap serve`` answers them: models and index loaded once, then
    ``ServeModels.search`` per query (one warm-up query first, not timed)."""
    models = ServeModels.load(step["caption_model"], index=step["index"], device=step["device"])
    models.search(step["queries"][0], step["top"])
    t0 = time.perf_counter()
    found: list[Any] = []
    for query in step["queries"]:
        found, _ = models.search(query, step["top"])
    return {"rc": 0, "seconds": time.perf_counter() - t0, "queries": len(step["queries"]), "results": len(found)}


def child(argv: list[str]) -> int:
    """``RESULTS.json PLAN.json``: run the plan's steps in order, writing the results after each; stop
    after a step that was interrupted (the parent's Ctrl-C when a budget is spent)."""
    # Ctrl-C is how the parent stops a command; a process started in the background by a shell
    # inherits SIGINT ignored, and Python then leaves it so: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results_path, plan_path = Path(argv[0]), Path(argv[1])
    plan = json.loads(plan_path.read_text())
    for name in WARM:
        importlib.import_module(name)
    cuda = plan["device"] == "cuda"
    results: dict[str, Any] = {}
    for step in plan["steps"]:
        _reset_peak(cuda)
        if "queries" in step:
            try:
                result = _run_queries(step)
            except Exception as e:  # as in _run_vcap: recorded, traceback in the part's output.log
                result = {"rc": 1, "error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
        else:
            result = _run_vcap(step["argv"], cuda)
        results[step["name"]] = {**result, "peak_mem_mb": _peak_mb(cuda)}
        write_json(results_path, results)
        if result["rc"] == 130:
            break
    return 0


# --- The parent's side: start a child, stop it when a budget is spent ---


@dataclass
class ChildRun:
    """What a child did: ``results`` per step (see ``child``), wall seconds, and how it ended:
    ``finished``, ``enough`` (stopped with Ctrl-C: the part had what it needed), ``budget``
    (stopped with Ctrl-C: its time was spent) or ``killed`` (it did not stop after Ctrl-C)."""

    results: dict[str, Any]
    seconds: float
    ended: str


def run_child(plan: dict[str, Any], folder: Path, budget_s: float,
              enough: Callable[[], bool] | None = None) -> ChildRun:
    """Run ``plan`` (``{"device", "steps"}``) in a child process; its output goes to
    ``folder/output.log``. Ctrl-C (SIGINT, as a user stops a command) when ``enough()`` says so or
    ``budget_s`` is spent; killed if it has not stopped ``GRACE_S`` later."""
    folder.mkdir(parents=True, exist_ok=True)
    plan_path, results_path = folder / "plan.json", folder / "results.json"
    write_json(plan_path, plan)
    results_path.unlink(missing_ok=True)
    t0, ended = time.monotonic(), "finished"
    with open(folder / "output.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check_parts", str(results_path), str(plan_path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env())
        while proc.poll() is None:
            spent = time.monotonic() - t0 > budget_s
            if spent or (enough is not None and enough()):
                ended = "budget" if spent else "enough"
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    ended = "killed"
                break
            time.sleep(0.2)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    return ChildRun(results, time.monotonic() - t0, ended)


def fresh(folder: Path) -> Path:
    """``folder``, emptied: a part's runs start anew (a run folder belongs to one run)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def logged_steps(log: Path) -> int:
    """Lines in a run's ``log.jsonl`` so far (each training step is one with ``run.log_every=1``)."""
    try:
        return len(log.read_bytes().splitlines())
    except OSError:
        return 0


def step_rates(log: Path, batch: int) -> dict[str, float]:
    """From a run's log (read by the toolkit's reader): steps logged, and over the measured steps -
    every step but the first of each epoch (the first also waits for the loader's workers to start,
    the run's first for CUDA's kernels to load) - steps/s, videos/s (``batch`` per step), the share of
    step time spent waiting for data and videos/s of compute alone (forward, backward, optimizer);
    ``epoch_start_wait_s``: the mean wait for data of the first step of the later epochs (the loader's
    workers start again each epoch)."""
    records, _ = read_log(log) if log.is_file() else ([], [])
    steps = [r for _, r in records if "data_s" in r and "compute_s" in r]
    firsts = [i for i in range(len(steps)) if i == 0 or steps[i].get("epoch") != steps[i - 1].get("epoch")]
    measured = [r for i, r in enumerate(steps) if i not in firsts]
    data = sum(r["data_s"] for r in measured)
    compute = sum(r["compute_s"] for r in measured)
    out = {"steps": len(steps), "measured_steps": len(measured)}
    if measured and compute > 0:
        out.update(steps_per_s=len(measured) / (data + compute), videos_per_s=batch * len(measured) / (data + compute),
                   data_wait_share=data / (data + compute), compute_videos_per_s=batch * len(measured) / compute)
    if len(firsts) > 1:
        out["epoch_start_wait_s"] = sum(steps[i]["data_s"] for i in firsts[1:]) / (len(firsts) - 1)
    return out


def last_json(result: dict[str, Any]) -> dict[str, Any]:
    """A command's report: the JSON object on the last line of its stdout ({} when there is none)."""
    try:
        obj = json.loads(result.get("last_line") or "{}")
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def outcome(result: dict[str, Any]) -> tuple[bool, str]:
    """Whether a child's step ran and exited 0, and a line saying how it ended."""
    if not result:
        return False, "did not run (the part's budget was spent, or the process died: see its output.log)"
    return result["rc"] == 0, f"exit {result['rc']} after {result.get('seconds', 0):.1f} s" + (
        f", {result['error']}" if result.get("error") else "")


# --- Kill and resume: 2 steps straight against 1 step, SIGKILL, --resume, 1 step ---


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*vcap_command(), *argv], stdout=f, stderr=subprocess.STDOUT, env=env)


def _wait(proc: subprocess.Popen, deadline: float, what: str) -> None:
    try:
        rc = proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not finish within its budget") from None
    if rc != 0:
        raise RuntimeError(f"{what} ended with exit code {rc}")


def kill_and_resume(argv: list[str], folder: Path, cpu: bool, budget_s: float) -> tuple[Path, Path]:
    """``vcap pretrain`` (``argv``, 2 steps, a checkpoint after each) into ``folder/straight`` and,
    side by side, into ``folder/killed``, which is SIGKILLed as soon as its ``step_1`` checkpoint is
    complete and then resumed with ``--resume``. One thread each on a CPU (bit-identity needs the
    same thread count in every run). Returns the two run folders."""
    env = child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1") if cpu else child_env()
    straight, killed = folder / "straight", folder / "killed"
    deadline = time.monotonic() + budget_s
    a = _start([*argv, "--output", str(straight)], folder / "straight.log", env)
    b = _start([*argv, "--output", str(killed)], folder / "killed.log", env)
    try:
        while not (killed / "checkpoints" / "step_1" / "trainer_state.json").is_file():
            if b.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the run to kill ended or ran out of time before its first checkpoint "
                                   f"(see {folder / 'killed.log'})")
            time.sleep(0.002)
        b.send_signal(signal.SIGKILL)
        b.wait()
        if (killed / "model").exists():
            raise RuntimeError("the run to kill finished before the kill landed; nothing was resumed")
        c = _start([*argv, "--output", str(killed), "--resume"], folder / "resumed.log", env)
        _wait(c, deadline, f"the resumed run (see {folder / 'resumed.log'})")
        _wait(a, deadline, f"the uninterrupted run (see {folder / 'straight.log'})")
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    return straight, killed


def weight_difference(straight: Path, resumed: Path) -> dict[str, Any]:
    """How far the resumed run's final weights are from the uninterrupted run's: bit-identical or
    not, tensors that differ, the largest difference and the difference relative to the step the
    resumed run redid (step 1 -> 2 of the uninterrupted run, from its checkpoints)."""
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(resumed / "model" / "model.safetensors")
    before = load_file(straight / "checkpoints" / "step_1" / "model.safetensors")
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return {"bit_identical": False, "relative_difference": math.inf, "max_abs_difference": math.inf,
                "tensors_differing": len(a.keys() ^ b.keys()) or len(a)}
    diff = step = 0.0
    differing, largest = 0, 0.0
    for k in a:
        if not torch.equal(a[k], b[k]):
            differing += 1
            d = a[k].double() - b[k].double()
            diff += float((d * d).sum())
            largest = max(largest, float(d.abs().max()))
        if k in before and a[k].is_floating_point():
            s = a[k].double() - before[k].double()
            step += float((s * s).sum())
    relative = 0.0 if diff == 0 else (math.sqrt(diff / step) if step > 0 else math.inf)
    return {"bit_identical": differing == 0, "relative_difference": relative, "max_abs_difference": largest,
            "tensors_differing": differing, "tensors": len(a)}


# --- The report: gpu_check.json and the table ---


def describe_device(device: str) -> dict[str, Any]:
    """The machine: device name, torch, CUDA and cuDNN versions, the CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"device": device, "name": cpu, "cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}")
    return info


class Report:
    """``gpu_check.json`` as it fills: figures (each positive and finite when measured), the parts'
    details, the checks. Written after every part with ``finished`` false until the end."""

    def __init__(self, plan: Any, out: Path):
        self.out = out
        self.data: dict[str, Any] = {"finished": False, "passed": False, "machine": describe_device(plan.device),
                                     "settings": asdict(plan), "figures": {}, "parts": {}, "checks": {},
                                     "seconds_per_part": {}}

    def add(self, part: str, details: dict[str, Any], figures: dict[str, Any], passed: bool, detail: str) -> None:
        """A part's details and figures, and its check: passed only when each figure is positive and finite."""
        self.data["parts"][part] = details
        self.data["figures"].update({f"{part}.{k}": v for k, v in figures.items()})
        bad = [k for k, v in figures.items() if not positive(v)]
        self.check(part, passed and not bad, detail + (f"; not measured: {', '.join(bad)}" if bad else ""))

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.data["checks"][name] = {"passed": bool(passed), "detail": detail}

    def write(self) -> None:
        write_json(self.out / "gpu_check.json", self.data)


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# part: (the figure that is its rate, its unit)
RATES = {"vit_b32": ("fwd_bwd_videos_per_s", "videos/s (fwd+bwd)"), "extract": ("videos_per_s", "videos/s"),
         "stage2": ("steps_per_s", "steps/s"), "caption": ("videos_per_s", "videos/s"),
         "index": ("videos_per_s", "videos/s"), "search": ("queries_per_s", "queries/s")}


def print_table(report: Report) -> None:
    """The figures and checks, one row per part."""
    d, fig = report.data, report.data["figures"]
    m = d["machine"]
    print(f"{m['name']} | torch {m['torch']} | CUDA {m['cuda']} | precision {d['settings']['precision']} | "
          f"{d['seconds']:.0f} s")
    print(f"{'part':<20} {'rate':>28} {'data wait':>10} {'peak MiB':>10}  check")
    for part, check in d["checks"].items():
        key, unit = RATES.get(part, ("videos_per_s", "videos/s") if part.startswith("stage1") else ("", ""))
        rate = fig.get(f"{part}.{key}")
        wait = fig.get(f"{part}.data_wait_share")
        peak = fig.get(f"{part}.peak_mem_mb")
        print(f"{part:<20} {f'{rate:.2f} {unit}' if positive(rate) else '':>28} "
              f"{f'{100 * wait:.1f} %' if positive(wait) else '':>10} {f'{peak:.0f}' if positive(peak) else '':>10}  "
              f"{'PASS' if check['passed'] else 'FAIL'}  {check['detail']}")
    print(f"peak memory {fig.get('peak_mem_mb') or 0:.0f} MiB; {'all checks passed' if d['passed'] else 'FAILED'}; "
          f"everything in {report.out / 'gpu_check.json'}")


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
