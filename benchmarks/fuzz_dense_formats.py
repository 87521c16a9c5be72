"""Fuzz targets of the dense-captioning formats (issue 26's readers, issue 25's property):
ActivityNet Captions (``{vid: {duration, timestamps, sentences}}``, one file per split) and YouCook2
(``{"database": {vid: {duration, subset, annotations: [{segment, sentence}]}}}``), with hostile
cells in every field - NaN / inf, reversed and negative segments, lists where numbers belong,
unhashable subsets, path-like ids - besides near-valid ones.

The property is ``fuzz_targets.dataset_property`` (usable entries or one named refusal, and
``vcap data check`` ending as documented) plus what a time range must be: every entry's range finite,
``0 <= start < end``, its source id a plain name, its captions non-empty text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from benchmarks.fuzz_targets import Target, dataset_property, json_text, write_text
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.data_config import DataConfig

CELLS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=6), st.lists(st.floats(-10, 100), max_size=3))
SEGMENTS = st.lists(st.one_of(CELLS, st.tuples(st.floats(-5, 50), st.floats(-5, 50)).map(list)), max_size=4)
ANET_VIDEO = st.fixed_dictionaries({}, optional={"duration": CELLS, "timestamps": st.one_of(CELLS, SEGMENTS),
                                                 "sentences": st.one_of(CELLS, st.lists(CELLS, max_size=4))})
YC2_VIDEO = st.fixed_dictionaries({}, optional={
    "duration": CELLS, "subset": st.one_of(CELLS, st.sampled_from(["training", "validation"])),
    "recipe_type": CELLS, "annotations": st.one_of(CELLS, st.lists(st.one_of(CELLS, st.fixed_dictionaries(
        {}, optional={"segment": st.one_of(CELLS, SEGMENTS), "sentence": CELLS})), max_size=4))})
IDS = st.one_of(st.text(max_size=8), st.sampled_from(["", ".", "..", "/", "v_a/../b", "v_x"]))
ANET = st.dictionaries(IDS, st.one_of(CELLS, ANET_VIDEO), max_size=4)
YC2 = st.dictionaries(IDS, st.one_of(CELLS, YC2_VIDEO), max_size=4)


def check_ranges(ann: Any) -> None:
    """What every entry of a dense format must be."""
    for e in ann.entries:
        assert e.captions and all(isinstance(c, str) and c.strip() for c in e.captions), e
        assert math.isfinite(e.start) and math.isfinite(e.end) and 0 <= e.start < e.end, e
        assert "/" not in e.source and e.source not in ("", ".", ".."), e


def _dense(data: dict[str, Any], folder: Path) -> None:
    dataset_property(data, folder)
    try:
        ann = load_annotations(DataConfig(**{"videos": str(folder / "videos"), **data}), warn=False)
    except Exception:  # refused: dataset_property has checked that it is one named error
        return
    check_ranges(ann)


def _activitynet(example: Any, folder: Path) -> None:
    f = write_text(folder / "train.json", json_text(example))
    _dense({"format": "activitynet", "split_files": {"train": str(f)}}, folder)


def _youcook2(example: Any, folder: Path) -> None:
    f = write_text(folder / "youcookii_annotations_trainval.json", json_text({"database": example}))
    _dense({"format": "youcook2", "annotations": str(f)}, folder)


DENSE_FORMAT_TARGETS = [
    Target("activitynet", ANET, _activitynet, 40),
    Target("youcook2", YC2, _youcook2, 40, always=({"0": {"duration": 1, "subset": []}},)),  # unhashable subset
]
