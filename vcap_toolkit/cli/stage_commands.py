"""The ``vcap`` commands of the two-stage pipeline, in the order a run takes them: ``data check``,
``pretrain``, ``eval-retrieval``, ``extract`` (stage 1), ``train``, ``evaluate`` (stage 2) and
``caption`` (a trained captioner on video files).

Each returns its exit code (0 all well, 1 when some input was skipped or failed). The stages load
torch and open_clip, seconds before the first line: their modules are imported inside the command,
after its config has been read (a config error comes at once), so ``vcap --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from retrieval_pretrain.reading.data_check import check_dataset, report_text
from vcap_toolkit.cli.command_io import config, opt_path, per_video_output, print_json
from vcap_toolkit.reports.captions_page import caption_report, make_rows
from vcap_toolkit.reports.html_page import check_report_path


def _data(args: argparse.Namespace) -> int:
    cfg = config(args)
    summary = check_dataset(cfg.data, probe=args.probe, video=cfg.video)  # probe: the frames cfg samples
    print(report_text(summary), file=sys.stderr)
    print_json(summary)
    return 0 if summary["ok"] else 1


def _pretrain(args: argparse.Namespace) -> int:
    cfg = config(args)  # config errors before the slow imports
    from retrieval_pretrain.stage1.train import train  # deferred: keeps vcap --help fast (torch, open_clip)

    output = Path(args.output)
    train(cfg, output, resume=args.resume)
    skipped = json.loads((output / "skipped.json").read_text())
    failed = json.loads((output / "failures.json").read_text())
    return 1 if failed or skipped["missing_videos"] or skipped["annotation_problems"] else 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    cfg = config(args)
    from retrieval_pretrain.stage1.evaluate import evaluate_retrieval  # deferred: keeps vcap --help fast (torch)

    metrics = evaluate_retrieval(Path(args.model), cfg, split=args.split, dsl=args.dsl, output=opt_path(args.output))
    print_json(metrics)
    return 1 if metrics["unreadable_videos"] else 0


def _extract(args: argparse.Namespace) -> int:
    cfg = config(args)
    from retrieval_pretrain.stage1.extract import extract_features  # deferred: keeps vcap --help fast (torch)

    report = extract_features(Path(args.model), cfg, Path(args.output), splits=args.split,
                              batch_size=args.batch_size)
    print_json(report)
    return 0 if report["failed"] == 0 else 1


def _train(args: argparse.Namespace) -> int:
    cfg = config(args)
    from caption.train import train  # deferred: keeps vcap --help fast (torch)

    output = Path(args.output)
    train(cfg, Path(args.features), output, resume=args.resume, init_from=opt_path(args.init_from))
    skipped = json.loads((output / "skipped.json").read_text())
    return 1 if skipped["no_features"] or skipped["bad_features"] or skipped["annotation_problems"] else 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = config(args)
    from caption.evaluate import evaluate, evaluation_folder  # deferred: keeps vcap --help fast (torch)
    from vcap_toolkit.reports.evaluation import write_evaluation_report  # deferred: torch (caption tokenizer)

    if args.report:  # refused before any work when the page could not be written
        check_report_path(evaluation_folder(Path(args.model), args.split or cfg.data.test_split,
                                            opt_path(args.output)) / "report.html")
    metrics = evaluate(Path(args.model), cfg, features=opt_path(args.features), split=args.split,
                       output=opt_path(args.output), report=write_evaluation_report if args.report else None)
    print_json(metrics)
    return 1 if metrics["not_captioned"] else 0


def _caption(args: argparse.Namespace) -> int:
    from caption.pipeline import CaptionPipeline, expand_videos  # deferred: keeps vcap --help fast (torch)

    # VideoReadError when nothing was given; folder entries that lead nowhere (broken or looping
    # symbolic links, folders that cannot be listed) are failed inputs like unreadable videos.
    paths, unlisted = expand_videos(args.videos)
    if args.report:
        check_report_path(args.report, paths)
    results: dict[str, Any] = {}
    if paths:
        pipe = CaptionPipeline.from_pretrained(Path(args.model), device=args.device)
        results = pipe.caption(paths, num_beams=args.beam, batch_size=args.batch_size)
    captions = {p: r for p, r in results.items() if isinstance(r, str)}
    failed = {e.path: str(e) for e in unlisted}
    failed.update({p: str(r) for p, r in results.items() if not isinstance(r, str)})
    if args.report:
        rows = make_rows({p: p for p in [*captions, *failed]}, captions, {}, not_captioned=failed)
        where = caption_report(args.report, rows, {"videos": len(captions), "not_captioned": len(failed)},
                               "Captions", subtitle=f"model {args.model}")
        print(f"report: {where}", file=sys.stderr)
    return per_video_output(captions, failed, "captioned", "captions", args.json, str)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data": _data, "pretrain": _pretrain, "eval-retrieval": _eval_retrieval, "extract": _extract, "train": _train,
    "evaluate": _evaluate, "caption": _caption,
}
