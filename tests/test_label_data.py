"""Labelled video datasets: the ``labels``, ``kinetics`` and ``ucf101`` formats (bad rows named and
counted, unknown labels an error), training on label prompts, and ``vcap eval-classify`` with a
base/novel label partition."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caption.config import load
from retrieval_pretrain.reading.annotation_table import AnnotationError
from retrieval_pretrain.reading.annotations import load_annotations
from vcap_toolkit.cli.main import main


def _data(tmp_path: Path, fmt: str, annotations: Path | str = "", **extra: str) -> object:
    overrides = [f"data.format={fmt}", f"data.annotations={annotations}", f"data.videos={tmp_path}"]
    overrides += [f"data.{k}={v}" for k, v in extra.items()]
    return load(None, overrides).data


def test_labels_jsonl_and_csv_rows(tmp_path):
    (tmp_path / "l.jsonl").write_text("\n".join([
        json.dumps({"video": "a.mp4", "label": "running", "split": "train"}),
        json.dumps({"video": "b.mp4", "label": "", "split": "train"}),
        "{not json",
        json.dumps({"video": "c.mp4", "label": "jumping", "split": "test"})]) + "\n")
    ann = load_annotations(_data(tmp_path, "labels", tmp_path / "l.jsonl"))
    assert [(e.video_id, e.label, e.captions, e.split) for e in ann.entries] == [
        ("a", "running", ["running"], "train"), ("c", "jumping", ["jumping"], "test")]
    assert [(q.source, q.reason.split(";")[0]) for q in ann.problems] == [
        (f"{tmp_path / 'l.jsonl'}:2", "needs non-empty string(s) label"),
        (f"{tmp_path / 'l.jsonl'}:3", "not valid JSON (Expecting property name enclosed in double quotes)")]
    (tmp_path / "l.csv").write_text("video,label,split\nsub/a.avi,running,train\nsub/b.avi,walking,val\n")
    ann = load_annotations(_data(tmp_path, "labels", tmp_path / "l.csv"))
    assert [(e.video_id, e.path, e.label) for e in ann.entries] == [
        ("sub/a", tmp_path / "sub/a.avi", "running"), ("sub/b", tmp_path / "sub/b.avi", "walking")]
    (tmp_path / "classes.txt").write_text("running\njumping\n")
    with pytest.raises(AnnotationError, match=rf"{tmp_path / 'l.csv'}:3: label 'walking' is not in data.labels_file"):
        load_annotations(_data(tmp_path, "labels", tmp_path / "l.csv", labels_file=str(tmp_path / "classes.txt")))


def test_kinetics_csv_files_in_flat_and_per_label_folders(tmp_path):
    (tmp_path / "arm wrestling").mkdir()
    (tmp_path / "arm wrestling" / "abc_000010_000020.mp4").write_bytes(b"x")
    (tmp_path / "xyz_000003_000013.mp4").write_bytes(b"x")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                                    "arm wrestling,abc,10,20,train,0\nabseiling,xyz,3,13,val,0\n"
                                    "abseiling,qqq,three,13,val,0\n")
    ann = load_annotations(_data(tmp_path, "kinetics", tmp_path / "k.csv"))
    assert [(str(e.path.relative_to(tmp_path)), e.label, e.split) for e in ann.entries] == [
        ("arm wrestling/abc_000010_000020.mp4", "arm wrestling", "train"),
        ("xyz_000003_000013.mp4", "abseiling", "val")]
    assert [q.source for q in ann.problems] == [f"{tmp_path / 'k.csv'}:4"]
    assert "not numbers" in ann.problems[0].reason


def test_ucf101_split_lists(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (tmp_path / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g08_c01.avi 2\n")
    (tmp_path / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\n")
    data = load(None, ["data.format=ucf101", f"data.annotations={tmp_path / 'classInd.txt'}", f"data.videos={tmp_path}",
                       f"data.split_files={{train: {tmp_path / 'trainlist01.txt'}, test: {tmp_path / 'testlist01.txt'}}}"]).data
    ann = load_annotations(data)
    assert [(e.label, e.split) for e in ann.entries] == [("apply eye makeup", "train"), ("yo yo", "train"),
                                                         ("yo yo", "test")]
    (tmp_path / "testlist01.txt").write_text("Skijet/v_Skijet_g01_c01.avi\n")
    with pytest.raises(AnnotationError, match=rf"{tmp_path / 'testlist01.txt'}:1: class 'Skijet' is not in"):
        load_annotations(data)


def test_hmdb51_split_files(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\nbroken line here\n")
    (splits / "brush_hair_test_split2.txt").write_text("a.avi 2\n")
    ann = load_annotations(_data(tmp_path, "hmdb51", splits / "*_test_split1.txt"))
    assert [(e.video_id, e.label, e.split) for e in ann.entries] == [("brush_hair/a", "brush hair", "train"),
                                                                      ("brush_hair/b", "brush hair", "test")]
    assert [q.source for q in ann.problems] == [f"{splits / 'brush_hair_test_split1.txt'}:4"]
    with pytest.raises(AnnotationError, match="no HMDB51 split files match"):
        load_annotations(_data(tmp_path, "hmdb51", splits / "*_split9.txt"))


@pytest.fixture(scope="module")
def labelled(motion_model, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The motion clips as a labelled dataset (train: the 16 training clips, test: the 4 others),
    and a novel-label file holding two of the motions."""
    model, truth = motion_model
    root = tmp_path_factory.mktemp("labelled")
    videos = sorted(truth)
    rows = [{"video": v, "label": truth[v], "split": "train" if i < 16 else "test"} for i, v in enumerate(videos)]
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = sorted(set(truth.values()))
    (root / "novel.txt").write_text("\n".join(labels[:2]) + "\n")
    return model, root, labels


