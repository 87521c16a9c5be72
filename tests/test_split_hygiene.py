"""Stage 1 for captioning must never train on caption-evaluation videos. The known trap:
CLIP4Clip's MSRVTT_train.9k.csv (retrieval) holds videos of MSR-VTT's official caption val and test
splits, while its own test list (1k-A) is disjoint from it, so comparing the config's splits alone
finds nothing. Checked on the real files in ../shared/data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from caption.config import Config
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.benchmark_formats import msrvtt_official_split
from retrieval_pretrain.reading.data_config import DataConfig
from retrieval_pretrain.stage1.training_set import SplitOverlapError, training_entries


@pytest.mark.parametrize("video_id, split", [
    ("video0", "train"), ("video6512", "train"), ("video6513", "val"), ("video7009", "val"),
    ("video7010", "test"), ("video9999", "test"), ("video10000", None), ("clip7", None), ("video", None),
])
def test_msrvtt_official_split_boundaries(video_id, split):
    assert msrvtt_official_split(video_id) == split


def _clip4clip_config(shared_data: Path, tmp_path: Path) -> Config:
    """The CLIP4Clip layout: 9k train list (captions from an MSRVTT_data.json) + the 1k-A test csv.
    The json here holds the real val+test captions (the train split's captions are not in
    ../shared/data), so the 9k videos that keep captions are exactly its val/test videos."""
    official = json.loads((shared_data / "annotations/msrvtt/msrvtt_val_test_videodatainfo.json").read_text())
    data_json = tmp_path / "MSRVTT_data.json"
    data_json.write_text(json.dumps({"sentences": official["sentences"]}))
    cfg = Config()
    cfg.data = DataConfig(format="msrvtt-clip4clip", annotations=str(data_json), videos=str(tmp_path),
                          split_files={"train": str(shared_data / "annotations/msrvtt/MSRVTT_train.9k.csv"),
                                       "test": str(shared_data / "annotations/msrvtt/MSRVTT_JSFUSION_test.csv")})
    return cfg


def test_clip4clip_9k_list_is_refused_for_captioning(shared_data, tmp_path):
    cfg = _clip4clip_config(shared_data, tmp_path)
    ann = load_annotations(cfg.data)
    train_ids = {e.video_id for e in ann.split("train")}
    test_ids = {e.video_id for e in ann.split("test")}
    assert not train_ids & test_ids  # the config's own splits do not overlap ...
    with open(shared_data / "annotations/msrvtt/MSRVTT_train.9k.csv") as f:
        nine_k = [row["video_id"] for row in csv.DictReader(f)]
    leaked = [v for v in nine_k if int(v[len("video"):]) >= 6513]  # ... but these are caption val/test videos
    assert len(nine_k) == 9000 and len(leaked) == 497 + 1990
    assert train_ids == set(leaked)  # only they have captions in this json
    with pytest.raises(SplitOverlapError, match=r"2487 training videos belong to the benchmark's official "
                                                r"caption val/test splits .*allow_eval_overlap"):
        training_entries(ann, cfg)
    cfg.pretrain.allow_eval_overlap = True  # retrieval-only experiments may opt in
    kept, skipped = training_entries(ann, cfg)
    assert kept == [] and len(skipped) == 2487 and skipped[0]["reason"] == "video file not found"


def test_jsonl_train_video_that_is_also_a_test_video_is_refused(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a", "b"):
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(b"x")
    lines = [{"video": "clips/a.mp4", "captions": ["x"], "split": "train"},
             {"video": "clips/b.mp4", "captions": ["y"], "split": "train"},
             {"video": "clips/../clips/b.mp4", "captions": ["y"], "split": "test"}]  # the same file
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = Config()
    cfg.data = DataConfig(format="jsonl", annotations=str(tmp_path / "ann.jsonl"), videos=str(tmp_path))
    with pytest.raises(SplitOverlapError, match=r"1 training videos are also in an evaluation split .*clips/b"):
        training_entries(load_annotations(cfg.data), cfg)
