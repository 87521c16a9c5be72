"""What this machine can do, for checking settings against it before any work: the CPUs this
process may use (the default number of DataLoader workers is capped by it) and its memory (a setting
that scales memory - frames per video, a frame cache - is refused when the estimate would take more
than half of it), and how its C library hands out memory (``keep_freed_memory``, for ``vcap demo``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

from retrieval_pretrain.foundation.errors import ConfigError


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it, else the count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(wanted: int) -> int:
    """A default number of loader worker processes: ``wanted``, at most the CPUs available (more
    only compete for the same cores, and torch warns about it). A value the user gives is kept."""
    return max(0, min(wanted, available_cpus()))


def memory_bytes() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_memory(need: int, what: str, lower: str = "", settings: dict[str, int] | None = None) -> None:
    """``ConfigError`` when ``need`` bytes (``what`` says what takes them, naming the setting) exceed
    half of this machine's memory.

    Args:
        lower: what to change, in words (after the advice ``settings`` gives, if any).
        settings: the settings ``need`` grows with in proportion (name -> value now): the message
            names each that can be lowered and the largest value of it that fits on its own
            (``lower video.num_frames to at most 96 (now 100000)``); one already at 1 is left out.
    """
    ram = memory_bytes()
    budget = ram // 2
    if need <= budget:
        return
    advice = [f"{name} to at most {value * budget // need} (now {value})"
              for name, value in (settings or {}).items() if value > 1 and value * budget // need >= 1]
    if settings and not advice:
        advice_text = f"even 1 for {' and '.join(settings)} takes too much"
    else:
        advice_text = "lower " + " or ".join(advice) if advice else ""
    said = "; ".join(t for t in (advice_text, lower) if t)
    raise ConfigError(f"{what} take up to {need / 1e9:.1f} GB, more than half of this machine's "
                      f"{ram / 1e9:.1f} GB" + (f"; {said}" if said else ""))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to serve blocks below ``mmap_threshold`` from its heap and to keep up to
    ``trim_threshold`` bytes of freed heap for reuse, instead of mapping each large block afresh and
    handing it back when freed. A training step allocates and frees the same megabytes of activations
    every step; with glibc's defaults many of them are new mappings, each page faulted in and zeroed
    again (2 million minor page faults in one ``vcap demo``). Changes where memory comes from, never a
    value computed. True where it was applied (Linux with glibc); elsewhere nothing happens."""
    if not (0 <= mmap_threshold < 2**31 and 0 <= trim_threshold < 2**31):  # mallopt takes C ints
        raise ValueError(f"malloc thresholds must be 0 to 2**31 - 1 bytes, got {mmap_threshold} and {trim_threshold}")
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def release_freed_memory() -> None:
    """Hand the freed memory glibc's malloc keeps back to the system (``malloc_trim``): between the
    stages of a run under ``keep_freed_memory``, where one stage's freed heap would otherwise stay
    resident under the next stage's own (the demo's peak 2.1 -> 3.1 GB without it, measured).
    Elsewhere nothing happens."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


def _glibc(function: str) -> Any:
    """``function`` of the C library where it is glibc on Linux, else None."""
    name = ctypes.util.find_library("c") if sys.platform == "linux" else None
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):  # not glibc (musl has no mallopt to speak of)
        return None
