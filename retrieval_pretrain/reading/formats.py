"""The dataset formats (``data.format``), in one table: ``FORMATS``, name -> ``Format``.

Everything that knows the formats reads this table: the loader
(``retrieval_pretrain.reading.annotations.load_annotations`` dispatches through it), the config
check (``check_format``, called by ``retrieval_pretrain.stage1.config.RetrievalConfig.check`` when a
config is read), ``vcap data check --help`` (``help_lines``) and README.md's list of formats
(tests/test_formats.py compares it with ``markdown_rows``). A new format is one reader function
``read(data, table)`` and one row here.

Each reader adds entries and problems to the ``annotation_table.Table`` it is given and raises
``AnnotationError`` for a file it cannot read at all; the layouts are documented beside the
readers: ``annotation_table.load_jsonl`` (``jsonl``), ``benchmark_formats`` (the caption
benchmarks), ``label_formats`` (labelled datasets), ``hf_dataset`` (Hugging Face datasets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading import benchmark_formats as bench
from retrieval_pretrain.reading import dense_formats as dense
from retrieval_pretrain.reading import label_formats as labelled
from retrieval_pretrain.reading.annotation_table import AnnotationError, Table, load_jsonl
from retrieval_pretrain.reading.data_config import DataConfig


@dataclass(frozen=True)
class Format:
    """One ``data.format``.

    Attributes:
        name: the value of ``data.format``.
        read: the reader, ``read(data, table)``.
        summary: one line on what ``data.annotations`` (and ``data.split_files``) hold, for
            ``--help`` and README.md (plain text: no markup).
        labelled: videos carry one class label each (recognition: ``vcap eval-classify``; stage 1
            trains on the label in a prompt template), not captions.
        split_files: the reader reads ``data.split_files``; for the other formats setting them is
            an error (``annotation_table.no_split_files``), never silently ignored.
    """

    name: str
    read: Callable[[DataConfig, Table], None]
    summary: str
    labelled: bool = False
    split_files: bool = False


def _load_hf(data: DataConfig, table: Table) -> None:
    """``hf_dataset.load_hf``, imported when a config uses ``data.format=hf``."""
    from retrieval_pretrain.reading.hf_dataset import load_hf  # deferred: imports `datasets` (seconds); hf configs only

    load_hf(data, table)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("msrvtt", bench.load_msrvtt,
           "MSR-VTT's official *_videodatainfo.json (videos and sentences); splits from the file"),
    Format("msrvtt-clip4clip", bench.load_msrvtt_clip4clip,
           "CLIP4Clip's MSR-VTT csv lists in data.split_files; captions from a sentence column or "
           "data.annotations (MSRVTT_data.json)", split_files=True),
    Format("msvd", bench.load_msvd,
           "MSVD's raw-captions pickle; the *_list_mapping.txt id lists in data.split_files", split_files=True),
    Format("vatex", bench.load_vatex,
           "VATEX JSON lists of videoID and enCap: one file per split in data.split_files, or one file "
           "whose items carry a split", split_files=True),
    Format("activitynet", dense.load_activitynet,
           "ActivityNet Captions: train.json / val_1.json / val_2.json in data.split_files; each time-stamped "
           "sentence is a clip of its untrimmed video", split_files=True),
    Format("youcook2", dense.load_youcook2,
           "YouCook2's youcookii_annotations_trainval.json; each annotated segment is a clip of its untrimmed video"),
    Format("jsonl", load_jsonl,
           "one JSON object per line: video (relative to data.videos), captions (a list), split, and optionally "
           "start / end (seconds: that part of the video)"),
    Format("hf", _load_hf,
           "a Hugging Face dataset (hub id, save_to_disk folder, or parquet / json / csv files); "
           "data.columns names its video, captions and split columns"),
    Format("labels", labelled.load_labels,
           "rows of video, label and split in a .jsonl or .csv file", labelled=True),
    Format("kinetics", labelled.load_kinetics,
           "Kinetics csv files (label, youtube_id, time_start, time_end, split), or one per split in "
           "data.split_files", labelled=True, split_files=True),
    Format("ucf101", labelled.load_ucf101,
           "UCF101: classInd.txt as data.annotations, the official train/test lists in data.split_files",
           labelled=True, split_files=True),
    Format("hmdb51", labelled.load_hmdb51,
           "HMDB51: a glob of one split's official split files as data.annotations", labelled=True),
)}


def get_format(name: str) -> Format:
    """The format called ``name``; ``AnnotationError`` naming the formats when there is none."""
    if name not in FORMATS:
        raise AnnotationError(f"unknown data.format '{name}'; one of: {', '.join(FORMATS)}")
    return FORMATS[name]


def check_format(name: str, where: str = "data.format") -> None:
    """``ConfigError`` unless ``name`` is a format (the check of ``data.format`` when a config is read)."""
    if name not in FORMATS:
        raise ConfigError(f"{where}: {name!r} is not one of {', '.join(FORMATS)}")


def help_lines() -> list[str]:
    """One line per format, ``  name - summary`` (labelled ones marked), for ``--help``."""
    return [f"  {f.name} - {'[labelled] ' if f.labelled else ''}{f.summary}" for f in FORMATS.values()]


def markdown_rows() -> list[str]:
    """README.md's table of formats, one row per format (tests/test_formats.py keeps README in step)."""
    return [f"| `{f.name}` | {'a label' if f.labelled else 'captions'} | {f.summary} |" for f in FORMATS.values()]
