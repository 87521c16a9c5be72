"""What every ``vcap`` command reads from its arguments and how it prints its result.

A command reads its config from ``--config FILE.yaml`` plus the trailing ``key=value`` overrides
(``config``), which also sets the process's video decoder (``video.backend``) and says which on
stderr; ``vcap caption`` takes only the overrides that apply to it (``caption_config``). A command
that computes metrics prints them as one JSON object on the last line of stdout (``print_json``;
under a multi-process launch only the main process prints); a command over many videos prints one
line per video or one JSON object, and its failures on stderr (``per_video_output``). Progress and
logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from caption.config import Config, load
from retrieval_pretrain.foundation.errors import ConfigError, VideoReadError
from retrieval_pretrain.foundation.run_log import main_process
from retrieval_pretrain.reading.decoding.choice import set_backend

# What 'vcap caption' takes as overrides: its model folder says how frames are sampled, so only how
# they are decoded applies.
CAPTION_SETTINGS = ("video.backend",)
DEFAULT_LINE = "video decoder: decord (video.backend=auto: decord first where it installs)"


def config(args: argparse.Namespace) -> Config:
    """The command's config: ``--config`` (the defaults when none is given) and the overrides. Its
    ``video.backend`` becomes this process's decoder (inherited by DataLoader workers through the
    environment, ``decoding.choice``); which one is said on stderr, once per launch, unless it is the
    default (decord, where it installs): every error stays one line."""
    cfg = load(args.config, args.overrides)
    line = set_backend(cfg.video.backend)
    if main_process() and line != DEFAULT_LINE:  # said when it is not the default (decord where it installs)
        print(line, file=sys.stderr)
    return cfg


def overrides_among_videos(args: argparse.Namespace, command: str) -> None:
    """``vcap caption A.mp4 video.backend=pyav``: an override after the videos is taken by argparse
    for one; move each dotted ``key=value`` that is no existing path to the overrides."""
    keyed = [v for v in args.videos if re.match(r"^[A-Za-z_]+(\.[A-Za-z_]+)+=", v) and not os.path.exists(v)]
    args.videos = [v for v in args.videos if v not in keyed]
    args.overrides = [*keyed, *args.overrides]
    if not args.videos:
        raise ConfigError(f"vcap {command}: no video or folder given (only key=value overrides)")


def caption_config(args: argparse.Namespace) -> Config:
    """``vcap caption``'s overrides, refused unless they apply to it (``CAPTION_SETTINGS``)."""
    overrides_among_videos(args, "caption")
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        if key not in CAPTION_SETTINGS:
            raise ConfigError(f"vcap caption: {key} does not apply here: the model folder says how frames are sampled "
                              f"and captions decoded (use --beam for the beam); settings that apply: "
                              f"{', '.join(CAPTION_SETTINGS)}")
    return config(args)


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
