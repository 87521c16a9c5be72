"""Reading the files ``vcap score`` takes: predictions (``{id: caption}`` or a COCO results list
``[{video_id|image_id, caption}]``) and references (``{id: [captions]}``, COCO
``{"annotations": [...]}``, MSR-VTT ``{"sentences": [...]}`` or a list of
``{video_id|image_id, caption}``; a single reference string counts as one). Ids are compared as
strings (COCO's integer ids become ``"123"``). A malformed file is a ``DatasetError`` naming it
and the item.

Dense (time-stamped) captions: predictions in the ActivityNet Captions challenge format
``{"results": {video: [{"sentence": str, "timestamp": [start, end]}, ...]}, ...}`` (other top-level
keys such as ``version`` / ``external_data`` are allowed) and references shaped like ActivityNet's
``val_1.json`` ``{video: {"duration", "timestamps": [[start, end], ...], "sentences": [...]}}``;
scored by ``caption.dense_metrics``."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Sequence

from caption.dense_metrics import (
    MAX_PROPOSALS,
    TIOUS,
    DenseCaption,
    DenseReference,
    score_dense,
)
from caption.metrics import score_captions
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError
from retrieval_pretrain.foundation.ownership import METRICS, claim_file

MAX_FILE_BYTES = 512 * 2**20  # a predictions or references file; the largest benchmark's are a few MB


def _check_file(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, fifo or socket"
        raise DatasetError(f"{path}: cannot be read: not a regular file ({kind}); give a JSON file")
    if st.st_size > MAX_FILE_BYTES:
        raise DatasetError(f"{path}: {st.st_size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES // 2**20} MB a "
                           "predictions or references file may have")


def _read_text(path: Path) -> str:
    """The text of a regular file of at most ``MAX_FILE_BYTES``, checked before anything is read:
    ``/dev/zero``, a fifo or a folder would never end or block, a huge file would fill the memory.
    Opened non-blocking (a fifo swapped in after the check cannot block) and checked again on the
    open file, so the file read is the file checked."""
    _check_file(os.stat(path), path)
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
        _check_file(os.fstat(f.fileno()), path)
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # it grew after the check
        raise DatasetError(f"{path}: more than the {MAX_FILE_BYTES // 2**20} MB a predictions or references file "
                           "may have")
    return data.decode("utf-8")


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(_read_text(path), object_pairs_hook=_unique_keys(path))
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err.strerror or err})") from None


def _unique_keys(path: Path) -> Any:
    """A JSON object hook refusing a key given twice (JSON keeps the last without a word)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise DatasetError(f"{path}: key {key!r} appears twice in one object; which one to use is unknown")
            out[key] = value
        return out

    return hook


def _item_id(item: Any, path: Path, index: int) -> str:
    if isinstance(item, dict):
        for key in ("video_id", "image_id", "id"):
            if key in item:
                value = item[key]
                if isinstance(value, bool) or not isinstance(value, (str, int)):  # 1.0, null, a list: no id
                    raise DatasetError(f"{path}: item {index}: '{key}' must be a string or an integer, "
                                       f"got {str(value)[:60]}")
                return str(value)
    raise DatasetError(f"{path}: item {index} has no video_id/image_id: {str(item)[:100]}")


def _item_caption(item: dict, path: Path, index: int, reference: bool = False) -> str:
    caption = item.get("caption")
    if not isinstance(caption, str) or (reference and not caption.strip()):
        what = "non-empty string" if reference else "string"
        raise DatasetError(f"{path}: item {index} has no {what} 'caption': {str(item)[:100]}")
    return caption


def load_predictions(path: str | Path) -> dict[str, str]:
    """``{id: caption}`` from ``{"id": "caption"}`` or a COCO results list (module docstring)."""
    path = Path(path)
    return _predictions_from(_read_json(path), path)


