"""``vcap``: the toolkit's one command line, with a subcommand per job - and its edge.

Every subcommand that reads a config takes ``--config FILE.yaml`` plus trailing ``key=value``
overrides of any config field (dotted keys, YAML values). Library code returns results and raises
the toolkit's error types (``retrieval_pretrain.errors``); this module alone prints: progress and
logs go to stderr, a command that computes metrics prints them as one JSON object on the last line
of stdout (the same object its ``metrics.json`` holds), and each toolkit error becomes one line on
stderr naming the file or key, with the error type's exit code (README.md lists them). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from caption.cli_parser import build_parser
from caption.config import Config, load
from retrieval_pretrain.errors import VcapError, VideoReadError


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _data(args: argparse.Namespace) -> int:
    from retrieval_pretrain.data_check import check_dataset, report_text

    summary = check_dataset(_config(args).data, probe=args.probe)
    print(report_text(summary), file=sys.stderr)
    _print_json(summary)
    return 0 if summary["ok"] else 1


def _pretrain(args: argparse.Namespace) -> int:
    cfg = _config(args)  # config errors before the slow imports
    from retrieval_pretrain.train import train

    output = Path(args.output)
    train(cfg, output, resume=args.resume)
    skipped = json.loads((output / "skipped.json").read_text())
    failed = json.loads((output / "failures.json").read_text())
    return 1 if failed or skipped["missing_videos"] or skipped["annotation_problems"] else 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from retrieval_pretrain.evaluate import evaluate_retrieval

    metrics = evaluate_retrieval(Path(args.model), cfg, split=args.split, dsl=args.dsl, output=_opt_path(args.output))
    _print_json(metrics)
    return 1 if metrics["unreadable_videos"] else 0


def _extract(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from retrieval_pretrain.extract import extract_features

    report = extract_features(Path(args.model), cfg, Path(args.output), splits=args.split,
                              batch_size=args.batch_size)
    _print_json(report)
    return 0 if report["failed"] == 0 else 1


def _train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from caption.train import train

    output = Path(args.output)
    train(cfg, Path(args.features), output, resume=args.resume, init_from=_opt_path(args.init_from))
    skipped = json.loads((output / "skipped.json").read_text())
    return 1 if skipped["no_features"] or skipped["annotation_problems"] else 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from caption.evaluate import evaluate

    metrics = evaluate(Path(args.model), cfg, features=_opt_path(args.features), split=args.split,
                       output=_opt_path(args.output))
    _print_json(metrics)
    return 1 if metrics["not_captioned"] else 0


def _caption(args: argparse.Namespace) -> int:
    from caption.pipeline import CaptionPipeline, expand_videos

    paths = expand_videos(args.videos)  # VideoReadError when nothing is left to caption
    pipe = CaptionPipeline.from_pretrained(Path(args.model), device=args.device)
    results = pipe.caption(paths, num_beams=args.beam, batch_size=args.batch_size)
    captions = {p: r for p, r in results.items() if isinstance(r, str)}
    failed = {p: str(r) for p, r in results.items() if not isinstance(r, str)}
    for reason in failed.values():
        print(f"warning: not captioned: {reason}", file=sys.stderr)
    if args.json:
        _print_json({"captions": captions, "failed": failed})
    else:
        for p, c in captions.items():
            print(f"{p}\t{c}")
    if failed and not captions:
        raise VideoReadError(", ".join(failed), f"none of the {len(failed)} videos could be read (reasons above)")
    return 1 if failed else 0


def _score(args: argparse.Namespace) -> int:
    from caption.caption_files import score_files

    _print_json(score_files(args.predictions, args.references, tokenize=args.tokenize, output=args.output))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from caption.demo import CONFIG_PATH, run_demo

    if args.config_path:
        print(CONFIG_PATH)
        return 0
    output = Path(args.output)
    metrics = run_demo(output, quick=args.quick, seed=args.seed)
    print((output / "examples.txt").read_text(), end="")
    _print_json(metrics)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data": _data, "pretrain": _pretrain, "eval-retrieval": _eval_retrieval, "extract": _extract, "train": _train,
    "evaluate": _evaluate, "caption": _caption, "score": _score, "demo": _demo,
}


def one_line(err: VcapError) -> str:
    """The error as one line: its kind and its message (which names the file or key)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return f"vcap: {err.kind}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcap`` console script; returns the exit code."""
    # OpenMP threads that spin while waiting run up to 50x slower on a CPU shared with the
    # DataLoader's decoding workers (measured: 16 ms vs 0.3 ms for a 960x128 @ 128x128 matmul on
    # 2 cores). Passive waiting costs nothing when the CPU is free. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except VcapError as e:
        print(one_line(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vcap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
