"""``vcap serve``: one local web page for the toolkit's three jobs - caption a video, search an
index by a sentence, classify a video with labels the user types.

The page (``serve_page.html``: plain HTML, CSS and JS, nothing fetched from elsewhere) talks to a
small JSON API of a Flask app served by waitress (threads)::

    GET  /                   the page
    GET  /api/info           what is loaded: models, index size, allowed folders, upload limit
    GET  /api/videos         video files under the allowed folders (the page's path picker)
    POST /api/caption        form: video (an upload) or path (a server file); beam
    POST /api/classify       form: video or path; labels (one a line, or comma-separated); top
    GET  /api/search         ?q=a sentence&top=8: videos, or moments (start, end) of an index of windows
    GET  /api/thumbnails     ?path=P&count=4: frames as data: URIs (report.video_thumbnails)
    GET  /api/video          ?path=P: a video file's bytes with its content type (range requests)
    GET  /api/subtitles      ?path=P: the WebVTT file beside video P (P.vtt), for the player's track

Every API error is ``{"error": "..."}`` with a 4xx status (500 for a bug, whose traceback goes to
the server's log, never to the page): 400 a malformed request, 403 a path outside the allowed
folders, 404 a file that is not there, 413 an upload over ``--max-upload-mb``, 422 a file the
toolkit's reader cannot read (the reason ``vcap caption`` prints for it).

Models are loaded once, at start (``models.ServeModels.load``): the caption pipeline with its stage-1
video tower; the recognizer (``--retrieval-model``, else that same tower object); the index's model
(the recognizer or tower again when its weights are the same file, by fingerprint). Requests run
on waitress's threads; every model call holds one lock (``ServeModels.lock``), so inference runs
one request at a time - on a CPU, torch already spreads one forward pass over all cores, and
interleaved passes would only contend - while uploads, content checks, thumbnails and file bytes
are served in parallel.

Path safety (``serve_paths.PathGuard``): a path from the page is refused (403) when it holds
``..``, or when its real location (symbolic links resolved) is not inside an allowed folder
(``--allow``; default: the folders the index's videos are in). The index's own paths, as stored,
may be played and thumbnailed while their real location is inside an allowed folder or a folder the
index's videos are in: every path is resolved and checked when it is used, indexed ones too, and
file bytes are sent from the file opened once after the check (``PathGuard.open``). Uploads go to a temporary folder of their
own, removed when the request ends. The server binds 127.0.0.1 unless told otherwise, and refuses
requests whose ``Host`` is not the address it serves on (a DNS-rebinding page cannot reach it) and
cross-site form posts (an ``Origin`` other than its own).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from flask import Flask, Response, jsonify, request, send_file
from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound, RequestEntityTooLarge

from caption.pipeline import VIDEO_EXTENSIONS
from retrieval_pretrain.foundation.errors import VideoReadError
from vcap_toolkit.jobs.moments import Hit
from vcap_toolkit.reports.captions_page import video_thumbnails
from vcap_toolkit.web.models import ServeModels, file_reason
from vcap_toolkit.web.serve_paths import PathGuard

PAGE = Path(__file__).with_name("serve_page.html")
THREADS = 8  # waitress worker threads: uploads and file bytes in parallel; inference takes turns
MAX_BEAM = 10
MAX_LABELS = 1000
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CONTENT_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
                  ".mov": "video/quicktime", ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
                  ".flv": "video/x-flv", ".wmv": "video/x-ms-wmv"}
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


# ---------------------------------------------------------------- models, loaded once


# ---------------------------------------------------------------- the app


def parse_labels(text: str) -> list[str]:
    """Labels typed or pasted into the page: one a line, or comma-separated on one line. Never
    read as a file name (``read_labels`` would open a path). ``BadRequest`` for none, a repeat,
    or too many."""
    lines = [x.strip() for x in text.replace("\r", "").split("\n") if x.strip()]
    labels = [x.strip() for x in lines[0].split(",") if x.strip()] if len(lines) == 1 else lines
    if not labels:
        raise BadRequest("no labels: type one label a line, or a comma-separated list")
    if len(labels) > MAX_LABELS:
        raise BadRequest(f"{len(labels)} labels; at most {MAX_LABELS}")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise BadRequest(f"label {label!r} is given twice")
        seen.add(label)
    return labels


def _int_arg(value: str | None, name: str, default: int | None, low: int, high: int) -> int | None:
    if value in (None, ""):
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:  # isdigit alone takes '²'
        raise BadRequest(f"{name}={value!r}: give a whole number from {low} to {high}")
    return int(value)


@functools.lru_cache(maxsize=512)
def _thumbnails(path: str, mtime_ns: int, size: int, count: int) -> tuple[tuple[bytes, ...], str | None]:
    """``video_thumbnails`` of a file as it is now (the key holds its stamp, so a change misses)."""
    shots = video_thumbnails(path, count=count, height=72)
    return tuple(shots.images), shots.error


def too_large(max_upload_mb: float) -> str:
    """The refusal of an upload over ``--max-upload-mb`` (by the app or by waitress, the same words)."""
    return f"the upload is larger than this server's limit of {max_upload_mb:g} MB (vcap serve --max-upload-mb)"


def _data_uris(images: Sequence[bytes]) -> list[str]:
    return [f"data:image/jpeg;base64,{base64.b64encode(b).decode('ascii')}" for b in images]


def create_app(models: ServeModels, guard: PathGuard, max_upload_mb: float = 200,
               upload_dir: str | Path | None = None, host: str = "127.0.0.1") -> Flask:
    """The Flask app of the page and its API (module docstring). ``upload_dir``: where each
    upload's temporary folder is made (default: the system's); ``host``: the address served on,
    for the ``Host`` check (any ``Host`` is accepted when it is not a loopback address)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    _install_guards(app, host, max_upload_mb)
    _add_model_routes(app, models, guard, max_upload_mb, upload_dir)
    _add_file_routes(app, guard)
    return app