def _predictions_from(data: Any, path: Path) -> dict[str, str]:
    if isinstance(data, dict):
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise DatasetError(f"{path}: predictions must map id -> caption string; not so for {', '.join(bad[:10])}")
        return {str(k): v for k, v in data.items()}
    if isinstance(data, list):
        out: dict[str, str] = {}
        dupes: list[str] = []
        for i, item in enumerate(data):
            vid = _item_id(item, path, i)
            if vid in out:
                dupes.append(vid)
            out[vid] = _item_caption(item, path, i)
        if dupes:
            raise DatasetError(f"{path}: more than one prediction for id(s) {', '.join(sorted(set(dupes))[:10])}")
        return out
    raise DatasetError(f"{path}: predictions must be {{id: caption}} or [{{video_id|image_id, caption}}, ...]")


def load_references(path: str | Path) -> dict[str, list[str]]:
    """``{id: [captions]}`` from ``{"id": [...]}``, COCO ``{"annotations": [...]}``, MSR-VTT
    ``{"sentences": [...]}`` or a list of ``{video_id|image_id, caption}`` (module docstring)."""
    path = Path(path)
    data = _read_json(path)
    items = None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        items = data["annotations"]
    elif isinstance(data, dict) and isinstance(data.get("sentences"), list):
        items = data["sentences"]
    if items is not None:
        out: dict[str, list[str]] = {}
        for i, item in enumerate(items):
            out.setdefault(_item_id(item, path, i), []).append(_item_caption(item, path, i, reference=True))
        return out
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
                raise DatasetError(f"{path}: references of id {k} must be a list of strings")
            if not v or not all(c.strip() for c in v):
                raise DatasetError(f"{path}: references of id {k} must be non-empty captions, got {v!r}")
            out[str(k)] = list(v)
        return out
    raise DatasetError(f"{path}: references must be {{id: [captions]}} or {{\"annotations\": [...]}}")


