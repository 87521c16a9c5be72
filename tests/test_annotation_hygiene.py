"""Annotations that a run would use without a word though they are probably wrong: video paths
outside ``data.videos`` (warned about, kept, listed by ``vcap data check``), and split names no
configured split uses (``Train``, ``dev``, ``testing``: reported by ``vcap data check`` with a hint,
and named when a configured split is empty at training or evaluation time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caption.config import Config
from caption.train_setup import _entries_with_features
from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.data_check import check_dataset, report_text
from retrieval_pretrain.reading.data_config import DataConfig
from retrieval_pretrain.stage1.evaluate import split_entries
from retrieval_pretrain.stage1.training_set import training_entries
from vcap_toolkit.cli.main import main


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    """``(video, split)`` rows, one caption each."""
    path.write_text("".join(json.dumps({"video": v, "captions": [f"caption {i}"], "split": s}) + "\n"
                            for i, (v, s) in enumerate(rows)))
    return path


def jsonl_data(tmp_path: Path, rows: list[tuple[str, str]], **kw) -> DataConfig:
    videos = tmp_path / "videos"
    (videos / "clips").mkdir(parents=True, exist_ok=True)
    for v, _ in rows:
        target = Path(v) if Path(v).is_absolute() else videos / v
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")  # every file exists: only the path itself is in question
    return DataConfig(format="jsonl", annotations=str(write_jsonl(tmp_path / "ann.jsonl", rows)),
                      videos=str(videos), **kw)


# ----------------------------------------------------------------------------- paths outside data.videos


def test_video_paths_outside_the_video_folder_are_kept_warned_and_counted(tmp_path, capsys):
    absolute = tmp_path / "elsewhere" / "y.mp4"
    data = jsonl_data(tmp_path, [("clips/a.mp4", "train"), ("../x.mp4", "train"), (str(absolute), "test"),
                                 ("clips/../clips/b.mp4", "test")])
    ann = load_annotations(data)
    assert len(ann.entries) == 4 and ann.problems == []  # kept: a warning, not a refusal
    ann_file = tmp_path / "ann.jsonl"
    expected = [(f"{ann_file}:2", f"video path '../x.mp4' is outside the video folder {data.videos}"),
                (f"{ann_file}:3", f"video path '{absolute}' is outside the video folder {data.videos}")]
    assert [(q.source, q.reason) for q in ann.outside] == expected
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {src}: {why}" for src, why in expected]  # once per entry

    s = check_dataset(data, progress=False)
    assert capsys.readouterr().err == ""  # data check reports them itself, once
    assert s["ok"] is False and s["problem_count"] == 0 and s["missing_videos"]["count"] == 0
    assert s["outside_videos"] == {"count": 2, "items": [{"source": a, "reason": b} for a, b in expected]}
    text = report_text(s)
    assert "video paths outside the video folder: 2" in text
    assert f"  {ann_file}:2: video path '../x.mp4' is outside the video folder" in text and "NOT OK" in text


def test_benchmark_ids_that_escape_the_video_folder_are_named(tmp_path, capsys):
    vatex = tmp_path / "vatex.json"
    vatex.write_text(json.dumps([{"videoID": "ok1", "enCap": ["a"], "split": "train"},
                                 {"videoID": "../../etc/x", "enCap": ["b"], "split": "train"}]))
    ann = load_annotations(DataConfig(format="vatex", annotations=str(vatex), videos=str(tmp_path / "v")))
    # a benchmark id names one file in the video folder: one that is a path is a named, skipped problem
    assert [e.video_id for e in ann.entries] == ["ok1"] and ann.outside == []
    assert len(ann.problems) == 1 and "../../etc/x" in ann.problems[0].reason


def test_without_data_videos_paths_are_taken_as_given(tmp_path, capsys):
    ann_file = write_jsonl(tmp_path / "ann.jsonl", [("/abs/a.mp4", "train"), ("../b.mp4", "train")])
    ann = load_annotations(DataConfig(format="jsonl", annotations=str(ann_file)))
    assert len(ann.entries) == 2 and ann.outside == [] and capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- split names


NEAR_MISS_ROWS = [("clips/a.mp4", "Train"), ("clips/b.mp4", "dev"), ("clips/c.mp4", "testing"),
                  ("clips/d.mp4", "train"), ("clips/e.mp4", "extra")]


def test_data_check_reports_splits_no_configured_name_uses(tmp_path):
    data = jsonl_data(tmp_path, NEAR_MISS_ROWS)
    s = check_dataset(data, progress=False)
    assert s["ok"] is False and s["problem_count"] == 0
    assert s["unused_splits"] == [
        {"split": "Train", "videos": 1, "hint": "looks like split 'train' (data.train_split): rename it in the "
                                                "annotations, or set data.train_split=Train"},
        {"split": "dev", "videos": 1, "hint": "looks like split 'val' (data.val_split): rename it in the "
                                              "annotations, or set data.val_split=dev"},
        {"split": "extra", "videos": 1},
        {"split": "testing", "videos": 1, "hint": "looks like split 'test' (data.test_split): rename it in the "
                                                  "annotations, or set data.test_split=testing"},
    ]
    text = report_text(s)
    assert "splits not used by data.train_split / val_split / test_split: 4 (never trained or evaluated on)" in text
    assert "  dev (1 videos): looks like split 'val' (data.val_split)" in text and text.endswith("NOT OK")


def test_configured_split_names_make_the_check_ok(tmp_path, capsys):
    data = jsonl_data(tmp_path, [("clips/a.mp4", "training"), ("clips/b.mp4", "validation"),
                                 ("clips/c.mp4", "testing")])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  format: jsonl\n  annotations: {data.annotations}\n  videos: {data.videos}\n")
    assert main(["data", "check", "--config", str(cfg)]) == 1  # 'training' and 'testing' are not used
    unused = json.loads(capsys.readouterr().out.splitlines()[-1])["unused_splits"]
    assert [u["split"] for u in unused] == ["testing", "training"]
    # 'validation' already means 'val' (annotation_table.normalize_split); the other two are configured:
    assert main(["data", "check", "--config", str(cfg), "data.train_split=training",
                 "data.test_split=testing"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["unused_splits"] == []


def test_empty_configured_split_names_the_splits_that_exist(tmp_path):
    cfg = Config()
    cfg.data = jsonl_data(tmp_path, NEAR_MISS_ROWS[:3])  # Train, dev, testing: none configured
    ann = load_annotations(cfg.data)
    found = "splits found: Train, dev, testing"
    with pytest.raises(DatasetError, match=rf"no videos in split 'train' \(data.train_split; {found}; "
                                           r"did you mean 'Train'\?\)"):
        training_entries(ann, cfg)  # stage 1
    with pytest.raises(DatasetError, match=rf"no videos in split 'train' \(data.train_split; {found}; "
                                           r"did you mean 'Train'\?\)"):
        _entries_with_features(cfg, None, tmp_path, main=False)  # stage 2, before any feature is looked up
    with pytest.raises(DatasetError, match=rf"split 'test' has no videos \({found}; did you mean 'testing'\?\)"):
        split_entries(ann, "test", cfg.data.annotations)  # evaluation
    with pytest.raises(DatasetError, match=rf"split 'other' has no videos \({found}\)$"):
        split_entries(ann, "other", cfg.data.annotations)
