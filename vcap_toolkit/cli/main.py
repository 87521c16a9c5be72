"""``vcap``: the toolkit's one command line, with a subcommand per job - and its edge.

Every subcommand that reads a config takes ``--config FILE.yaml`` plus trailing ``key=value``
overrides of any config field (dotted keys, YAML values). Library code returns results and raises
the toolkit's error types (``retrieval_pretrain.foundation.errors``); this module alone prints: progress and
logs go to stderr, a command that computes metrics prints them as one JSON object on the last line
of stdout (the same object its ``metrics.json`` holds), and each toolkit error becomes one line on
stderr naming the file or key, with the error type's exit code (README.md lists them). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from vcap_toolkit.cli.parser import build_parser
from caption.config import Config, load
from retrieval_pretrain.foundation.errors import ConfigError, StorageError, VcapError, VideoReadError
from retrieval_pretrain.foundation.run_log import main_process


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _print_json(obj: Any) -> None:
    """The result line on stdout; under a multi-process launch only the main process prints it."""
    if main_process():
        print(json.dumps(obj), flush=True)


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _data(args: argparse.Namespace) -> int:
    from retrieval_pretrain.reading.data_check import check_dataset, report_text

    cfg = _config(args)
    summary = check_dataset(cfg.data, probe=args.probe, video=cfg.video)  # probe: the frames cfg samples
    print(report_text(summary), file=sys.stderr)
    _print_json(summary)
    return 0 if summary["ok"] else 1


def _pretrain(args: argparse.Namespace) -> int:
    cfg = _config(args)  # config errors before the slow imports
    from retrieval_pretrain.stage1.train import train

    output = Path(args.output)
    train(cfg, output, resume=args.resume)
    skipped = json.loads((output / "skipped.json").read_text())
    failed = json.loads((output / "failures.json").read_text())
    return 1 if failed or skipped["missing_videos"] or skipped["annotation_problems"] else 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from retrieval_pretrain.stage1.evaluate import evaluate_retrieval

    metrics = evaluate_retrieval(Path(args.model), cfg, split=args.split, dsl=args.dsl, output=_opt_path(args.output))
    _print_json(metrics)
    return 1 if metrics["unreadable_videos"] else 0


def _extract(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from retrieval_pretrain.stage1.extract import extract_features

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
    return 1 if skipped["no_features"] or skipped["bad_features"] or skipped["annotation_problems"] else 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from caption.evaluate import evaluate, evaluation_folder
    from vcap_toolkit.reports.evaluation import write_evaluation_report
    from vcap_toolkit.reports.report import check_report_path

    if args.report:  # refused before any work when the page could not be written
        check_report_path(evaluation_folder(Path(args.model), args.split or cfg.data.test_split,
                                            _opt_path(args.output)) / "report.html")
    metrics = evaluate(Path(args.model), cfg, features=_opt_path(args.features), split=args.split,
                       output=_opt_path(args.output), report=write_evaluation_report if args.report else None)
    _print_json(metrics)
    return 1 if metrics["not_captioned"] else 0


def _caption(args: argparse.Namespace) -> int:
    from caption.pipeline import CaptionPipeline, expand_videos

    # VideoReadError when nothing was given; folder entries that lead nowhere (broken or looping
    # symbolic links, folders that cannot be listed) are failed inputs like unreadable videos.
    paths, unlisted = expand_videos(args.videos)
    if args.report:
        from vcap_toolkit.reports.report import check_report_path

        check_report_path(args.report, paths)
    results: dict[str, Any] = {}
    if paths:
        pipe = CaptionPipeline.from_pretrained(Path(args.model), device=args.device)
        results = pipe.caption(paths, num_beams=args.beam, batch_size=args.batch_size)
    captions = {p: r for p, r in results.items() if isinstance(r, str)}
    failed = {e.path: str(e) for e in unlisted}
    failed.update({p: str(r) for p, r in results.items() if not isinstance(r, str)})
    if args.report:
        from vcap_toolkit.reports.report import caption_report, make_rows

        rows = make_rows({p: p for p in [*captions, *failed]}, captions, {}, not_captioned=failed)
        where = caption_report(args.report, rows, {"videos": len(captions), "not_captioned": len(failed)},
                               "Captions", subtitle=f"model {args.model}")
        print(f"report: {where}", file=sys.stderr)
    return _per_video_output(captions, failed, "captioned", "captions", args.json, str)


def _report(args: argparse.Namespace) -> int:
    from vcap_toolkit.reports.report import run_report

    run = Path(args.run)
    if not run.is_dir():
        raise ConfigError(f"{run} is not a folder; give a run folder (vcap pretrain / vcap train --output)")
    from vcap_toolkit.reports.report import check_report_path

    where = run_report(run, check_report_path(args.output if args.output else run / "report.html"))
    print(where)
    return 0


def _per_video_output(done: dict[str, Any], failed: dict[str, str], verb: str, key: str, as_json: bool,
                      line: Callable[[Any], str]) -> int:
    """What a per-video command prints: the failures on stderr, then ``{key: done, "failed": ...}``
    as JSON or one ``video<TAB>line(result)`` per video; exit 1 when some failed, a video error
    (exit 4) when none could be read."""
    for reason in failed.values():
        print(f"warning: not {verb}: {reason}", file=sys.stderr)
    if as_json:
        _print_json({key: done, "failed": failed})
    else:
        for video, result in done.items():
            print(f"{video}\t{line(result)}")
    if failed and not done:
        raise VideoReadError(", ".join(failed), f"none of the {len(failed)} videos could be read (reasons above)")
    return 1 if failed else 0


def _overrides_among_videos(args: argparse.Namespace) -> None:
    """``vcap classify A.mp4 video.num_frames=8``: the override came after the videos, so argparse
    took it for one; move what is a dotted ``key=value`` and no existing path to the overrides."""
    keyed = [v for v in args.videos if re.match(r"^[A-Za-z_]+(\.[A-Za-z_]+)+=", v) and not os.path.exists(v)]
    args.videos = [v for v in args.videos if v not in keyed]
    args.overrides = [*keyed, *args.overrides]
    if not args.videos:
        raise ConfigError("vcap classify: no video or folder given (only key=value overrides)")


def _classify(args: argparse.Namespace) -> int:
    _overrides_among_videos(args)
    cfg = _config(args)  # optional here: the defaults, or the plain CLIP's video settings
    from caption.pipeline import expand_videos
    from retrieval_pretrain.foundation.accelerate_setup import pick_device
    from vcap_toolkit.jobs.recognition import classify_videos, load_recognizer, read_labels, read_templates

    labels, templates = read_labels(args.labels), read_templates(args.template)
    paths, unlisted = expand_videos(args.videos)
    failed = {e.path: str(e) for e in unlisted}
    ranked: dict[str, Any] = {}
    if paths:
        device = pick_device(cfg.run.device)
        net, info = load_recognizer(cfg, args.model, args.pretrained, device)
        ranked, unread = classify_videos(net, info, [(str(p), p) for p in paths], labels, templates, device,
                                         top=args.top, batch_size=args.batch_size, num_workers=cfg.run.num_workers)
        failed.update(unread)
    return _per_video_output(ranked, failed, "classified", "predictions", args.json,
                             lambda top: "; ".join(f"{label} ({p:.3f})" for label, p in top))


def _eval_classify(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from retrieval_pretrain.foundation.accelerate_setup import pick_device
    from vcap_toolkit.jobs.recognition import evaluate_classification, load_recognizer, read_templates

    templates = read_templates(args.template)
    net, info = load_recognizer(cfg, args.model, args.pretrained, pick_device(cfg.run.device))
    split = args.split or cfg.data.test_split
    base = Path(args.model).parent if args.model and Path(args.model).is_dir() else Path.cwd()
    metrics = evaluate_classification(net, info, cfg, split=split, templates=templates,
                                      output=Path(args.output) if args.output else base / f"eval_classify_{split}")
    _print_json(metrics)
    return 1 if metrics["unreadable_videos"] or metrics["annotation_problems"] else 0


def _index(args: argparse.Namespace) -> int:
    from caption.pipeline import expand_videos
    from retrieval_pretrain.foundation.accelerate_setup import pick_device
    from vcap_toolkit.jobs.search import build_index

    paths, unlisted = expand_videos(args.videos)
    report = build_index(Path(args.model), paths, Path(args.output), pick_device(args.device), args.batch_size,
                         args.num_workers, args.shard_size, unlisted=[(e.path, str(e)) for e in unlisted])
    _print_json(report)
    return 1 if report["failed"] else 0


def _search(args: argparse.Namespace) -> int:
    from retrieval_pretrain.foundation.accelerate_setup import pick_device
    from vcap_toolkit.jobs.search import search

    if (args.query is None) == (args.video is None):
        raise ConfigError("vcap search: give a QUERY sentence or --video CLIP (one of the two)")
    results = search(Path(args.index), pick_device(args.device), text=args.query,
                     video=_opt_path(args.video), top=args.top)
    if args.json:
        _print_json({"query": args.query if args.query is not None else {"video": args.video}, "results": results})
    else:
        for i, (path, score) in enumerate(results, 1):
            print(f"{i}\t{score:.4f}\t{path}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from caption.caption_files import score_files

    _print_json(score_files(args.predictions, args.references, tokenize=args.tokenize, output=args.output))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from retrieval_pretrain.stage1.interpolate import check_alpha, interpolate_folders

    check_alpha(args.alpha)  # before any model is read
    _print_json(interpolate_folders(args.base, Path(args.finetuned), args.alpha, Path(args.output)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from caption.demo import CONFIG_PATH, run_demo

    if args.config_path:
        print(CONFIG_PATH)
        return 0
    output = Path(args.output)
    metrics = run_demo(output, quick=args.quick, seed=args.seed, overrides=args.overrides)
    print((output / "examples.txt").read_text(), end="")
    _print_json(metrics)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"vcap serve needs the web extra ({e.name} is not installed): "
                          "pip install 'vcap-toolkit[web]'") from None
    from vcap_toolkit.web.serve import ServeModels, create_app, make_server, path_guard

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: not a port (0 to 65535)")
    for folder in args.allow or []:  # before the models load
        if not Path(folder).is_dir():
            raise ConfigError(f"--allow {folder}: not a folder")
    models = ServeModels.load(args.caption_model, args.retrieval_model, args.index, device=args.device)
    guard = path_guard(models, args.allow)
    app = create_app(models, guard, args.max_upload_mb, host=args.host)
    try:
        server = make_server(app, args.host, args.port, max_upload_mb=args.max_upload_mb)
    except OSError as e:
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})") from None
    port = getattr(server, "effective_port", args.port)
    where = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vcap serve: http://{where}:{port}/ (models on {models.pipe.device}; allowed folders: "
          f"{', '.join(map(str, guard.roots)) or 'none'}; Ctrl-C stops)", file=sys.stderr, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # waitress's run() ends on KeyboardInterrupt
    server.run()
    print("vcap serve: stopped (Ctrl-C)", file=sys.stderr)
    return 130


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data": _data, "pretrain": _pretrain, "eval-retrieval": _eval_retrieval, "extract": _extract, "train": _train,
    "evaluate": _evaluate, "caption": _caption, "classify": _classify, "eval-classify": _eval_classify,
    "index": _index,
    "search": _search, "score": _score, "report": _report, "interpolate": _interpolate, "demo": _demo,
    "serve": _serve,
}


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
