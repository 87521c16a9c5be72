"""What this machine can do, for checking settings against it before any work: the CPUs this
process may use (the default number of DataLoader workers is capped by it) and its memory (a setting
that scales memory - frames per video, a frame cache - is refused when the estimate would take more
than half of it)."""

from __future__ import annotations

import os

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


def check_fits_memory(need: int, what: str, lower: str) -> None:
    """``ConfigError`` when ``need`` bytes (``what`` says what takes them, naming the setting) exceed
    half of this machine's memory; ``lower`` says what to change."""
    ram = memory_bytes()
    if need > ram // 2:
        raise ConfigError(f"{what} take up to {need / 1e9:.1f} GB, more than half of this machine's "
                          f"{ram / 1e9:.1f} GB; {lower}")
