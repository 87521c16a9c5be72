"""What every ``vcap`` command reads from its arguments and how it prints its result.

A command reads its config from ``--config FILE.yaml`` plus the trailing ``key=value`` overrides
(``config``). A command that computes metrics prints them as one JSON object on the last line of
stdout (``print_json``; under a multi-process launch only the main process prints); a command over
many videos prints one line per video or one JSON object, and its failures on stderr
(``per_video_output``). Progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from caption.config import Config, load
from retrieval_pretrain.foundation.errors import VideoReadError
from retrieval_pretrain.foundation.run_log import main_process


def config(args: argparse.Namespace) -> Config:
    """The command's config: ``--config`` (the defaults when none is given) and the overrides."""
    return load(args.config, args.overrides)


def print_json(obj: Any) -> None:
    """The result line on stdout; under a multi-process launch only the main process prints it."""
    if main_process():
        print(json.dumps(obj), flush=True)


def opt_path(value: str | None) -> Path | None:
    """An optional path argument: None when not given."""
    return Path(value) if value else None


def per_video_output(done: dict[str, Any], failed: dict[str, str], verb: str, key: str, as_json: bool,
                     line: Callable[[Any], str]) -> int:
    """What a per-video command prints: the failures on stderr, then ``{key: done, "failed": ...}``
    as JSON or one ``video<TAB>line(result)`` per video; exit 1 when some failed, a video error
    (exit 4) when none could be read."""
    for reason in failed.values():
        print(f"warning: not {verb}: {reason}", file=sys.stderr)
    if as_json:
        print_json({key: done, "failed": failed})
    else:
        for video, result in done.items():
            print(f"{video}\t{line(result)}")
    if failed and not done:
        raise VideoReadError(", ".join(failed), f"none of the {len(failed)} videos could be read (reasons above)")
    return 1 if failed else 0