def _install_guards(app: Flask, host: str, max_upload_mb: float) -> None:
    """Same-site and ``Host`` checks, security headers, and errors as JSON ``{"error": ...}``."""

    @app.before_request
    def _same_site_only() -> None:
        if host in _LOOPBACK:
            name = (request.host or "").rsplit(":", 1)[0].strip("[]")
            if name not in _LOOPBACK:
                raise Forbidden(f"Host {request.host!r} refused: this server answers only on {host} "
                                "(vcap serve --host to serve elsewhere)")
        origin = request.headers.get("Origin")
        if origin and origin.split("://", 1)[-1] != request.host:
            raise Forbidden(f"requests from another site ({origin}) are refused")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> tuple[Response, int]:
        if isinstance(e, RequestEntityTooLarge):
            return jsonify(error=too_large(max_upload_mb)), 413
        return jsonify(error=e.description), e.code or 500

    @app.errorhandler(VideoReadError)
    def _unreadable(e: VideoReadError) -> tuple[Response, int]:
        return jsonify(error=str(e)), 422

    @app.errorhandler(Exception)
    def _bug(e: Exception) -> tuple[Response, int]:
        traceback.print_exception(e, file=sys.stderr)
        return jsonify(error=f"internal error ({type(e).__name__}); the details are in the server's log"), 500


@contextmanager
def _request_video(guard: PathGuard, upload_dir: str | Path | None) -> Iterator[tuple[str, Path]]:
    """The current request's video: an upload (saved in a temporary folder removed afterwards) or a
    server path the guard allows. Yields ``(name shown, file)``."""
    upload = request.files.get("video")
    if upload is not None and upload.filename:
        name = upload.filename[-200:]
        suffix = Path(name).suffix.lower()
        with tempfile.TemporaryDirectory(prefix="vcap-serve-", dir=upload_dir) as folder:
            path = Path(folder) / f"upload{suffix if suffix in VIDEO_EXTENSIONS else ''}"
            upload.save(path)
            yield name, path
    elif request.form.get("path"):
        text = request.form["path"]
        yield text, guard.resolve(text)
    else:
        raise BadRequest("no video: upload a file (form field 'video') or give a server path (field 'path')")


def _add_model_routes(app: Flask, models: ServeModels, guard: PathGuard, max_upload_mb: float,
                      upload_dir: str | Path | None) -> None:
    """The page and what runs a model: ``/api/info``, ``/api/caption``, ``/api/classify``, ``/api/search``."""
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/")
    def _page() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/api/info")
    def _info() -> Response:
        index = None
        if models.index is not None:
            index = {"folder": str(models.index.folder), "videos": len(models.index_paths),
                     "rows": models.index.size(), "moments": models.index.moments,
                     "vectors": (models.index.meta.get("vectors") or {}).get("kind", "none")}
        return jsonify(caption_model=models.caption_name, retrieval_model=models.recognizer_name,
                       index=index, allowed=[str(r) for r in guard.roots], max_upload_mb=max_upload_mb,
                       beam=models.pipe.default_decode().num_beams, max_beam=MAX_BEAM, device=str(models.pipe.device))

    @app.post("/api/caption")
    def _caption() -> Response:
        t0 = time.perf_counter()
        beam = _int_arg(request.form.get("beam"), "beam", None, 1, MAX_BEAM)
        with _request_video(guard, upload_dir) as (name, path):
            shots = video_thumbnails(path, count=6, height=96)  # the content check: the toolkit's reader
            if shots.error:
                raise VideoReadError(name, file_reason(shots.error, path))
            caption, seconds = models.caption(name, path, beam)
        return jsonify(video=name, caption=caption, beam=beam or models.pipe.default_decode().num_beams,
                       thumbnails=_data_uris(shots.images),
                       seconds={"model": round(seconds, 3), "total": round(time.perf_counter() - t0, 3)})

    @app.post("/api/classify")
    def _classify() -> Response:
        t0 = time.perf_counter()
        labels = parse_labels(request.form.get("labels", ""))
        top = _int_arg(request.form.get("top"), "top", 5, 1, MAX_LABELS)
        with _request_video(guard, upload_dir) as (name, path):
            ranked, seconds = models.classify(name, path, labels, min(top, len(labels)))
        return jsonify(video=name, labels=len(labels), predictions=[[label, p] for label, p in ranked],
                       seconds={"model": round(seconds, 3), "total": round(time.perf_counter() - t0, 3)})

    @app.get("/api/search")
    def _search() -> Response:
        if models.index is None:
            raise NotFound("no index loaded: start 'vcap serve' with --index IDX (made by 'vcap index')")
        text = request.args.get("q", "").strip()
        if not text or len(text) > 1000:
            raise BadRequest("give a sentence to search for (q=..., at most 1000 characters)")
        top = _int_arg(request.args.get("top"), "top", 8, 1, 100)
        t0 = time.perf_counter()
        found, seconds = models.search(text, top)
        return jsonify(query=text, results=[_result(hit) for hit in found],
                       seconds={"model": round(seconds, 3), "total": round(time.perf_counter() - t0, 3)})


