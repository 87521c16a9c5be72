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
