"""Issue 25, class 3 for the benchmark and label formats, Hugging Face parquet / csv tables, and the
small items: each cell is checked where it is read, a bad row is named (``file:line`` or
``file (id)``), counted and skipped without changing how the other rows are read; ``vcap score``
refuses a file it cannot read whole before reading it; a config override's error names the override
and the file it applies to; the memory check names a value of the setting to change. Each test
failed (a traceback, or a silently kept bad row) before its fix."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caption.caption_files import load_references, score_files
from caption.config import load
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError
from retrieval_pretrain.foundation.machine import check_fits_memory, memory_bytes
from retrieval_pretrain.reading.annotation_table import AnnotationError
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.data_config import DataConfig
from vcap_toolkit.cli.main import main

ESCAPES = ["/", ".", "..", "../x", "a/b", "", "a\x00b", "a\nb", "y" * 300]


def _read(tmp_path: Path, **data) -> tuple[list, list]:
    ann = load_annotations(DataConfig(videos=str(tmp_path / "v"), **data), warn=False)
    return ([(e.video_id, e.path, e.captions, e.split) for e in ann.entries],
            [(q.source.replace(str(tmp_path), ""), q.reason) for q in ann.problems])


def test_msrvtt_ids_that_name_no_single_file_are_named_problems(tmp_path):
    videos = [{"video_id": "video1", "split": "train"}] + [{"video_id": v, "split": "train"} for v in ESCAPES]
    videos += [{"video_id": 5, "split": "train"}, {"video_id": "video2", "split": " "}]
    sentences = [{"video_id": v["video_id"], "caption": "a cat"} for v in videos if isinstance(v["video_id"], str)]
    (tmp_path / "m.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    entries, problems = _read(tmp_path, format="msrvtt", annotations=str(tmp_path / "m.json"))
    assert entries == [("video1", tmp_path / "v" / "video1.mp4", ["a cat"], "train")]
    assert [s for s, _ in problems] == [f"/m.json (videos[{i}])" for i in range(1, len(videos))]
    assert "is not one file name" in problems[0][1] and "too long to be a file name" in problems[8][1]
    assert "control character" in problems[7][1] and "must be a string, got int" in problems[9][1]
    assert "'split' must be a non-empty string" in problems[10][1]


def test_clip4clip_csv_rows_header_and_parse_errors(tmp_path):
    f = tmp_path / "test.csv"
    f.write_text('video_id,sentence\nvideo7010,a cat\nvideo7011,a dog, sitting\n/,x\nvideo7012,\n"v\nx",y\n')
    entries, problems = _read(tmp_path, format="msrvtt-clip4clip", split_files={"test": str(f)})
    assert [(e[0], e[2]) for e in entries] == [("video7010", ["a cat"])]
    assert [s for s, _ in problems] == ["/test.csv:3", "/test.csv:4", "/test.csv:5", "/test.csv:7"]
    assert "3 cells for 2 columns (an unquoted comma?)" in problems[0][1]  # was: 'a dog' with exit 0
    assert problems[2][1] == "empty sentence for 'video7012'; skipped"  # counted once (was twice)
    f.write_text("video_id,video_id,sentence\nvideo1,video2,a cat\n")
    with pytest.raises(AnnotationError, match="'video_id' appear more than once in the header"):
        _read(tmp_path, format="msrvtt-clip4clip", split_files={"test": str(f)})
    f.write_text("video_id,sentence\n" + "a" * 200_000 + ",x\n")
    with pytest.raises(AnnotationError, match=rf"{f}:2: not valid csv: field larger than field limit"):
        _read(tmp_path, format="msrvtt-clip4clip", split_files={"test": str(f)})


def test_msvd_list_ids_and_youtube_names_that_leave_the_folder(tmp_path):
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({f"vid{i}": [["a", "cat"]] for i in range(1, 5)} | {"..": [["x"]]}))
    (tmp_path / "train.txt").write_text("vid1\n..\n/\nvid2\nvid3\nvid4\n")
    (tmp_path / "map.txt").write_text("yt1_0_5 vid1\n../../etc/x vid2\nyt3_0_5 vid1\nyt1_0_5 vid3\n")
    split_files = {"train": str(tmp_path / "train.txt"), "youtube_mapping": str(tmp_path / "map.txt")}
    entries, problems = _read(tmp_path, format="msvd", annotations=str(tmp_path / "raw.pkl"), split_files=split_files)
    assert [(e[0], e[1].name) for e in entries] == [("vid1", "yt1_0_5.avi"), ("vid2", "vid2.mp4"),
                                                     ("vid3", "vid3.mp4"), ("vid4", "vid4.mp4")]
    assert [s for s, _ in problems] == ["/map.txt:2", "/map.txt:3", "/map.txt:4", "/train.txt:2", "/train.txt:3"]
    assert "'vid1' is already mapped on line 1" in problems[1][1] and "'yt1_0_5' is already mapped" in problems[2][1]


def test_vatex_ids_and_encap_of_the_wrong_type(tmp_path):
    items = [{"videoID": "ok", "enCap": ["a cat"]}] + [{"videoID": v, "enCap": ["x"]} for v in ("/", "..", "../x")]
    items += [{"videoID": "b", "enCap": 0}, {"videoID": "c", "enCap": ""}, {"videoID": "d", "enCap": []}, "str"]
    (tmp_path / "train.json").write_text(json.dumps(items))
    entries, problems = _read(tmp_path, format="vatex", split_files={"train": str(tmp_path / "train.json")})
    assert [e[0] for e in entries] == ["ok"]
    assert [r for _, r in problems][3:] == ["enCap: captions must be a list, got int; skipped",
                                            "enCap: captions must be a list, got str; skipped",
                                            "video 'd' has no captions; skipped",
                                            "needs an object with 'videoID' and 'enCap', got str; skipped"]


def test_ucf101_lines_that_escape_or_disagree_with_classind(tmp_path):
    (tmp_path / "ind.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (tmp_path / "train.txt").write_text("YoYo/v_a.avi 2\nYoYo/../../../etc/passwd 2\nYoYo/. 2\n/abs/x.avi 1\n"
                                        "YoYo/v_b.avi 1\nYoYo/v_c.avi\nYoYo/v_d.avi\x00 2\n")
    entries, problems = _read(tmp_path, format="ucf101", annotations=str(tmp_path / "ind.txt"),
                              split_files={"train": str(tmp_path / "train.txt")})
    assert [(e[0], e[2]) for e in entries] == [("YoYo/v_a", ["yo yo"]), ("YoYo/v_c", ["yo yo"])]
    assert [s for s, _ in problems] == [f"/train.txt:{n}" for n in (2, 3, 4, 5, 7)]
    assert "class number '1' is not YoYo's (2 in" in problems[3][1]  # was: labelled 'yo yo' without a word
    for ind, why in [("1 A\n1 B\n", "number 1 .* is given twice"), ("1 A\n2 A\n", "class 'A' is given twice"),
                     ("1 ..\n", "not one file name"), ("١ A\n", "not a classInd line")]:
        (tmp_path / "ind.txt").write_text(ind)
        with pytest.raises(AnnotationError, match=why):
            _read(tmp_path, format="ucf101", annotations=str(tmp_path / "ind.txt"),
                  split_files={"train": str(tmp_path / "train.txt")})


def test_hmdb51_videos_that_name_a_folder_and_files_that_name_no_class(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "brush_hair_test_split1.txt").write_text("a.avi 1\n/ 1\n.. 2\n../../x.avi 1\nb.avi 2\n")
    entries, problems = _read(tmp_path, format="hmdb51", annotations=str(tmp_path / "s" / "*_test_split1.txt"))
    assert [(e[0], e[3]) for e in entries] == [("brush_hair/a", "train"), ("brush_hair/b", "test")]
    assert [s for s, _ in problems] == [f"/s/brush_hair_test_split1.txt:{n}" for n in (2, 3, 4)]
    (tmp_path / "s" / "_test_split1.txt").write_text("c.avi 1\n")  # was: videos at <videos>/c.avi, label ''
    with pytest.raises(AnnotationError, match="empty class"):
        _read(tmp_path, format="hmdb51", annotations=str(tmp_path / "s" / "*_test_split1.txt"))


def test_kinetics_times_whose_file_name_cannot_exist(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nrun,q,0,10,train\n"
                                    "run,q2,0,1e300,train\nrun," + "y" * 250 + ",0,10,train\nrun,q3,0,5,a\x01b\n")
    entries, problems = _read(tmp_path, format="kinetics", annotations=str(tmp_path / "k.csv"))
    assert [e[1].name for e in entries] == ["q_000000_000010.mp4"]
    assert [s for s, _ in problems] == ["/k.csv:3", "/k.csv:4", "/k.csv:5"]  # were: OSError File name too long
    assert "< 1e6 s" in problems[0][1] and "too long" in problems[1][1] and "control" in problems[2][1]


def test_hf_parquet_and_csv_cells(tmp_path):
    pq.write_table(pa.table({"video": ["a.mp4", "y" * 300, "/", None], "captions": ["a", "b", "c", "d"],
                             "split": ["train", "train", "train", "train"]}), tmp_path / "t.parquet")
    entries, problems = _read(tmp_path, format="hf", annotations=str(tmp_path / "t.parquet"))
    assert [e[0] for e in entries] == ["a"]  # row 1 was an OSError (File name too long)
    assert [s for s, _ in problems] == [f"/t.parquet:row {n}" for n in (1, 2, 3)]
    (tmp_path / "t.csv").write_text("video,video,captions,split\na.mp4,b.mp4,x,train\n")
    with pytest.raises(AnnotationError, match="'video' appear more than once"):  # was: one of them, silently
        _read(tmp_path, format="hf", annotations=str(tmp_path / "t.csv"))
    (tmp_path / "t.csv").write_text("video,captions,split\na.mp4,x,train\nb.mp4,x,train,extra\n")
    with pytest.raises(AnnotationError) as err:
        _read(tmp_path, format="hf", annotations=str(tmp_path / "t.csv"))
    assert "\n" not in str(err.value) and "Expected 3 fields in line 3, saw 4" in str(err.value)


# ----------------------------------------------------------------------------- vcap score's files


def _score(capsys, predictions: str | Path, references: str | Path) -> tuple[int, list[str]]:
    code = main(["score", "--predictions", str(predictions), "--references", str(references), "--tokenize", "none"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_score_refuses_what_is_not_a_regular_file_or_too_large_before_reading(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps({"v1": ["a cat"]}))
    os.mkfifo(tmp_path / "fifo")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(600 * 2**20)  # sparse: nothing is written
    for path, why in [("/dev/zero", "not a regular file (a device, fifo or socket)"),
                      (tmp_path / "fifo", "not a regular file (a device, fifo or socket)"),
                      (tmp_path, "not a regular file (a folder)"),
                      (big, "600 MB, more than the 512 MB a predictions or references file may have")]:
        code, err = _score(capsys, path, tmp_path / "r.json")  # /dev/zero and the fifo never returned
        assert (code, err) == (3, [f"vcap: dataset error: {path}: {'cannot be read: ' if 'regular' in why else ''}"
                                   f"{why}" + ("; give a JSON file" if "regular" in why else "")])


def test_dense_results_that_are_not_an_object_or_start_before_zero(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"results": []}))
    (tmp_path / "r.json").write_text(json.dumps({"v1": {"duration": 10, "timestamps": [[0, 2]], "sentences": ["a"]}}))
    code, err = _score(capsys, tmp_path / "p.json", tmp_path / "r.json")
    assert code == 3 and err[-1].endswith('its "results" is a list, not an object of videos')  # was: no results
    # segments before 0 s: counted in one warning per file, scored as given (v9 is in no reference file and
    # v1 has no rows, so nothing runs METEOR here: the scoring itself is tests/test_dense_metrics.py's)
    (tmp_path / "p.json").write_text(json.dumps({"results": {"v9": [{"sentence": "a", "timestamp": [-3, 2]},
                                                                    {"sentence": "b", "timestamp": [-1, 1]}],
                                                             "v1": []}}))
    (tmp_path / "r.json").write_text(json.dumps({"v1": {"timestamps": [[0, 2], [-0.5, 1]], "sentences": ["a", "b"]}}))
    metrics = score_files(tmp_path / "p.json", tmp_path / "r.json", tokenize="none")
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'p.json'}: 2 segment(s) start before 0 s (first: video 'v9', segment 0)" in err
    assert f"warning: {tmp_path / 'r.json'}: 1 segment(s) start before 0 s (first: video 'v1', segment 1)" in err
    assert metrics["videos"] == {"references": 1, "predicted": 1, "ignored": 1}


def test_reference_lists_with_an_empty_caption_or_an_id_that_is_not_one(tmp_path):
    for items, why in [([{"video_id": "v1", "caption": ""}], "no non-empty string 'caption'"),
                       ([{"video_id": None, "caption": "a"}], "'video_id' must be a string or an integer"),
                       ([{"image_id": 1.5, "caption": "a"}], "'image_id' must be a string or an integer")]:
        (tmp_path / "r.json").write_text(json.dumps(items))
        with pytest.raises(DatasetError, match=why):
            load_references(tmp_path / "r.json")
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 7, "caption": "a"}]))
    assert load_references(tmp_path / "r.json") == {"7": ["a"]}


# ----------------------------------------------------------------------------- overrides, memory


def test_an_override_error_names_the_override_and_the_file_it_applies_to(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("video:\n  num_frames: 4\ncaption:\n  hidden_size: 512\n")
    for overrides, message in [
        (["video.num_frames=0"], f"override 'video.num_frames=0' (over {good}): video.num_frames: 0 must be in [1, 4096]"),
        (["nokey=1"], f"override 'nokey=1' (over {good}): unknown config key 'nokey'"),
        (["video.num_frames=[1"], f"override 'video.num_frames=[1' (over {good}): the value is not valid YAML"),
        (["caption.num_heads=7"], f"{good} with override 'caption.num_heads=7': caption.hidden_size=512 is not a "
                                  "multiple of caption.num_heads=7"),  # both set what the check is about
        (["caption.label_smoothing=" + "2" * 400], "is too large a number"),  # was: OverflowError
    ]:
        with pytest.raises(ConfigError) as err:
            load(good, overrides)
        assert str(err.value).startswith(message) or message in str(err.value), str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("video:\n  num_frames: 0\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: video.num_frames: 0 must be in \[1, 4096\]$"):
        load(bad, ["caption.batch_size=4"])  # the file's own key: the file, as before


def test_the_memory_check_names_the_largest_value_that_fits():
    need = memory_bytes() + 1  # twice what may be used: half the value fits (rounded down)
    with pytest.raises(ConfigError) as err:
        check_fits_memory(need, "video.cache_frames=10: the cache", settings={"video.cache_frames": 10, "n": 1})
    assert str(err.value).endswith("; lower video.cache_frames to at most 4 (now 10)")
    with pytest.raises(ConfigError, match="; even 1 for a and b takes too much; or do less$"):
        check_fits_memory(need * 4, "it", "or do less", settings={"a": 2, "b": 1})
    check_fits_memory(1000, "it", settings={"a": 2})  # fits: nothing said
