"""The ``vcap`` commands of the two-stage pipeline, in the order a run takes them: ``data check``,
``pretrain``, ``eval-retrieval``, ``extract`` (stage 1), ``train``, ``evaluate`` (stage 2) and
``caption`` (a trained captioner on video files) - and the options that cut a long video into
windows, which ``caption`` and ``evaluate`` share (``add_window_options``, read by ``window_spec``).

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

from caption.subtitles import check_subtitles_path, write_subtitles
from caption.windows import SHOTS, TimedCaption, WindowSpec, check_shots_available, clock
from retrieval_pretrain.foundation.errors import ConfigError, VideoReadError
from retrieval_pretrain.foundation.ownership import FAILURES, METRICS, claim_files
from retrieval_pretrain.reading.clips import Clip
from retrieval_pretrain.reading.data_check import check_dataset, report_text
from vcap_toolkit.cli.command_io import caption_config, config, opt_path, per_video_output, print_json
from vcap_toolkit.reports.captions_page import caption_report, make_rows
from vcap_toolkit.reports.html_page import check_report_path
from vcap_toolkit.reports.timeline_page import timeline_report


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _segments(text: str) -> float | str:
    return SHOTS if text.strip().lower() == SHOTS else _seconds(text)


def add_window_options(p: argparse.ArgumentParser, segments_help: str) -> None:
    """``--segments``, ``--min-segment``, ``--max-segment`` (``caption`` and ``evaluate``)."""
    p.add_argument("--segments", type=_segments, default=None, metavar="SECONDS|shots", help=segments_help)
    p.add_argument("--min-segment", type=_seconds, default=None, metavar="S",
                   help="with --segments shots: a cut less than S seconds after the previous one (or before the "
                        "end) is dropped, so no shot is shorter (default 2)")
    p.add_argument("--max-segment", type=_seconds, default=None, metavar="S",
                   help="with --segments shots: a longer shot is split into equal parts of at most S seconds "
                        "(default 30)")


def window_spec(args: argparse.Namespace) -> WindowSpec | None:
    """The windows the options ask for (None without ``--segments``); a ``ConfigError`` for options
    that do not go together, and for ``shots`` without PySceneDetect, before any work."""
    bounds = {k: v for k, v in (("min_segment", args.min_segment), ("max_segment", args.max_segment)) if v is not None}
    if bounds and args.segments != SHOTS:
        raise ConfigError("--min-segment and --max-segment bound shots: they go with --segments shots")
    if args.segments is None:
        return None
    if args.segments == SHOTS:
        check_shots_available()
    return WindowSpec(args.segments, **bounds)


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
    split = args.split or cfg.data.test_split  # evaluate_retrieval's default folder, named here to check it first
    out = opt_path(args.output) or Path(args.model).parent / f"eval_retrieval_{split}"
    claim_files(out, {"metrics.json": METRICS, "failures.json": FAILURES})  # a user's file there: refused now
    from retrieval_pretrain.stage1.evaluate import evaluate_retrieval  # deferred: keeps vcap --help fast (torch)

    metrics = evaluate_retrieval(Path(args.model), cfg, split=args.split, dsl=args.dsl, output=out)
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
                       output=opt_path(args.output), report=write_evaluation_report if args.report else None,
                       windows=window_spec(args))
    print_json(metrics)
    return 1 if metrics["not_captioned"] or metrics.get("dense_not_captioned") else 0


def _caption(args: argparse.Namespace) -> int:
    caption_config(args)  # only video.backend applies (the decoder); refused before the slow imports
    spec = window_spec(args)  # option errors before the slow imports
    if args.subtitles and spec is None:
        raise ConfigError(f"--subtitles {args.subtitles}: subtitles need windows; add --segments SECONDS or shots")
    from caption.pipeline import CaptionPipeline, expand_videos  # deferred: keeps vcap --help fast (torch)

    # VideoReadError when nothing was given; folder entries that lead nowhere (broken or looping
    # symbolic links, folders that cannot be listed) are failed inputs like unreadable videos.
    paths, unlisted = expand_videos(args.videos)
    if args.report:
        check_report_path(args.report, paths)
    if args.subtitles:
        check_subtitles_path(args.subtitles, paths)
        if len(paths) != 1:
            raise ConfigError(f"--subtitles {args.subtitles}: a subtitle file is for one video; {len(paths)} given")
    if spec is not None:
        return _caption_windows(args, spec, paths, unlisted)
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


def _caption_windows(args: argparse.Namespace, spec: WindowSpec, paths: list[Path],
                     unlisted: list[VideoReadError]) -> int:
    """``vcap caption --segments``: each video window by window; subtitles and the timeline page."""
    from caption.pipeline import CaptionPipeline  # deferred: keeps vcap --help fast (torch)

    results: dict[str, Any] = {}
    if paths:
        pipe = CaptionPipeline.from_pretrained(Path(args.model), device=args.device)
        results = pipe.caption(paths, num_beams=args.beam, batch_size=args.batch_size, segments=spec)
    done = {p: r for p, r in results.items() if isinstance(r, list)}
    failed = {e.path: str(e) for e in unlisted}
    failed.update({p: str(r) for p, r in results.items() if not isinstance(r, list)})
    failed.update({str(Clip(Path(p), w.start, w.end)): w.error for p, ws in done.items() for w in ws if w.error})
    if args.subtitles and done:
        print(f"subtitles: {write_subtitles(args.subtitles, next(iter(done.values())))}", file=sys.stderr)
    if args.report:
        shown = {p: done.get(p, failed.get(p, "")) for p in [*map(str, paths), *(e.path for e in unlisted)]}
        where = timeline_report(args.report, shown, "Captions over time", subtitle=f"model {args.model}; windows: "
                                + (f"shots ({spec.min_segment:g}-{spec.max_segment:g} s)" if spec.shots
                                   else f"{spec.segments:g} s"))
        print(f"report: {where}", file=sys.stderr)
    return _window_output(done, failed, args.json)


def _window_output(done: dict[str, list[TimedCaption]], failed: dict[str, str], as_json: bool) -> int:
    """What ``vcap caption --segments`` prints: ``per_video_output``'s JSON with a list of windows per
    video, or one ``video<TAB>start-end<TAB>caption`` line per window."""
    if as_json:
        shown = {p: [w.as_dict() for w in ws if w.caption is not None] for p, ws in done.items()}
        return per_video_output(shown, failed, "captioned", "captions", True, str)
    for reason in failed.values():
        print(f"warning: not captioned: {reason}", file=sys.stderr)
    for video, windows in done.items():
        for w in windows:
            if w.caption is not None:
                print(f"{video}\t{clock(w.start)}-{clock(w.end)}\t{w.caption}")
    if failed and not done:
        raise VideoReadError(", ".join(failed), f"none of the {len(failed)} videos could be read (reasons above)")
    return 1 if failed else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data": _data, "pretrain": _pretrain, "eval-retrieval": _eval_retrieval, "extract": _extract, "train": _train,
    "evaluate": _evaluate, "caption": _caption,
}
