"""The ``vcap`` commands that use a trained (or plain CLIP) video-text model on your own videos:
``classify`` and ``eval-classify`` (zero-shot recognition with your labels), ``index`` and
``search`` (a searchable video library), and ``serve`` (all of it as a local web page).

Each returns its exit code. The jobs load torch and open_clip, and ``serve`` needs the web extra
(flask, waitress): their modules are imported inside the command, so ``vcap --help`` stays fast
and works without the extra.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.ownership import METRICS, SKIPPED, claim_files
from vcap_toolkit.cli.command_io import config, opt_path, per_video_output, print_json


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
    cfg = config(args)  # optional here: the defaults, or the plain CLIP's video settings
    from caption.pipeline import expand_videos  # deferred: keeps vcap --help fast (torch)
    from retrieval_pretrain.foundation.accelerate_setup import pick_device  # deferred: torch, accelerate
    from vcap_toolkit.jobs.recognition import (  # deferred: keeps vcap --help fast (torch, open_clip)
        classify_videos,
        load_recognizer,
        read_labels,
        read_templates,
    )

    labels, templates = read_labels(args.labels), read_templates(args.template)
    paths, unlisted = expand_videos(args.videos)
    failed = {e.path: str(e) for e in unlisted}
    ranked: dict[str, Any] = {}
    if paths:
        device = pick_device(cfg.run.device)
        net, spec = load_recognizer(cfg, args.model, args.pretrained, device)
        ranked, unread = classify_videos(net, spec, [(str(p), p) for p in paths], labels, templates, device,
                                         top=args.top, batch_size=args.batch_size, num_workers=cfg.run.num_workers)
        failed.update(unread)
    return per_video_output(ranked, failed, "classified", "predictions", args.json,
                            lambda top: "; ".join(f"{label} ({p:.3f})" for label, p in top))


def _eval_classify(args: argparse.Namespace) -> int:
    cfg = config(args)
    from retrieval_pretrain.foundation.accelerate_setup import pick_device  # deferred: torch, accelerate
    from vcap_toolkit.jobs.recognition import (  # deferred: keeps vcap --help fast (torch, open_clip)
        evaluate_classification,
        load_recognizer,
        read_templates,
    )

    templates = read_templates(args.template)
    split = args.split or cfg.data.test_split
    base = Path(args.model).parent if args.model and Path(args.model).is_dir() else Path.cwd()
    out = Path(args.output) if args.output else base / f"eval_classify_{split}"
    claim_files(out, {"metrics.json": METRICS, "skipped.json": SKIPPED})  # before the model loads
    net, spec = load_recognizer(cfg, args.model, args.pretrained, pick_device(cfg.run.device))
    metrics = evaluate_classification(net, spec, cfg, split=split, templates=templates, output=out)
    print_json(metrics)
    return 1 if metrics["unreadable_videos"] or metrics["annotation_problems"] else 0


def _index(args: argparse.Namespace) -> int:
    from caption.pipeline import expand_videos  # deferred: keeps vcap --help fast (torch)
    from vcap_toolkit.jobs.index_parallel import index_videos  # deferred: keeps vcap --help fast (torch)

    paths, unlisted = expand_videos(args.videos)
    report = index_videos(Path(args.model), paths, Path(args.output), args.device, args.batch_size,
                          args.num_workers, args.shard_size, unlisted=[(e.path, str(e)) for e in unlisted],
                          segments=args.segments, stride=args.stride, vectors=args.vectors)
    if report is None:  # a process of 'accelerate launch' other than the main one: the main one reports
        return 0
    print_json(report)
    return 1 if report["failed"] else 0


def _search(args: argparse.Namespace) -> int:
    from retrieval_pretrain.foundation.accelerate_setup import pick_device  # deferred: torch, accelerate
    from vcap_toolkit.jobs.search import search  # deferred: keeps vcap --help fast (torch)

    if (args.query is None) == (args.video is None):
        raise ConfigError("vcap search: give a QUERY sentence or --video CLIP (one of the two)")
    results = search(Path(args.index), pick_device(args.device), text=args.query,
                     video=opt_path(args.video), top=args.top)
    if args.json:
        print_json({"query": args.query if args.query is not None else {"video": args.video}, "results": results})
    else:
        for i, result in enumerate(results, 1):
            where = "" if len(result) == 2 else f"\t{result[1]:.3f}-{result[2]:.3f} s"
            print(f"{i}\t{result[-1]:.4f}\t{result[0]}{where}")
    return 0


def _check_serve_args(args: argparse.Namespace) -> None:
    """Refuse a bad port or ``--allow`` folder before the models load."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: not a port (0 to 65535)")
    try:
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:  # socket.gaierror is an OSError
        raise ConfigError(f"--host {args.host!r}: not an address this machine can listen on ({e}); give an IP "
                          "address or host name, e.g. 127.0.0.1 or 0.0.0.0") from None
    for folder in args.allow or []:
        if not Path(folder).is_dir():
            raise ConfigError(f"--allow {folder}: not a folder")


def _serve(args: argparse.Namespace) -> int:
    try:
        import flask  # noqa: F401  # deferred: optional (the web extra); checked so its absence is one line
        import waitress  # noqa: F401  # deferred: optional (the web extra); checked so its absence is one line
    except ImportError as e:
        raise ConfigError(f"vcap serve needs the web extra ({e.name} is not installed): "
                          "pip install 'vcap-toolkit[web]'") from None
    from vcap_toolkit.web.models import ServeModels, path_guard  # deferred: torch and the models' loaders
    from vcap_toolkit.web.serve import create_app, make_server  # deferred: the web extra (flask, waitress)

    _check_serve_args(args)
    models = ServeModels.load(args.caption_model, args.retrieval_model, args.index, device=args.device)
    guard = path_guard(models, args.allow)
    app = create_app(models, guard, args.max_upload_mb, host=args.host)
    try:
        server = make_server(app, args.host, args.port, max_upload_mb=args.max_upload_mb)
    except (OSError, ValueError) as e:  # waitress: ValueError("Invalid host/port specified.")
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen there "
                          f"({getattr(e, 'strerror', None) or e})") from None
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
    "classify": _classify, "eval-classify": _eval_classify, "index": _index, "search": _search, "serve": _serve,
}
