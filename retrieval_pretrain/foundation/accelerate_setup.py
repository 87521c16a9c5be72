"""Where and how precisely the work runs: the Accelerator of a training job (device, mixed
precision, gradient accumulation, seed), learning-rate schedules sized for Accelerate's per-process
stepping, and the device of an inference job."""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed

from retrieval_pretrain.foundation.errors import ConfigError


def pick_device(device: str = "auto", key: str = "run.device") -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; otherwise the device named (``cpu``,
    ``cuda``, ``cuda:N``, ``mps``). A name torch does not know, or a GPU this machine does not have, is a
    ``ConfigError`` naming ``key`` (the config key or flag the value came from)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{key}={device!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        _check_cuda(dev, key)
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key}={device!r}: Apple's MPS backend is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"{key}={device!r}: only auto, cpu, cuda, cuda:N and mps are supported")
    return dev


def _check_cuda(dev: torch.device, key: str) -> None:
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}={dev}: no CUDA GPU is usable on this machine (torch.cuda.is_available() "
                          "is False); use auto or cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={dev}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def _on_cpu(device: str) -> bool:
    _warn_single_cpu_launch()
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _warn_single_cpu_launch() -> None:
    """``accelerate launch --cpu --num_processes N`` starts ONE process unless it is given an
    mpirun host file (Accelerate's CPU launcher); say so instead of quietly training on one."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        print("warning: 'accelerate launch --cpu' started a single process (Accelerate launches several CPU "
              "processes only through mpirun); for N CPU processes use 'accelerate launch --multi_gpu "
              "--num_processes N' on a machine without GPUs (run.device=cpu), or torchrun", file=sys.stderr)


def process_state(device: str) -> PartialState:
    """This process's place in the launch (index, count, device), for jobs without an optimizer
    (feature extraction). On a machine without a GPU, Accelerate joins the processes of a launch
    only when told it runs on the CPU."""
    return PartialState(cpu=_on_cpu(device))


def native_bf16(cpu: bool) -> bool:
    """Whether this machine computes in bf16 natively: on the CPU, AVX512-BF16 or AMX instructions
    (elsewhere bf16 is converted in software); on CUDA, a GPU that supports bf16."""
    if not cpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(mixed_precision: str, cpu: bool) -> str:
    """``run.mixed_precision`` as Accelerate takes it: ``auto`` becomes ``bf16`` where the hardware
    has native bf16 (``native_bf16``) and ``no`` (fp32) elsewhere; other values are kept."""
    if mixed_precision != "auto":
        return mixed_precision
    chosen = "bf16" if native_bf16(cpu) else "no"
    print(f"run.mixed_precision=auto: {'bf16 autocast' if chosen == 'bf16' else 'fp32'} on this "
          f"{'CPU' if cpu else 'GPU'}", file=sys.stderr)
    return chosen


def make_accelerator(mixed_precision: str, grad_accum: int, device: str, seed: int) -> Accelerator:
    """An Accelerator for the run's precision/device; ``device='cpu'`` forces the CPU."""
    if mixed_precision not in ("no", "fp16", "bf16", "auto"):
        raise ConfigError(f"run.mixed_precision must be no, fp16, bf16 or auto, got {mixed_precision!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device={device!r}: training takes auto, cpu or cuda (choose GPUs with "
                          "CUDA_VISIBLE_DEVICES, or several with accelerate launch)")
    if device == "cuda":
        _check_cuda(torch.device("cuda"), "run.device")
    cpu = _on_cpu(device)
    mixed_precision = resolve_precision(mixed_precision, cpu)
    if cpu and mixed_precision == "fp16":
        print("warning: run.mixed_precision=fp16 needs a GPU; training in fp32 on the CPU "
              "(run.mixed_precision=bf16 works on CPUs)", file=sys.stderr)
        mixed_precision = "no"
    # One process may run several jobs (the demo, tests, a notebook), each with its own precision
    # and accumulation. Accelerate keeps both in process-wide singletons that refuse a second
    # precision and silently keep the first accumulation count; reset them (not the distributed
    # state, PartialState, which the launcher set up once).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu)
    set_seed(seed)
    return accelerator


def scheduler_length(optimizer_steps: int, warmup_ratio: float, accelerator: Accelerator) -> tuple[int, int]:
    """``(warmup, total)`` for a learning-rate schedule that will be passed to ``accelerator.prepare``.

    Accelerate's wrapped scheduler steps once *per process* at every optimizer step (it assumes
    the schedule was sized for the single-process batch count), so a schedule of
    ``optimizer_steps`` real steps must be ``optimizer_steps * num_processes`` long; otherwise
    warm-up and decay would end after 1/num_processes of training on several GPUs.
    """
    total = max(1, optimizer_steps) * accelerator.num_processes
    return int(warmup_ratio * total), total




def mean_over_processes(accelerator: Accelerator, value: torch.Tensor) -> float:
    """The mean of a scalar over all processes (every process must call it): the logged loss of a
    step is the global batch's, not the main process's share. One process: the value itself."""
    if accelerator.num_processes == 1:
        return float(value.detach())
    return float(accelerator.reduce(value.detach().float().reshape(1), reduction="mean"))
