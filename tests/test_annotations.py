"""Annotation formats -> one table, on the real benchmark files in ../shared/data and small files
written here (malformed lines, a malicious pickle)."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval_pretrain.reading.annotations import AnnotationError, load_annotations
from retrieval_pretrain.reading.data_config import DataConfig


def n_captions(entries) -> int:
    return sum(len(e.captions) for e in entries)


# ----------------------------------------------------------------------------- msrvtt


def test_msrvtt_official_val_test(shared_data: Path, tmp_path: Path):
    ann_file = shared_data / "annotations/msrvtt/msrvtt_val_test_videodatainfo.json"
    ann = load_annotations(DataConfig(format="msrvtt", annotations=str(ann_file), videos=str(tmp_path)))
    assert ann.problems == []
    assert ann.splits() == ["val", "test"]  # "validate" normalised
    val, test = ann.split("val"), ann.split("test")
    assert (len(val), len(test)) == (497, 2990)
    assert ann.split("validate") == val
    assert (n_captions(val), n_captions(test)) == (497 * 20, 2990 * 20)
    assert n_captions(ann.entries) == 69740
    assert val[0].video_id == "video6513" and test[0].video_id == "video7010"
    assert test[-1].video_id == "video9999"
    assert val[0].path == tmp_path / "video6513.mp4"  # no file: keeps .mp4
    assert all(c == c.strip() and c for e in ann.entries for c in e.captions)


def test_msrvtt_video_ext_fallback_and_problems(tmp_path: Path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "video1.webm").write_bytes(b"")
    doc = {"videos": [{"video_id": "video0", "split": "train", "id": 0},
                      {"video_id": "video1", "split": "validate", "id": 1},
                      {"video_id": "video2", "split": "test", "id": 2},
                      {"split": "test"}],
           "sentences": [{"video_id": "video0", "caption": " a dog runs ", "sen_id": 0},
                         {"video_id": "video1", "caption": "a cat sits", "sen_id": 1},
                         {"video_id": "video1", "caption": "   ", "sen_id": 2},
                         {"video_id": "video9", "caption": "orphan", "sen_id": 3},
                         {"caption": "no id", "sen_id": 4}]}
    f = tmp_path / "info.json"
    f.write_text(json.dumps(doc))
    ann = load_annotations(DataConfig(format="msrvtt", annotations=str(f), videos=str(tmp_path / "v")))
    assert [(e.video_id, e.split) for e in ann.entries] == [("video0", "train"), ("video1", "val")]
    assert ann.entries[0].captions == ["a dog runs"]
    assert ann.entries[0].path == tmp_path / "v" / "video0.mp4"
    assert ann.entries[1].path == tmp_path / "v" / "video1.webm"
    reasons = {q.source: q.reason for q in ann.problems}
    assert len(ann.problems) == 5, ann.problems
    assert any("empty caption" in r for r in reasons.values())
    assert any("video2" in s and "no captions" in r for s, r in reasons.items())
    assert any("video9" in s and "not in 'videos'" in r for s, r in reasons.items())
    assert any("videos[3]" in s for s in reasons)
    assert any("sentences[4]" in s for s in reasons)


def test_msrvtt_clip4clip_test_split_from_csv_alone(shared_data: Path, tmp_path: Path):
    csv_file = shared_data / "annotations/msrvtt/MSRVTT_JSFUSION_test.csv"
    ann = load_annotations(DataConfig(format="msrvtt-clip4clip", videos=str(tmp_path),
                                      split_files={"test": str(csv_file)}))
    test = ann.split("test")
    assert ann.problems == [] and ann.splits() == ["test"]
    assert len(test) == 1000
    assert all(len(e.captions) == 1 for e in test)
    assert (test[0].video_id, test[0].captions) == ("video9770", ["a person is connecting something to system"])
    assert test[0].path == tmp_path / "video9770.mp4"


def test_msrvtt_clip4clip_train_captions_from_json(shared_data: Path, tmp_path: Path):
    # A small MSRVTT_data.json in the official layout (no 'videos' list, as CLIP4Clip's may lack it).
    sentences = [{"video_id": f"video{i}", "caption": f"caption {j} of video {i}", "sen_id": 100 * i + j}
                 for i in range(3) for j in range(2)]
    sentences.append({"video_id": "video9770", "caption": "json caption ignored for the csv split", "sen_id": 9})
    data_json = tmp_path / "MSRVTT_data.json"
    data_json.write_text(json.dumps({"sentences": sentences}))
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("video_id\nvideo0\nvideo1\nvideo2\nvideo3\n\n")
    ann = load_annotations(DataConfig(
        format="msrvtt-clip4clip", annotations=str(data_json), videos=str(tmp_path),
        split_files={"train": str(train_csv),
                     "test": str(shared_data / "annotations/msrvtt/MSRVTT_JSFUSION_test.csv")}))
    train = ann.split("train")
    assert [e.video_id for e in train] == ["video0", "video1", "video2"]
    assert train[1].captions == ["caption 0 of video 1", "caption 1 of video 1"]
    assert len(ann.split("test")) == 1000 and n_captions(ann.split("test")) == 1000
    assert ann.split("test")[0].captions == ["a person is connecting something to system"]
    # video3 is in the csv but has no caption in the json; the blank line is no entry at all
    assert [(q.source, "no captions" in q.reason) for q in ann.problems] == [(f"{train_csv}:5", True)]


def test_msrvtt_clip4clip_train_split_needs_json(shared_data: Path):
    train_csv = shared_data / "annotations/msrvtt/MSRVTT_train.9k.csv"
    with pytest.raises(AnnotationError, match="MSRVTT_train.9k.csv.*data.annotations"):
        load_annotations(DataConfig(format="msrvtt-clip4clip", split_files={"train": str(train_csv)}))


# ----------------------------------------------------------------------------- msvd


def msvd_config(shared_data: Path, videos: Path, youtube: bool = True) -> DataConfig:
    d = shared_data / "annotations/msvd"
    files = {s: str(d / f"{s}_list_mapping.txt") for s in ("train", "val", "test")}
    if youtube:
        files["youtube_mapping"] = str(d / "youtube_mapping.txt")
    return DataConfig(format="msvd", annotations=str(d / "raw-captions_mapped.pkl"), videos=str(videos),
                      split_files=files)


def test_msvd_standard_split(shared_data: Path, tmp_path: Path):
    ann = load_annotations(msvd_config(shared_data, tmp_path))
    assert ann.problems == []
    assert ann.splits() == ["train", "val", "test"]
    assert [len(ann.split(s)) for s in ("train", "val", "test")] == [1200, 100, 670]
    assert n_captions(ann.entries) == 80827
    first = ann.split("train")[0]
    assert first.video_id == "vid1"
    assert first.captions[0] == "a squirrel is eating a peanut in it s shell"  # tokens joined
    assert first.path == tmp_path / "-4wsuPCjDBc_5_15.avi"
    assert ann.split("val")[0].video_id == "vid1201" and ann.split("test")[0].video_id == "vid1301"


def test_msvd_without_youtube_mapping_uses_vid_names(shared_data: Path, tmp_path: Path):
    (tmp_path / "vid2.avi").write_bytes(b"")
    ann = load_annotations(msvd_config(shared_data, tmp_path, youtube=False))
    by_id = {e.video_id: e for e in ann.entries}
    assert by_id["vid1"].path == tmp_path / "vid1.mp4"  # first of data.video_ext, none exists
    assert by_id["vid2"].path == tmp_path / "vid2.avi"  # the one that exists


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_msvd_malicious_pickle_is_refused_unrun(tmp_path: Path):
    _Evil.marker = tmp_path / "pwned"
    bad = tmp_path / "raw-captions.pkl"
    bad.write_bytes(pickle.dumps({"vid1": [["a", "dog"]], "x": _Evil()}))
    ids = tmp_path / "train.txt"
    ids.write_text("vid1\n")
    with pytest.raises(AnnotationError) as err:
        load_annotations(DataConfig(format="msvd", annotations=str(bad), split_files={"train": str(ids)}))
    assert str(bad) in str(err.value) and "system" in str(err.value)
    assert not _Evil.marker.exists()


def test_msvd_plain_pickle_problems(tmp_path: Path):
    f = tmp_path / "caps.pkl"
    f.write_bytes(pickle.dumps({"vid1": [["a", "dog"], "a cat", ["a", 3]], "vid2": []}))
    ids = tmp_path / "test.txt"
    ids.write_text("vid1\nvid2\nvid3\n")
    ann = load_annotations(DataConfig(format="msvd", annotations=str(f), videos=str(tmp_path),
                                      split_files={"test": str(ids)}))
    assert [(e.video_id, e.captions) for e in ann.entries] == [("vid1", ["a dog", "a cat"])]
    sources = [q.source for q in ann.problems]
    assert sources == [f"{f} (vid1 caption 2)", f"{ids}:2", f"{ids}:3"]


# ----------------------------------------------------------------------------- vatex


def test_vatex_one_file_per_split(tmp_path: Path):
    train, val = tmp_path / "vatex_training.json", tmp_path / "vatex_validation.json"
    train.write_text(json.dumps([
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["A man plays.", " A guy plays. "], "chCap": ["..."]},
        {"videoID": "abc_000001_000011", "enCap": []},
        {"videoID": "bad_000001_000011", "enCap": ["ok", 5]},
    ]))
    val.write_text(json.dumps([{"videoID": "G0mjFqytJt4_000152_000162", "enCap": ["a boy folds a plane"]}]))
    ann = load_annotations(DataConfig(format="vatex", videos=str(tmp_path),
                                      split_files={"train": str(train), "validation": str(val)}))
    assert ann.splits() == ["train", "val"]
    e = ann.split("train")[0]
    assert (e.video_id, e.captions, e.path) == ("Ptf_2VRj-V0_000122_000132", ["A man plays.", "A guy plays."],
                                                tmp_path / "Ptf_2VRj-V0_000122_000132.mp4")
    assert ann.split("val")[0].captions == ["a boy folds a plane"]
    assert [("abc" in q.source, "bad" in q.source) for q in ann.problems] == [(True, False), (False, True)]


def test_vatex_single_file_needs_split_keys(tmp_path: Path):
    f = tmp_path / "vatex.json"
    f.write_text(json.dumps([{"videoID": "a", "enCap": ["x"], "split": "train"},
                             {"videoID": "b", "enCap": ["y"], "split": "validation"},
                             {"videoID": "c", "enCap": ["z"]}]))
    ann = load_annotations(DataConfig(format="vatex", annotations=str(f)))
    assert [(e.video_id, e.split) for e in ann.entries] == [("a", "train"), ("b", "val")]
    assert len(ann.problems) == 1 and "item 2" in ann.problems[0].source
    f.write_text(json.dumps([{"videoID": "a", "enCap": ["x"]}]))
    with pytest.raises(AnnotationError, match="split_files"):
        load_annotations(DataConfig(format="vatex", annotations=str(f)))


# ----------------------------------------------------------------------------- jsonl


def test_jsonl_good_and_malformed_lines(tmp_path: Path):
    lines = [
        json.dumps({"video": "clips/a.mp4", "captions": [" a dog runs ", "a dog"], "split": "train"}),  # 1 ok
        "{not json",                                                                                   # 2
        json.dumps({"video": "b.mp4", "split": "train"}),                                              # 3 no captions key
        json.dumps({"video": "c.mp4", "captions": [], "split": "test"}),                               # 4 empty list
        json.dumps({"video": "d.mp4", "captions": ["ok", 7], "split": "test"}),                        # 5 non-string
        "",                                                                                            # 6 blank: ignored
        json.dumps({"video": "clips/a.mp4", "captions": ["again"], "split": "test"}),                  # 7 duplicate
        json.dumps(["a list"]),                                                                        # 8 not an object
        json.dumps({"video": "e.avi", "captions": ["a cat"], "split": "validate"}),                    # 9 ok
    ]
    f = tmp_path / "ann.jsonl"
    f.write_text("\n".join(lines) + "\n")
    ann = load_annotations(DataConfig(format="jsonl", annotations=str(f), videos=str(tmp_path / "v")))
    assert [(e.video_id, e.split, e.captions) for e in ann.entries] == [
        ("clips/a", "train", ["a dog runs", "a dog"]), ("e", "val", ["a cat"])]
    assert ann.entries[0].path == tmp_path / "v" / "clips" / "a.mp4"
    got = {q.source: q.reason for q in ann.problems}
    assert list(got) == [f"{f}:{n}" for n in (2, 3, 4, 5, 7, 8)]
    assert "not valid JSON" in got[f"{f}:2"]
    assert "captions" in got[f"{f}:3"]
    assert "empty captions" in got[f"{f}:4"]
    assert "7" in got[f"{f}:5"]
    assert "duplicate" in got[f"{f}:7"]


def test_missing_file_error_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope" / "ann.jsonl"
    for fmt in ("jsonl", "msrvtt", "msvd", "vatex"):
        with pytest.raises(AnnotationError, match="file not found") as err:
            load_annotations(DataConfig(format=fmt, annotations=str(missing), split_files={}))
        assert str(missing) in str(err.value)
    with pytest.raises(AnnotationError) as err:
        load_annotations(DataConfig(format="msrvtt-clip4clip", split_files={"test": str(missing)}))
    assert str(missing) in str(err.value) and "split_files.test" in str(err.value)


def test_an_annotation_path_that_is_not_a_file_says_what_it_is(tmp_path: Path):
    """A hostile round's find: a folder, a pipe or /dev/zero as data.annotations was 'file not found'."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, what in ((tmp_path, "is a folder, not a file"), (fifo, "is not a regular file"),
                       (Path("/dev/zero"), "is not a regular file")):
        with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}: {what}.* \(data.annotations\)$"):
            load_annotations(DataConfig(format="jsonl", annotations=str(path)))


