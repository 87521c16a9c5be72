"""Caption dataset formats -> one table of ``VideoEntry`` (video id, file, captions, split).

``data.format`` picks the reader from the table of formats, ``retrieval_pretrain.reading.formats.FORMATS``
(each format's reader, one-line description, whether it is labelled and whether it reads
``data.split_files``; ``vcap data check --help`` lists them). ``load_annotations`` dispatches
through it and refuses ``data.split_files`` for a format that does not read them.

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

import sys

from retrieval_pretrain.foundation.run_log import main_process
from retrieval_pretrain.reading.annotation_table import (  # noqa: F401  (the table types are imported from here too)
    AnnotationError,
    AnnotationProblem,
    Annotations,
    Table,
    VideoEntry,
    no_split_files,
    normalize_split,
)
from retrieval_pretrain.reading.data_config import DataConfig
from retrieval_pretrain.reading.formats import get_format

MAX_OUTSIDE_WARNINGS = 20  # then one line with the count; `vcap data check` lists them all


def load_annotations(data: DataConfig, warn: bool = True) -> Annotations:
    """Read the dataset ``data`` describes into one table (its format's reader: ``formats.FORMATS``).

    ``warn``: print a warning on stderr for each entry whose video is outside ``data.videos``
    (the first ``MAX_OUTSIDE_WARNINGS``, then their count); they are in ``.outside`` either way.

    Raises:
        AnnotationError: unknown format, ``data.split_files`` set for a format that does not read
            them, or a file that is missing or cannot be read at all.
    """
    fmt = get_format(data.format)
    if not fmt.split_files:
        no_split_files(data, fmt.name)
    table = Table(data.videos)
    fmt.read(data, table)
    outside = table.ann.outside
    if warn and outside and main_process():  # once per launch, not per process
        for q in outside[:MAX_OUTSIDE_WARNINGS]:
            print(f"warning: {q.source}: {q.reason}", file=sys.stderr)
        if len(outside) > MAX_OUTSIDE_WARNINGS:
            print(f"warning: ... and {len(outside) - MAX_OUTSIDE_WARNINGS} more video paths outside the video "
                  f"folder {data.videos} ('vcap data check' lists them all)", file=sys.stderr)
    if warn and table.ann.clipped and main_process():
        print(f"note: {len(table.ann.clipped)} segments end past their video's duration and were cut there "
              f"(first: {table.ann.clipped[0].source}: {table.ann.clipped[0].reason}; 'vcap data check' lists them)",
              file=sys.stderr)
    return table.ann
