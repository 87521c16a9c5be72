"""The data sections of the config: where a dataset lives (``DataConfig``) and how frames are
sampled from its videos (``VideoConfig``). Read by the dataset readers beside this module and, as
``data`` / ``video``, part of every ``vcap`` config (``retrieval_pretrain.stage1.config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval_pretrain.foundation.typed_config import at_least, choice


@dataclass
class DataConfig:
    """Where a caption dataset lives and how its annotations are laid out.

    Args:
        format: the layout, a name in the table of formats ``retrieval_pretrain.reading.formats.FORMATS``
            (each with its reader and a one-line description; ``vcap data check --help`` lists
            them). Checked when a config is read (``stage1.config.RetrievalConfig.check``: the table
            imports the readers, which import this module).
        annotations: the annotation file (for ``msvd`` the raw-captions pickle; for ``hf`` a Hugging
            Face dataset: a hub id, a folder written by ``save_to_disk``, or parquet / json(l) /
            csv file(s), comma-separated).
        videos: the folder holding the video files.
        split_files: for formats that keep splits in separate files, ``split -> file``.
        train_split / val_split / test_split: split names used by training and evaluation.
        video_ext: extensions tried, in order, when an annotation names a video id only.
        columns: ``hf`` only: which column holds the ``video`` path (relative to ``videos``), the
            ``captions`` (a string or a list of strings; rows of one video are merged) and the
            ``split`` (optional when the dataset has splits of its own).
        hf_subset: ``hf`` only: the configuration name of a hub dataset with several.
        labels_file: labelled formats (``Format.labelled``): the class list, one label per line;
            a row with another label is an error. Empty: the labels the rows use.
        novel_labels: labelled formats: a file of labels held out of training (base-to-novel, as
            Open-VCLIP): ``vcap pretrain`` skips their videos, ``vcap eval-classify`` reports base
            and novel accuracy apart.
    """

    format: str = "jsonl"
    annotations: str = ""
    videos: str = ""
    split_files: dict[str, str] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    video_ext: list[str] = field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".webm", ".mov"])
    columns: dict[str, str] = field(default_factory=lambda: {"video": "video", "captions": "captions",
                                                             "split": "split"})
    hf_subset: str | None = None
    labels_file: str = ""
    novel_labels: str = ""


# The most frames a run samples from one video: a value past it is a typo (a hostile round's
# video.num_frames=1e20 made data check --probe call every good video unreadable).
MAX_FRAMES = 4096


@dataclass
class VideoConfig:
    """Frame sampling. ``num_frames`` frames per video; ``train_sampling`` while training
    (``tsn``: random frame inside each segment), ``eval_sampling`` otherwise (``uniform``:
    segment centres, or ``fps``: CLIP4Clip's one frame per second thinned to ``num_frames``).
    ``backend``: the decoder (``reading.decoding``): ``auto`` (decord where it installs, else the
    fastest usable; said at start-up; ``decoding.choice``), ``decord``, ``torchcodec`` or ``pyav``. Every backend samples
    the same frames; a property of the run, not recorded in model folders."""

    num_frames: int = at_least(12, 1, MAX_FRAMES)
    train_sampling: str = choice("tsn", "tsn", "uniform", "fps")
    eval_sampling: str = choice("uniform", "uniform", "fps", "tsn")
    # Stage 1 only: > 0 decodes each training video once, keeping up to this many frames (all of a
    # shorter video) at the model's input size in memory, and samples training frames from there
    # (videos x frames x 3 x size^2 bytes per process: for small datasets). 0 decodes every step.
    # pretrain.mode=prompt always encodes this many frames per video once (when 0: 32, or num_frames if more) and keeps features.
    cache_frames: int = at_least(0, 0)  # no cap: the memory estimate refuses what cannot fit
    backend: str = choice("auto", "auto", "decord", "torchcodec", "pyav")
