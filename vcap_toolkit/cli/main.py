"""``vcap``: the toolkit's one command line, with a subcommand per job - and its edge.

Every subcommand that reads a config takes ``--config FILE.yaml`` plus trailing ``key=value``
overrides of any config field (dotted keys, YAML values). Library code returns results and raises
the toolkit's error types (``retrieval_pretrain.foundation.errors``); only the command line prints:
progress and logs go to stderr, a command that computes metrics prints them as one JSON object on
the last line of stdout (the same object its ``metrics.json`` holds; ``command_io``), and this
module turns each toolkit error into one line on stderr naming the file or key, with the error
type's exit code (README.md lists them). Any other exception is a bug and keeps its traceback.

The commands: the pipeline's stages in ``stage_commands``, the jobs on your own videos (classify,
index, search, serve) in ``library_commands``, and here the small tools that read and write files
(``score``, ``interpolate``, ``report``, ``demo``).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import vcap_toolkit
from caption.caption_files import score_files
from caption.config import Config
from caption.demo import CONFIG_PATH, run_demo
from retrieval_pretrain.foundation.errors import ConfigError, StorageError, VcapError
from retrieval_pretrain.foundation.hub import parse_model_id, resolve_model_folder
from retrieval_pretrain.foundation.machine import keep_freed_memory
from vcap_toolkit.cli import library_commands, push_command, stage_commands
from vcap_toolkit.cli.command_io import print_json
from vcap_toolkit.cli.parser import build_parser
from vcap_toolkit.reports.html_page import check_report_path
from vcap_toolkit.reports.run_curves import run_report


def _score(args: argparse.Namespace) -> int:
    """``vcap score``: captions against references; dense (challenge-format) predictions against one
    or more reference files (``caption.caption_files.score_files`` tells them apart)."""
    print_json(score_files(args.predictions, args.references, tokenize=args.tokenize, output=args.output))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from retrieval_pretrain.stage1.interpolate import (  # deferred: keeps vcap --help fast (torch, open_clip)
        check_alpha,
        interpolate_folders,
    )

    check_alpha(args.alpha)  # before any model is read
    print_json(interpolate_folders(args.base, Path(args.finetuned), args.alpha, Path(args.output)))
    return 0


def _report(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not run.is_dir():
        raise ConfigError(f"{run} is not a folder; give a run folder (vcap pretrain / vcap train --output)")
    where = run_report(run, check_report_path(args.output if args.output else run / "report.html"))
    print(where)
    return 0


def _demo_wait_policy(cfg: Config) -> None:
    """``vcap demo`` runs torch with no DataLoader workers beside it (caption.demo.run), where
    spinning OpenMP threads are what is fast: a training step 1.5x (stage 1) and 1.6x (stage 2)
    faster than with passive waits on an idle 2-core Xeon, 2.4x slower in stage 2 beside one busy
    process (BENCHMARKS.md, "Demo speed"). Active waits unless the user set OMP_WAIT_POLICY or the
    config gives loader workers (they would compete with the spinning); called by ``run_demo`` once
    the config is valid and the folder claimed, before torch loads (it reads the variable once). The
    user set it when it was set before ``vcap_toolkit`` loaded, or holds anything but the ``PASSIVE``
    that loading put there (library use setting it later; exactly ``PASSIVE`` set later cannot be told
    from the default, and is taken for it)."""
    now = os.environ.get("OMP_WAIT_POLICY")
    chosen = vcap_toolkit.USER_OMP_WAIT_POLICY is not None or now not in (None, vcap_toolkit.DEFAULT_OMP_WAIT_POLICY)
    if cfg.run.num_workers == 0 and not chosen and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
        # spinning for ~3 ms (300,000 spins) instead of minutes: as fast within a step, but between
        # steps and while frames are decoded the spinning thread sleeps instead of taking the core the
        # work needs (stage 1's frame cache filled 1.5x faster; BENCHMARKS.md) - unless the user set it
        os.environ.setdefault("GOMP_SPINCOUNT", DEMO_SPINCOUNT)
        print("vcap demo: OpenMP threads wait actively, fastest on an otherwise idle machine (on a busy one, "
              "OMP_WAIT_POLICY=PASSIVE vcap demo)", file=sys.stderr)


DEMO_SPINCOUNT = "300000"


def _demo_settings(cfg: Config) -> None:
    """What ``vcap demo`` sets before torch loads: its OpenMP waits (``_demo_wait_policy``) and glibc's
    malloc keeping freed memory for reuse (``keep_freed_memory``: the same numbers; stage 1's steps
    and loader faster, BENCHMARKS.md "Demo speed"). The allocator setting lasts as long as the process
    (glibc has no way back to its adaptive thresholds); it changes no value computed."""
    _demo_wait_policy(cfg)
    keep_freed_memory()


def _demo(args: argparse.Namespace) -> int:
    if args.config_path:
        given = [*args.overrides[:1], *(["--quick"] if args.quick else []),
                 *(["--seed"] if args.seed is not None else []), *(["--output"] if args.output is not None else [])]
        if given:
            raise ConfigError(f"vcap demo --config-path prints where the demo's config is and runs nothing; "
                              f"drop '{given[0]}' (settings go to a run: vcap demo --seed 1 key=value)")
        print(CONFIG_PATH)
        return 0
    output = Path(args.output if args.output is not None else "vcap_demo")
    check_output(str(output))  # the default too (a given one is checked with every command's)
    before = {name: os.environ.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    try:
        metrics = run_demo(output, quick=args.quick, seed=args.seed or 0, overrides=args.overrides,
                           before_torch=_demo_settings)
    finally:  # OpenMP read them when torch loaded; later calls in this process (library use) get theirs back
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    print((output / "examples.txt").read_text(), end="")
    print_json(metrics)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **stage_commands.COMMANDS, **library_commands.COMMANDS,
    "score": _score, "interpolate": _interpolate, "report": _report, "demo": _demo, "push": push_command.push,
}
# The options that name a model folder; each may also be a Hub id org/name[@revision] (foundation.hub).
MODEL_OPTIONS = ("model", "init_from", "caption_model", "retrieval_model", "finetuned")


def resolve_model_options(args: argparse.Namespace) -> None:
    """Replace each Hub id among the model options by its cached snapshot folder, before the command
    runs: the jobs then record (meta.json, run.json) and check a real folder, as for a local one."""
    for name in MODEL_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str) and parse_model_id(value) is not None:
            setattr(args, name, str(resolve_model_folder(value, "--" + name.replace("_", "-"))))


_STORAGE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "the file grew past the size this system allows", errno.EROFS: "the file system is read-only",
            errno.EACCES: "no permission", errno.EPERM: "the operation is not permitted here",
            errno.ENOTDIR: "a file stands where a folder should be", errno.EISDIR: "a folder stands where a file should be",
            errno.EEXIST: "something else already has that name"}


def check_output(value: str) -> None:
    """``--output`` must be a folder or a name a folder can be made at: refused before any work
    when it, or a folder above it, is an existing file (the job would fail only when writing)."""
    path = Path(value)
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "is" if p == path else f"lies under {p}, which is"
                raise ConfigError(f"--output {value} {where} a file, not a folder; give a folder")
            return


def storage_error(e: OSError) -> StorageError | None:
    """A ``StorageError`` naming the file for the file-system errors a user fixes (full disk, quota,
    read-only or forbidden folder); None for any other OSError (a bug: keep its traceback)."""
    if e.errno not in _STORAGE:
        return None
    where = e.filename or "an output file"
    return StorageError(f"{where}: {e.strerror or e} ({_STORAGE[e.errno]}). Every output is written to a temporary "
                        "name and renamed when complete, so what is in place is whole; free space or give a writable "
                        "folder, then rerun (training: --resume continues from the last checkpoint)")


def one_line(err: VcapError) -> str:
    """The error as one line: its kind and its message (which names the file or key)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return f"vcap: {err.kind}: {text}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides allowed anywhere after the command (argparse
    alone takes them only as one run: ``--config C a=1 --probe b=2`` would refuse ``b=2``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


_interrupted = False


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: remembered, then raised as usual. A KeyboardInterrupt can land inside a finaliser
    (decord's ``VideoReader.__del__``), where Python prints it and carries on; the command then
    still ends with 130, not 0."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _run_command(args: argparse.Namespace) -> int:
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _on_interrupt)
    code = COMMANDS[args.command](args)
    if _interrupted:
        print("vcap: interrupted (Ctrl-C); a library caught the interruption and the command ran on - its "
              "outputs are complete, but exiting 130 as asked", file=sys.stderr)
        return 130
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcap`` console script; returns the exit code."""
    # OpenMP threads that spin while waiting run up to 50x slower on a CPU shared with the
    # DataLoader's decoding workers (measured: 16 ms vs 0.3 ms for a 960x128 @ 128x128 matmul on
    # 2 cores). Passive waiting costs nothing when the CPU is free. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = _parse(argv)
    try:
        if getattr(args, "output", None) and args.command != "report":  # vcap report --output is a file
            check_output(args.output)
        resolve_model_options(args)
        return _run_command(args)
    except VcapError as e:
        print(one_line(e), file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system refused a write (or a read): name the file, no traceback
        err = storage_error(e)
        if err is None:
            raise
        print(one_line(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("vcap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