def test_unreadable_layouts_and_unknown_format(tmp_path: Path):
    f = tmp_path / "x.json"
    f.write_text("{broken")
    with pytest.raises(AnnotationError, match="not valid JSON") as err:
        load_annotations(DataConfig(format="msrvtt", annotations=str(f)))
    assert str(f) in str(err.value)
    f.write_text(json.dumps({"sentences": []}))
    with pytest.raises(AnnotationError, match="videodatainfo"):
        load_annotations(DataConfig(format="msrvtt", annotations=str(f)))
    with pytest.raises(AnnotationError, match="unknown data.format"):
        load_annotations(DataConfig(format="coco", annotations=str(f)))
    with pytest.raises(AnnotationError, match="split_files"):
        load_annotations(DataConfig(format="jsonl", annotations=str(f), split_files={"train": str(f)}))


def test_jsonl_video_that_names_no_file_is_a_named_problem(tmp_path: Path):
    """``/``, ``.``, ``..``, ``x/`` and non-strings were tracebacks or folders (issue 25)."""
    bad = ["/", ".", "..", "clips/", "a/..", 7, None, ["a.mp4"]]
    lines = [json.dumps({"video": "clips/a.mp4", "captions": ["a dog"], "split": "train"})]
    lines += [json.dumps({"video": v, "captions": ["x"], "split": "train"}) for v in bad]
    f = tmp_path / "ann.jsonl"
    f.write_text("\n".join(lines) + "\n")
    ann = load_annotations(DataConfig(format="jsonl", annotations=str(f), videos=str(tmp_path / "v")))
    assert [(e.video_id, e.path, e.captions) for e in ann.entries] == [
        ("clips/a", tmp_path / "v" / "clips" / "a.mp4", ["a dog"])]
    assert [q.source for q in ann.problems] == [f"{f}:{n}" for n in range(2, 2 + len(bad))]
    assert all("video" in q.reason and q.reason.endswith("skipped") for q in ann.problems)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                     max_leaves=6)
_VIDEO = st.sampled_from(["a.mp4", "/", ".", "..", "x/", "../up.mp4", "d/b.avi", " ", "a/..", "...", "a."]) | _JSON


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"video": _VIDEO, "captions": _JSON | st.lists(st.text(max_size=6)),
                                            "split": st.sampled_from(["train", "test", ""]) | _JSON}), max_size=5))
def test_jsonl_property_rows_become_entries_or_named_problems(tmp_path: Path, rows):
    f = tmp_path / "fuzz.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    videos = tmp_path / "v"
    ann = load_annotations(DataConfig(format="jsonl", annotations=str(f), videos=str(videos)), warn=False)
    assert len(ann.entries) + len(ann.problems) == len(rows)
    for e in ann.entries:
        assert e.captions and all(isinstance(c, str) and c.strip() for c in e.captions)
        assert e.path.name not in ("", ".", "..") and e.path.is_relative_to(videos)
    assert all(q.source.startswith(f"{f}:") for q in ann.problems)
