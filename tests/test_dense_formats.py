"""The dense-caption formats on the real annotation files (exact counts, the named defects), jsonl's
``start`` / ``end``; the readers' Hypothesis properties are fuzz targets
(``benchmarks/fuzz_dense_formats.py``, run by tests/test_fuzz_targets.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from retrieval_pretrain.reading.annotation_table import AnnotationError
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.data_check import check_dataset
from retrieval_pretrain.reading.data_config import DataConfig


@pytest.fixture(scope="module")
def anet(shared_data: Path) -> Path:
    return shared_data / "annotations" / "activitynet_captions"


@pytest.mark.parametrize("name,videos,sentences,problems,cut", [
    ("train", 10009, 37421, 4, 29), ("val_1", 4917, 17505, 0, 5), ("val_2", 4885, 17031, 0, 1)])
def test_activitynet_counts(anet: Path, name, videos, sentences, problems, cut):
    ann = load_annotations(DataConfig(format="activitynet", split_files={"train": str(anet / f"{name}.json")},
                                      videos="/nowhere"), warn=False)
    assert len({e.source for e in ann.entries}) == videos
    assert sum(len(e.captions) for e in ann.entries) + len(ann.problems) == sentences
    assert len(ann.problems) == problems and len(ann.clipped) == cut
    raw = json.loads((anet / f"{name}.json").read_text())
    for e in ann.entries[:300]:  # each entry is a segment of its video, inside its duration
        ms = [f"{t:.3f}".rstrip("0").rstrip(".") for t in (e.start, e.end)]
        assert e.video_id == f"{e.source}[{ms[0]}-{ms[1]}]"
        assert 0 <= e.start < e.end <= raw[e.source]["duration"]
        assert e.path == Path("/nowhere") / f"{e.source}.mp4"
        assert all(c == c.strip() and c for c in e.captions)


def test_activitynet_names_the_defective_segments(anet: Path):
    ann = load_annotations(DataConfig(format="activitynet", split_files={"train": str(anet / "train.json")}), warn=False)
    reasons = {q.source.split("(")[-1].rstrip(")"): q.reason for q in ann.problems}
    assert reasons["v_0bosp4-pyTM, segment 3"] == "end before start [61.29, 60.71]; skipped"
    assert reasons["v_rhOtqArO-3Y, segment 5"] == "end before start [173.44, 150.31]; skipped"
    assert sum("zero-length range" in r for r in reasons.values()) == 2
    assert all("past the duration" in q.reason and "0.01 s past" in q.reason for q in ann.clipped)


def test_youcook2_counts(shared_data: Path):
    path = shared_data / "annotations/youcook2/youcookii_annotations_trainval.json"
    ann = load_annotations(DataConfig(format="youcook2", annotations=str(path), videos="/v"), warn=False)
    assert len({e.source for e in ann.entries}) == 1790
    assert {s: len({e.source for e in ann.split(s)}) for s in ann.splits()} == {"train": 1333, "val": 457}
    assert sum(len(e.captions) for e in ann.entries) == 13829 and not ann.problems and not ann.clipped
    assert {s: sum(len(e.captions) for e in ann.split(s)) for s in ann.splits()} == {"train": 10337, "val": 3492}
    first = ann.entries[0]
    assert (first.video_id, first.start, first.end, first.source) == ("GLd3aX16zBg[90-102]", 90.0, 102.0, "GLd3aX16zBg")


def test_youcook2_finds_the_official_download_layout(tmp_path: Path):
    ann_file = tmp_path / "yc2.json"
    ann_file.write_text(json.dumps({"database": {"abc": {
        "duration": 30, "subset": "validation", "recipe_type": "113",
        "annotations": [{"segment": [1, 5], "id": 0, "sentence": "add salt"},
                        {"segment": [1, 5], "id": 1, "sentence": "salt it"},
                        {"segment": [6, 40], "id": 2, "sentence": "stir"}]}}}))
    (tmp_path / "validation" / "113").mkdir(parents=True)
    (tmp_path / "validation" / "113" / "abc.mp4").write_bytes(b"x")
    ann = load_annotations(DataConfig(format="youcook2", annotations=str(ann_file), videos=str(tmp_path)), warn=False)
    assert [(e.video_id, e.captions, e.split) for e in ann.entries] == [
        ("abc[1-5]", ["add salt", "salt it"], "val"), ("abc[6-30]", ["stir"], "val")]
    assert ann.entries[0].path == tmp_path / "validation" / "113" / "abc.mp4"
    assert "ends at 40 s, 10 s past the duration 30 s; cut there" in ann.clipped[0].reason
    s = check_dataset(DataConfig(format="youcook2", annotations=str(ann_file), videos=str(tmp_path)), probe=False)
    assert s["total"] == {"videos": 2, "captions": 3, "source_videos": 1} and s["clipped_segments"]["count"] == 1


def test_jsonl_time_ranges(tmp_path: Path):
    lines = [{"video": "long.mp4", "captions": ["a"], "split": "train", "start": 0, "end": 10},
             {"video": "long.mp4", "captions": ["b"], "split": "train", "start": 10, "end": 20.5},
             {"video": "long.mp4", "captions": ["c"], "split": "train"},
             {"video": "long.mp4", "captions": ["d"], "split": "train", "start": 5},
             {"video": "long.mp4", "captions": ["e"], "split": "train", "start": 5, "end": 2},
             {"video": "long.mp4", "captions": ["f"], "split": "train", "start": -1, "end": 2},
             {"video": "long.mp4", "captions": ["g"], "split": "train", "start": "0", "end": 2},
             {"video": "long.mp4", "captions": ["h"], "split": "train", "start": 0, "end": 1e999},
             {"video": "long.mp4", "captions": ["i"], "split": "train", "start": 1e308, "end": 1.7e308}]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    ann = load_annotations(DataConfig(format="jsonl", annotations=str(path), videos=str(tmp_path)), warn=False)
    assert [(e.video_id, e.start, e.end, e.source) for e in ann.entries] == [
        ("long[0-10]", 0.0, 10.0, "long"), ("long[10-20.5]", 10.0, 20.5, "long"), ("long", None, None, "long")]
    assert [q.reason for q in ann.problems] == [
        "a time range needs both 'start' and 'end' (seconds); skipped",
        "bad time range: end before start [5, 2]; skipped",
        "bad time range: negative start time -1; skipped",
        "bad time range: 'start' must be a number of seconds, got str; skipped",
        "bad time range: 'end' must be finite, got inf; skipped",
        "bad time range: 'start' 1e+308 s is past any video's length (at most 1e+07 s); skipped"]
    assert str(ann.entries[0].clip) == f"{tmp_path / 'long.mp4'} [0-10 s]"


def test_data_check_probe_names_a_range_past_the_end_of_its_video(shared_data: Path, tmp_path: Path):
    """A hostile round's find: ``vcap data check --probe`` said OK about a range [500, 600] s of a
    10-second video, which every run then failed to read."""
    videos = shared_data / "videos" / "mmaction2"
    lines = [{"video": "test.mp4", "captions": ["a"], "split": "train", "start": 1, "end": 3},
             {"video": "test.mp4", "captions": ["b"], "split": "train", "start": 500, "end": 600}]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    data = DataConfig(format="jsonl", annotations=str(path), videos=str(videos))
    s = check_dataset(data, probe=True, progress=False)
    assert not s["ok"] and s["unreadable_videos"]["count"] == 1 and s["unreadable_videos"]["probed"] == 1
    item = s["unreadable_videos"]["items"][0]
    assert item["path"] == str(videos / "test.mp4")
    assert re.fullmatch(rf"{re.escape(str(videos / 'test.mp4'))}: the range 500-600 s starts past the end of the "
                        r"video \([0-9.]+ s long\)", item["reason"]), item
    assert check_dataset(data, probe=False)["ok"]  # without --probe the duration is unknown: said as not probed


@pytest.mark.parametrize("content,fmt,message", [
    ("[1, 2]", "activitynet", "expected ActivityNet Captions' object of videos"),
    ('{"database": []}', "youcook2", "expected YouCook2's"),
    ("[]", "youcook2", "got list"),
])
def test_unreadable_files_are_one_error(tmp_path: Path, content, fmt, message):
    path = tmp_path / "a.json"
    path.write_text(content)
    data = (DataConfig(format=fmt, split_files={"train": str(path)}) if fmt == "activitynet"
            else DataConfig(format=fmt, annotations=str(path)))
    with pytest.raises(AnnotationError, match=message):
        load_annotations(data, warn=False)


# The readers' Hypothesis properties are fuzz targets (benchmarks/fuzz_dense_formats.py), run by
# tests/test_fuzz_targets.py with the other formats' and longer by python -m benchmarks.fuzz.
