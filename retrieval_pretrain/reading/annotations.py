"""Caption dataset formats -> one table of ``VideoEntry`` (video id, file, captions, split).

``data.format`` picks the reader; ``load_annotations`` dispatches on it:

* ``msrvtt``, ``msrvtt-clip4clip``, ``msvd``, ``vatex`` - the benchmarks, as CLIP4Caption (Tang et
  al., ACM MM 2021) and CLIP4Clip (Luo et al., 2021) read them: ``retrieval_pretrain.reading.benchmark_formats``.
* ``hf`` - a Hugging Face dataset (hub id, ``save_to_disk`` folder, or parquet / json(l) / csv
  files) with ``data.columns`` naming the video, captions and split columns:
  ``retrieval_pretrain.reading.hf_dataset``.
* ``jsonl`` (here) - one ``{"video": "rel/path.mp4", "captions": [...], "split": "train"}`` per
  line, ``video`` relative to ``data.videos``; the video id is that path without its extension.

Where an annotation names only an id, the file is ``<videos>/<id><ext>`` for the first extension
(the format's own first, then ``data.video_ext`` in order) that exists, else the first one.

``video_id`` is the table's key (features are cached by it): an id seen twice is a problem. A file
that cannot be read at all raises ``AnnotationError`` naming the file and why; a malformed entry,
or one left with no captions, becomes an ``AnnotationProblem`` and is skipped, never silently.
A video path outside ``data.videos`` (``../x.mp4``, an absolute path elsewhere) is kept, recorded
in ``Annotations.outside`` and warned about on stderr, naming the file and line (or row / id):
see ``retrieval_pretrain.reading.annotation_table`` for why it is a warning and not a refusal.

The table types and the readers' shared helpers are ``retrieval_pretrain.reading.annotation_table``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from retrieval_pretrain.reading import benchmark_formats as bench
from retrieval_pretrain.reading import label_formats as labelled
from retrieval_pretrain.foundation.run_log import main_process
from retrieval_pretrain.reading.annotation_table import (  # noqa: F401  (the table types are imported from here too)
    AnnotationError,
    AnnotationProblem,
    Annotations,
    Table,
    VideoEntry,
    clean_captions,
    no_split_files,
    normalize_split,
    read_text,
    required_file,
)
from retrieval_pretrain.reading.data_config import DataConfig

MAX_OUTSIDE_WARNINGS = 20  # then one line with the count; `vcap data check` lists them all


def _jsonl_problem(obj: Any) -> str:
    """Why a parsed jsonl line is not a valid entry (``""`` when it is)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [k for k in ("video", "captions", "split") if k not in obj]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    for key in ("video", "split"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            return f"'{key}' must be a non-empty string"
    return clean_captions(obj["captions"])[1]


def _load_jsonl(data: DataConfig, table: Table) -> None:
    no_split_files(data, "jsonl")
    path = required_file(data.annotations, "annotations", "jsonl")
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            why = _jsonl_problem(obj)
        except json.JSONDecodeError as e:
            why = f"not valid JSON: {e.msg}"
        except RecursionError:
            why = "not valid JSON: nested too deeply"
        if why:
            table.problem(f"{path}:{n}", f"{why}; skipped")
            continue
        rel = Path(obj["video"].strip())  # the id is the relative path without its extension
        table.add(rel.with_suffix("").as_posix(), Path(data.videos) / rel, clean_captions(obj["captions"])[0],
                  obj["split"], f"{path}:{n}")


def _reader(fmt: str) -> Callable[[DataConfig, Table], None]:
    """The reader of a format."""
    if fmt == "hf":
        from retrieval_pretrain.reading.hf_dataset import load_hf  # imports `datasets` (slow): only when used

        return load_hf
    readers = {"jsonl": _load_jsonl, "msrvtt": bench.load_msrvtt, "msrvtt-clip4clip": bench.load_msrvtt_clip4clip,
               "msvd": bench.load_msvd, "vatex": bench.load_vatex, "labels": labelled.load_labels,
               "kinetics": labelled.load_kinetics, "ucf101": labelled.load_ucf101, "hmdb51": labelled.load_hmdb51}
    if fmt not in readers:
        raise AnnotationError(f"unknown data.format '{fmt}'; one of: {', '.join(readers)}, hf")
    return readers[fmt]


def load_annotations(data: DataConfig, warn: bool = True) -> Annotations:
    """Read the dataset ``data`` describes into one table (see the module docstring per format).

    ``warn``: print a warning on stderr for each entry whose video is outside ``data.videos``
    (the first ``MAX_OUTSIDE_WARNINGS``, then their count); they are in ``.outside`` either way.

    Raises:
        AnnotationError: unknown format, or a file that is missing or cannot be read at all.
    """
    reader = _reader(data.format)
    table = Table(data.videos)
    reader(data, table)
    outside = table.ann.outside
    if warn and outside and main_process():  # once per launch, not per process
        for q in outside[:MAX_OUTSIDE_WARNINGS]:
            print(f"warning: {q.source}: {q.reason}", file=sys.stderr)
        if len(outside) > MAX_OUTSIDE_WARNINGS:
            print(f"warning: ... and {len(outside) - MAX_OUTSIDE_WARNINGS} more video paths outside the video "
                  f"folder {data.videos} ('vcap data check' lists them all)", file=sys.stderr)
    return table.ann