def test_eval_classify_reports_base_and_novel_accuracy(labelled, tmp_path, capsys):
    model, root, labels = labelled
    args = ["--config", "unused", "data.format=labels", f"data.annotations={root / 'labels.jsonl'}", "data.videos=/",
            "run.num_workers=0", "video.num_frames=4"]
    assert main(["eval-classify", *args[2:], "--model", str(model), "--split", "train", "--template", "{}",
                 "--output", str(tmp_path / "out")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["labels"] == len(labels) and metrics["videos"] > 0
    assert 0 <= metrics["mean_class_accuracy"] <= 1 and metrics["top1"] <= metrics["top5"]
    assert metrics["top1"] >= 2 / len(labels)  # the model was trained on these prompts
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert main(["eval-classify", *args[2:], f"data.novel_labels={root / 'novel.txt'}", "--model", str(model),
                 "--split", "train", "--template", "{}", "--output", str(tmp_path / "out2")]) == 0
    split = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert split["base"]["videos"] + split["novel"]["videos"] == metrics["videos"]
    b, n = split["base"]["top1"], split["novel"]["top1"]
    assert split["harmonic_mean"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0, abs=1e-5)
    # a malformed row is named, counted and listed (exit 1); a novel label no video has is an error
    bad = tmp_path / "with_bad_row.jsonl"
    bad.write_text((root / "labels.jsonl").read_text() + '{"video": "x.mp4", "label": 7, "split": "train"}\n')
    assert main(["eval-classify", "data.format=labels", f"data.annotations={bad}", "data.videos=/", "run.num_workers=0",
                 "video.num_frames=4", "--model", str(model), "--split", "train", "--output", str(tmp_path / "o3")]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["annotation_problems"] == 1 and f"{bad}:21" in out.err
    assert json.loads((tmp_path / "o3" / "skipped.json").read_text())["annotation_problems"][0]["source"] == f"{bad}:21"
    (tmp_path / "typo.txt").write_text("moving sideways\n")
    assert main(["eval-classify", *args[2:], f"data.novel_labels={tmp_path / 'typo.txt'}", "--model", str(model),
                 "--split", "train", "--output", str(tmp_path / "o4")]) == 3
    assert "1 label(s) no video has: 'moving sideways'" in capsys.readouterr().err


def test_pretrain_on_labels_holds_out_the_novel_labels(labelled, tmp_path, capsys):
    """Training on a labelled dataset: prompts as texts, novel labels' videos held out."""
    from conftest import MOTION_TINY

    from caption.demo import CONFIG_PATH
    from retrieval_pretrain.stage1.train import train

    model, root, labels = labelled
    cfg = load(CONFIG_PATH, [*MOTION_TINY, "data.format=labels", f"data.annotations={root / 'labels.jsonl'}",
                             "data.videos=/", f"data.novel_labels={root / 'novel.txt'}", "pretrain.epochs=1",
                             f"pretrain.init_from={model}"])
    train(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert f"the {2} labels in data.novel_labels are held out" in err
    novel = set(labels[:2])
    rows = [json.loads(x) for x in (root / "labels.jsonl").read_text().splitlines()]
    base_train = [r for r in rows if r["split"] == "train" and r["label"] not in novel]
    assert f"stage 1: training on {len(base_train)} videos of base labels" in err


def test_label_rows_whose_video_or_times_are_bad_are_named_problems(tmp_path):
    """``/`` / ``.`` videos, a youtube_id leaving the folder and infinite times were tracebacks (issue 25)."""
    (tmp_path / "l.csv").write_text("video,label,split\na.mp4,running,train\n/,running,train\n.,running,test\n")
    ann = load_annotations(_data(tmp_path, "labels", tmp_path / "l.csv"))
    assert [(e.video_id, e.path, e.captions) for e in ann.entries] == [("a", tmp_path / "a.mp4", ["running"])]
    assert [q.source for q in ann.problems] == [f"{tmp_path / 'l.csv'}:{n}" for n in (3, 4)]
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,xyz,3,13,val\n"
                                    "abseiling,../x,3,13,val\nabseiling,q1,inf,13,val\nabseiling,q2,nan,1,val\n"
                                    "abseiling,q3,-1,13,val\nabseiling,q4,20,13,val\n")
    ann = load_annotations(_data(tmp_path, "kinetics", tmp_path / "k.csv"))
    assert [(e.path, e.label) for e in ann.entries] == [(tmp_path / "xyz_000003_000013.mp4", "abseiling")]
    assert [q.source for q in ann.problems] == [f"{tmp_path / 'k.csv'}:{n}" for n in range(3, 8)]
    assert "leave the video folder" in ann.problems[0].reason and "finite" in ann.problems[1].reason


_CELL = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.lists(st.text(max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"video": st.sampled_from(["a.mp4", "/", ".", "..", "x/", "s/b.avi"]) | _CELL,
                                            "label": _CELL, "split": st.sampled_from(["train", "test"]) | _CELL}),
                     max_size=5), as_csv=st.booleans())
def test_labels_property_rows_become_entries_or_named_problems(tmp_path, rows, as_csv):
    f = tmp_path / ("fuzz.csv" if as_csv else "fuzz.jsonl")
    if as_csv:
        with open(f, "w", newline="") as out:
            w = csv.writer(out)
            w.writerows([["video", "label", "split"]] + [[str(r[k]) for k in ("video", "label", "split")] for r in rows])
    else:
        f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ann = load_annotations(_data(tmp_path, "labels", f), warn=False)
    for e in ann.entries:
        assert e.captions == [e.label] and isinstance(e.label, str) and e.label.strip()
        assert e.path.name not in ("", ".", "..") and e.path.is_relative_to(tmp_path)
    assert all(q.source.startswith(f"{f}:") for q in ann.problems)