def _result(hit: Hit) -> dict[str, Any]:
    """A search result as the page takes it: the file, its name and score; a moment's ``start`` and
    ``end`` (seconds; the page plays from the start); ``subtitles``: a WebVTT file beside the video
    (``vcap caption --subtitles``), which the page shows as the player's subtitle track."""
    out = {"path": hit.path, "name": Path(hit.path).name, "score": hit.score,
           "subtitles": Path(os.path.realpath(hit.path)).with_suffix(".vtt").is_file()}
    if hit.start is not None:
        out.update(start=hit.start, end=hit.end)
    return out


def _add_file_routes(app: Flask, guard: PathGuard) -> None:
    """The allowed folders' videos: ``/api/videos`` (listing), ``/api/thumbnails``, ``/api/video``."""

    @app.get("/api/videos")
    def _videos() -> Response:
        return jsonify(videos=guard.listing())

    @app.get("/api/thumbnails")
    def _thumbs() -> Response:
        count = _int_arg(request.args.get("count"), "count", 4, 1, 12)
        file, real, st = guard.open(request.args.get("path", ""))  # checked now; held open while it is read
        with file:
            images, error = _thumbnails(str(real), st.st_mtime_ns, st.st_size, count)
        if error:
            raise VideoReadError(request.args["path"], error)
        return jsonify(thumbnails=_data_uris(images))

    @app.get("/api/subtitles")
    def _subtitles() -> Response:
        file, real, st = guard.open_beside(request.args.get("path", ""), ".vtt")  # the video checked, then its .vtt
        try:
            response = send_file(file, mimetype="text/vtt", conditional=False, max_age=0, download_name=real.name,
                                 last_modified=st.st_mtime)
            response.content_length = st.st_size
            return response
        except BaseException:
            file.close()
            raise

    @app.get("/api/video")
    def _video() -> Response:
        file, real, st = guard.open(request.args.get("path", ""))  # the bytes come from this open file
        if real.suffix.lower() not in VIDEO_EXTENSIONS:  # an allowed folder's other files are not the page's
            file.close()
            raise Forbidden(f"{real.name}: not a video file by its name; the page serves videos only")
        try:
            kind = _CONTENT_TYPES.get(real.suffix.lower(), "application/octet-stream")
            response = send_file(file, mimetype=kind, conditional=False, max_age=0, download_name=real.name,
                                 last_modified=st.st_mtime, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}")
            response.content_length = st.st_size
            return response.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
        except BaseException:
            file.close()
            raise


# ---------------------------------------------------------------- serving


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 7860, threads: int = THREADS,
                max_upload_mb: float = 200) -> Any:
    """A waitress server for ``app`` (not yet serving: call ``.run()``; ``port=0`` picks a free
    port, then ``.effective_port`` says which). Bodies past the upload limit plus 1 MB are cut off
    by waitress itself before they are buffered whole: 413 with the app's ``{"error": ...}``."""

    server = create_server(app, host=host, port=port, threads=threads, ident="vcap",
                           max_request_body_size=int(max_upload_mb * 1024 * 1024) + (1 << 20))
    channel = _json_error_channel(max_upload_mb)
    for listener in list((getattr(server, "map", None) or server._map).values()):
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel  # waitress's own refusals (413 ...) as JSON too
    return server


def _json_error_channel(max_upload_mb: float) -> type[HTTPChannel]:
    """A waitress channel whose own error answers (a body past the cut-off: 413; a malformed
    request: 400) are ``{"error": ...}`` like the app's, not waitress's plain-text page."""

    class JSONErrorTask(ErrorTask):
        def execute(self) -> None:
            e = self.request.error
            message = too_large(max_upload_mb) if e.code == 413 else f"{e.reason}: {e.body}"
            body = json.dumps({"error": message}).encode("utf-8")
            self.status = f"{e.code} {e.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JSONErrorChannel(HTTPChannel):
        error_task_class = JSONErrorTask

    return JSONErrorChannel


def stop_server(server: Any) -> None:
    """Stop a server ``make_server`` made (its ``run()`` returns) and its worker threads."""

    server.task_dispatcher.shutdown()
    wasyncore.close_all(getattr(server, "map", None) or server._map)  # the listener and open connections