def score_files(predictions_path: str | Path, references_path: str | Path | Sequence[str | Path],
                tokenize: str = "ptb", output: str | Path | None = None) -> dict[str, Any]:
    """``vcap score``: the metrics of a predictions file against a references file, also written to
    ``output/metrics.json`` when ``output`` is given. Predictions in the ActivityNet Captions
    challenge format (``is_dense_predictions``) are scored as its evaluator does, against one or more
    reference files (``score_dense_files``); other predictions take exactly one references file."""
    paths = [references_path] if isinstance(references_path, (str, Path)) else list(references_path)
    twice = sorted({str(p) for p in paths if sum(os.path.realpath(q) == os.path.realpath(p) for q in paths) > 1})
    if twice:  # each reference file counts as one annotator: the same one twice would change the scores
        raise ConfigError(f"--references {twice[0]} is given more than once; give each reference file once")
    if output is not None:  # a metrics.json there that vcap did not write: refused before any work
        claim_file(Path(output) / "metrics.json", METRICS)
    data = _read_json(predictions_path)
    if is_dense_predictions(data) or (isinstance(data, dict) and "results" in data
                                      and not isinstance(data["results"], str)):  # a "results" of another shape:
        # parse_dense_predictions names it (an id "results" with a caption string is a plain prediction)
        return score_dense_files(predictions_path, paths, tokenize=tokenize, output=output, data=data)
    if len(paths) != 1:
        raise ConfigError(f"{len(paths)} --references files given; several are only for dense (time-stamped) "
                          f"predictions, and {predictions_path} is not in the challenge format "
                          "({\"results\": {video: [{\"sentence\", \"timestamp\"}]}})")
    predictions = _predictions_from(data, Path(predictions_path))
    references = load_references(paths[0])
    metrics: dict[str, Any] = dict(score_captions(predictions, references, tokenize=tokenize))
    metrics.update({"count": len(predictions), "tokenize": tokenize})
    print(f"scored {len(predictions)} captions against {sum(map(len, references.values()))} references "
          f"(tokenize={tokenize})", file=sys.stderr)
    if output is not None:
        write_json(Path(output) / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------- dense captions

def is_dense_predictions(data: Any) -> bool:
    """Whether a predictions file's JSON is in the challenge format: an object whose ``results``
    is an object (of videos; each then checked by ``parse_dense_predictions``)."""
    return isinstance(data, dict) and isinstance(data.get("results"), dict)


def _seconds(value: Any) -> float | None:
    """A finite number of seconds (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return value if math.isfinite(value) else None


def _segment(value: Any, where: str) -> tuple[float, float]:
    """``[start, end]``: two finite numbers, end >= start; else a DatasetError naming ``where``."""
    if not isinstance(value, list) or len(value) != 2:
        raise DatasetError(f"{where}: a timestamp must be [start, end] (two numbers of seconds), got {str(value)[:80]}")
    start, end = (_seconds(v) for v in value)
    if start is None or end is None:
        raise DatasetError(f"{where}: a timestamp must be two finite numbers of seconds, got {str(value)[:80]}")
    if end < start:
        raise DatasetError(f"{where}: timestamp [{start}, {end}] ends before it starts")
    return start, end


def parse_dense_predictions(data: Any, path: str | Path) -> dict[str, list[DenseCaption]]:
    """``{video: [DenseCaption, ...]}`` from a challenge-format JSON value (``path`` names it in
    errors): every row needs a string ``sentence`` and a ``timestamp`` ``[start, end]``; a video may
    have no rows. Anything else is a ``DatasetError`` naming the video, the row and the problem."""
    if not is_dense_predictions(data):
        got = (f"; its \"results\" is a {type(data['results']).__name__}, not an object of videos"
               if isinstance(data, dict) and "results" in data else "")
        raise DatasetError(f"{path}: dense predictions must be {{\"results\": {{video: [{{\"sentence\", "
                           f"\"timestamp\"}}, ...]}}}} (the ActivityNet Captions challenge format){got}")
    if not data["results"]:
        raise DatasetError(f"{path}: \"results\" holds no videos; nothing to score")
    out: dict[str, list[DenseCaption]] = {}
    for vid, rows in data["results"].items():
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: results[{vid!r}] must be a list of {{\"sentence\", \"timestamp\"}} rows, "
                               f"got {type(rows).__name__}")
        caps = []
        for i, row in enumerate(rows):
            where = f"{path}: results[{vid!r}][{i}]"
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: a row must be {{\"sentence\", \"timestamp\"}}, got {str(row)[:80]}")
            if not isinstance(row.get("sentence"), str):
                raise DatasetError(f"{where}: no string \"sentence\"")
            if "timestamp" not in row:
                raise DatasetError(f"{where}: no \"timestamp\"")
            start, end = _segment(row["timestamp"], where)
            caps.append(DenseCaption(start, end, row["sentence"]))
        out[vid] = caps
    return out


def parse_dense_references(data: Any, path: str | Path) -> dict[str, DenseReference]:
    """``{video: DenseReference}`` from a ``val_1.json``-shaped JSON value: each video an object with
    ``timestamps`` (``[start, end]`` each) and as many string ``sentences``, and an optional
    ``duration``. Anything else is a ``DatasetError`` naming the video and the problem."""
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: dense references must be {{video: {{\"duration\", \"timestamps\", "
                           "\"sentences\"}}}} with at least one video (like ActivityNet Captions' val_1.json)")
    out: dict[str, DenseReference] = {}
    for vid, entry in data.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: must be {{\"duration\", \"timestamps\", \"sentences\"}}, "
                               f"got {str(entry)[:80]}")
        stamps, sentences = entry.get("timestamps"), entry.get("sentences")
        if not isinstance(stamps, list) or not isinstance(sentences, list):
            raise DatasetError(f"{where}: needs lists \"timestamps\" and \"sentences\"")
        if not stamps or len(stamps) != len(sentences):
            raise DatasetError(f"{where}: needs as many sentences as timestamps, at least one "
                               f"(got {len(stamps)} timestamps, {len(sentences)} sentences)")
        bad = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
        if bad:
            raise DatasetError(f"{where}: sentence {bad[0]} is not a string")
        duration = entry.get("duration")
        if duration is not None and _seconds(duration) is None:
            raise DatasetError(f"{where}: \"duration\" must be a finite number of seconds, got {str(duration)[:40]}")
        segments = tuple(_segment(s, f"{where} segment {i}") for i, s in enumerate(stamps))
        out[vid] = DenseReference(None if duration is None else float(duration), segments, tuple(sentences))
    return out


def _warn_before_zero(path: str | Path, segments: dict[str, list[tuple[float, float]]]) -> None:
    """One warning line counting the segments that start before 0 s: the official evaluator scores
    them as given (so does ``score_dense``), but a negative time is likely a model's or a file's error."""
    early = [(vid, i) for vid, spans in segments.items() for i, (start, _) in enumerate(spans) if start < 0]
    if early:
        vid, i = early[0]
        print(f"warning: {path}: {len(early)} segment(s) start before 0 s (first: video {vid!r}, segment {i}); "
              "scored as given, as the official evaluator does", file=sys.stderr)


def load_dense_predictions(path: str | Path) -> dict[str, list[DenseCaption]]:
    """The challenge-format predictions file ``path`` (``parse_dense_predictions``)."""
    return parse_dense_predictions(_read_json(path), path)


def load_dense_references(path: str | Path) -> dict[str, DenseReference]:
    """A ``val_1.json``-shaped references file (``parse_dense_references``)."""
    return parse_dense_references(_read_json(path), path)


def score_dense_files(predictions_path: str | Path, references_paths: Sequence[str | Path], tokenize: str = "ptb",
                      output: str | Path | None = None, data: Any = None) -> dict[str, Any]:
    """``vcap score`` on dense predictions: ``{"dense": score_dense(...), "videos": {...}, "tokenize"}``
    (``caption.dense_metrics``), also written to ``output/metrics.json`` when given. ``data``: the
    predictions file's JSON when already read."""
    if not references_paths:
        raise ConfigError("give at least one references file")
    if output is not None:
        claim_file(Path(output) / "metrics.json", METRICS)
    predictions = parse_dense_predictions(_read_json(predictions_path) if data is None else data, predictions_path)
    references = [load_dense_references(p) for p in references_paths]
    known = {vid for table in references for vid in table}
    ignored = sorted(set(predictions) - known)
    if len(ignored) == len(predictions):
        raise DatasetError(f"{predictions_path}: none of its {len(predictions)} videos is in the references "
                           f"({', '.join(map(str, references_paths))}); e.g. {', '.join(ignored[:5])}")
    _warn_before_zero(predictions_path, {vid: [(c.start, c.end) for c in caps] for vid, caps in predictions.items()})
    for path, table in zip(references_paths, references):
        _warn_before_zero(path, {vid: list(ref.segments) for vid, ref in table.items()})
    videos = {"references": len(known), "predicted": len(predictions) - len(ignored), "ignored": len(ignored)}
    print(f"scoring dense captions of {videos['predicted']} videos against {len(known)} reference videos "
          f"({len(references)} file(s); reference videos without predictions score 0; tIoU "
          f"{' '.join(map(str, TIOUS))}, at most {MAX_PROPOSALS} per video)", file=sys.stderr)
    if ignored:
        print(f"warning: {len(ignored)} predicted video(s) are in no references file and are ignored, as the "
              f"official evaluator does: {', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}", file=sys.stderr)
    metrics = {"dense": score_dense(predictions, references, tokenize=tokenize), "videos": videos,
               "tokenize": tokenize}
    if output is not None:
        write_json(Path(output) / "metrics.json", metrics)
    return metrics
