"""``data.format: hf`` on real Hugging Face datasets built here with ``datasets.Dataset.from_dict`` and
written with ``save_to_disk`` / ``to_parquet`` / ``to_json`` / ``to_csv`` into tmp_path."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import datasets
import pytest

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading.annotations import AnnotationError, load_annotations
from retrieval_pretrain.reading.data_check import check_dataset
from retrieval_pretrain.reading.data_config import DataConfig

# One row per caption, as many Hub caption datasets have it.
ROWS = {
    "video": ["a.mp4", "a.mp4", "b", "c.mp4", "b", "clips/d.mp4"],
    "captions": ["a dog runs", "  a dog plays ", "a cat", "a car", "a cat sleeps", "a bird"],
    "split": ["train", "train", "validation", "test", "val", "train"],
}
EXPECTED = [("a", "train", ["a dog runs", "a dog plays"]), ("b", "val", ["a cat", "a cat sleeps"]),
            ("c", "test", ["a car"]), ("clips/d", "train", ["a bird"])]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The library's default cache points into tmp_path (never the home folder); data files must
    not use it at all."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    (folder / "clips").mkdir(parents=True)
    (folder / "b.webm").write_bytes(b"")  # an id: the first existing extension of data.video_ext
    (folder / "a.mp4").write_bytes(b"")
    return folder


def cfg(source, videos: Path, **kw) -> DataConfig:
    return DataConfig(format="hf", annotations=str(source), videos=str(videos), **kw)


def table(ann) -> list[tuple[str, str, list[str]]]:
    return [(e.video_id, e.split, e.captions) for e in ann.entries]


def problems(ann) -> list[tuple[str, str]]:
    return [(q.source, q.reason) for q in ann.problems]


# ----------------------------------------------------------------------------- sources


def test_save_to_disk_dataset_with_split_column(tmp_path: Path, videos: Path, hf_cache: Path):
    src = tmp_path / "saved"
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert problems(ann) == []
    assert table(ann) == EXPECTED
    assert ann.splits() == ["train", "val", "test"]
    paths = {e.video_id: e.path for e in ann.entries}
    assert paths == {"a": videos / "a.mp4", "b": videos / "b.webm", "c": videos / "c.mp4",
                     "clips/d": videos / "clips/d.mp4"}
    assert not hf_cache.exists()


def test_save_to_disk_datasetdict_uses_its_own_splits(tmp_path: Path, videos: Path):
    src = tmp_path / "saved_dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"video": ["a.mp4", "e.mp4", "a.mp4"], "captions": ["x", "y", "z"]}),
        "validation": datasets.Dataset.from_dict({"video": ["b", "f.mp4"], "captions": ["p", ""]}),
        "test": datasets.Dataset.from_dict({"video": ["c.mp4"], "captions": ["q"]}),
    }).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == [("a", "train", ["x", "z"]), ("e", "train", ["y"]), ("b", "val", ["p"]),
                          ("c", "test", ["q"])]
    assert ann.split("validation") == ann.split("val")
    assert problems(ann) == [(f"{src}[validation]:row 1", "empty captions (column 'captions'); skipped")]


def test_datasetdict_split_with_unknown_name_is_one_counted_problem(tmp_path: Path, videos: Path):
    src = tmp_path / "saved_dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"video": ["a.mp4"], "captions": ["x"]}),
        "challenge": datasets.Dataset.from_dict({"video": ["g.mp4", "h.mp4", "i.mp4"], "captions": ["1", "2", "3"]}),
    }).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == [("a", "train", ["x"])]
    assert problems(ann) == [(f"{src}[challenge]",
                              "split 'challenge' is not one of train, val, test; its 3 rows skipped")]
    # a split named in data.*_split is known
    ann = load_annotations(cfg(src, videos, test_split="challenge"))
    assert problems(ann) == [] and [e.video_id for e in ann.split("challenge")] == ["g", "h", "i"]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_data_files(kind: str, tmp_path: Path, videos: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch):
    rows = {k: v + [None if k == "captions" else v[0]] for k, v in ROWS.items()}  # row 6: null caption
    src = tmp_path / f"caps.{kind}"
    ds = datasets.Dataset.from_dict(rows)
    {"parquet": ds.to_parquet, "jsonl": ds.to_json, "csv": ds.to_csv}[kind](str(src))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == EXPECTED
    assert problems(ann) == [(f"{src}:row 6", "missing captions (column 'captions' is null); skipped")]
    assert list(scratch.iterdir()) == []  # the temporary cache is gone
    assert not hf_cache.exists()


def test_reading_files_prints_no_progress_bars(tmp_path: Path, videos: Path, capsys: pytest.CaptureFixture):
    src = tmp_path / "caps.json"
    datasets.Dataset.from_dict(ROWS).to_json(str(src))
    capsys.readouterr()
    was_disabled = datasets.utils.are_progress_bars_disabled()
    assert table(load_annotations(cfg(src, videos))) == EXPECTED
    assert capsys.readouterr().err == ""
    assert datasets.utils.are_progress_bars_disabled() == was_disabled  # the global setting is restored


def test_csv_cells_are_text(tmp_path: Path, videos: Path):
    src = tmp_path / "caps.csv"
    datasets.Dataset.from_dict({"video": ["007", "010"], "captions": ["a", "b"], "split": ["train", "test"]}
                               ).to_csv(str(src))
    ann = load_annotations(cfg(src, videos))
    assert problems(ann) == []
    assert [(e.video_id, e.path) for e in ann.entries] == [("007", videos / "007.mp4"), ("010", videos / "010.mp4")]


def test_several_parquet_files_merge_and_name_their_file(tmp_path: Path, videos: Path):
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    datasets.Dataset.from_dict({"video": ["a.mp4", "b"], "captions": ["a1", "b1"], "split": ["train", "val"]}
                               ).to_parquet(str(one))
    datasets.Dataset.from_dict({"video": ["b", "a.mp4", "c.mp4", "a.mp4"], "captions": ["b2", "a2", None, "a3"],
                                "split": ["val", "train", "test", "test"]}).to_parquet(str(two))
    ann = load_annotations(cfg(f"{one}, {two}", videos))
    assert table(ann) == [("a", "train", ["a1", "a2"]), ("b", "val", ["b1", "b2"])]
    assert problems(ann) == [
        (f"{two}:row 2", "missing captions (column 'captions' is null); skipped"),
        # the same video in a second split: the table's key is the video id
        (f"{two}:row 3", "duplicate video id 'a' (first seen in split 'train'); skipped"),
    ]


# ----------------------------------------------------------------------------- columns and values


def test_column_mapping(tmp_path: Path, videos: Path):
    src = tmp_path / "mapped"
    datasets.Dataset.from_dict({"clip": ["a.mp4", "b"], "text": ["x", "y"], "part": ["train", "test"],
                                "video": ["wrong.mp4", "wrong.mp4"]}).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos, columns={"video": "clip", "captions": "text", "split": "part"}))
    assert table(ann) == [("a", "train", ["x"]), ("b", "test", ["y"])]
    # a role left out of data.columns means the column of that name
    src2 = tmp_path / "mapped2"
    datasets.Dataset.from_dict({"video": ["a.mp4"], "sentence": ["x"], "split": ["val"]}).save_to_disk(str(src2))
    assert table(load_annotations(cfg(src2, videos, columns={"captions": "sentence"}))) == [("a", "val", ["x"])]
    with pytest.raises(ConfigError, match="unknown role.*caption;.*video, captions, split"):
        load_annotations(cfg(src2, videos, columns={"caption": "sentence"}))


def test_list_and_string_captions(tmp_path: Path, videos: Path):
    src = tmp_path / "lists"
    datasets.Dataset.from_dict({
        "video": ["a.mp4", "b.mp4", "a.mp4", "c.mp4", "e.mp4", "f.mp4"],
        "captions": [[" one ", "two"], ["three"], ["four"], [], ["ok", ""], ["ok", None]],
        "split": ["train"] * 6,
    }).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == [("a", "train", ["one", "two", "four"]), ("b", "train", ["three"])]
    assert problems(ann) == [
        (f"{src}:row 3", "column 'captions': empty captions list; skipped"),
        (f"{src}:row 4", "column 'captions': captions must be non-empty strings, got ''; skipped"),
        (f"{src}:row 5", "column 'captions': captions must be non-empty strings, got None; skipped"),
    ]


def test_every_kind_of_bad_row_is_named_and_counted(tmp_path: Path, videos: Path):
    src = tmp_path / "bad"
    datasets.Dataset.from_dict({
        "video": ["a.mp4", None, "", "  ", "b.mp4", "b.mp4", "c.mp4", "c.mp4", "d.mp4", "e.mp4"],
        "captions": ["ok", "x", "x", "x", None, "   ", "x", "x", "x", "x"],
        "split": ["train", "train", "train", "train", "train", "train", None, "dev", " ", "train9k"],
    }).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == [("a", "train", ["ok"])]
    assert problems(ann) == [
        (f"{src}:row 1", "missing video (column 'video' is null); skipped"),
        (f"{src}:row 2", "empty video (column 'video'); skipped"),
        (f"{src}:row 3", "empty video (column 'video'); skipped"),
        (f"{src}:row 4", "missing captions (column 'captions' is null); skipped"),
        (f"{src}:row 5", "empty captions (column 'captions'); skipped"),
        (f"{src}:row 6", "missing split (column 'split' is null); skipped"),
        (f"{src}:row 7", "unknown split 'dev' (column 'split'; known: train, val, test); did you mean 'val'? "
                         "(rename it, or set data.val_split=dev); skipped"),
        (f"{src}:row 8", "empty split (column 'split'); skipped"),
        (f"{src}:row 9", "unknown split 'train9k' (column 'split'; known: train, val, test); skipped"),
    ]
    ann = load_annotations(cfg(src, videos, train_split="train9k"))  # now a known split
    assert len(ann.problems) == 8 and ann.split("train9k")[0].video_id == "e"


def test_wrong_types_are_problems(tmp_path: Path, videos: Path):
    src = tmp_path / "types"
    datasets.Dataset.from_dict({"video": [7, 8], "captions": ["x", "y"], "split": ["train", "test"]}
                               ).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert ann.entries == []
    assert problems(ann) == [(f"{src}:row {n}", f"column 'video' (video) must hold strings, got int {v}; skipped")
                             for n, v in [(0, 7), (1, 8)]]
    src2 = tmp_path / "types2"
    datasets.Dataset.from_dict({"video": ["a.mp4", "b.mp4"], "captions": [1.5, 2.0], "split": ["train", "train"]}
                               ).save_to_disk(str(src2))
    reasons = [q.reason for q in load_annotations(cfg(src2, videos)).problems]
    assert reasons == ["column 'captions' (captions) must hold a string or a list of strings, got float 1.5; skipped",
                       "column 'captions' (captions) must hold a string or a list of strings, got float 2.0; skipped"]
    src3 = tmp_path / "types3"
    datasets.Dataset.from_dict({"video": ["a.mp4"], "captions": ["x"], "split": [2]}).save_to_disk(str(src3))
    assert problems(load_annotations(cfg(src3, videos))) == [
        (f"{src3}:row 0", "column 'split' (split) must hold strings, got int 2; skipped")]


def test_classlabel_split_column_reads_as_names(tmp_path: Path, videos: Path):
    src = tmp_path / "labels"
    features = datasets.Features({"video": datasets.Value("string"), "captions": datasets.Value("string"),
                                  "split": datasets.ClassLabel(names=["train", "validation", "test"])})
    datasets.Dataset.from_dict({"video": ["a.mp4", "b.mp4", "c.mp4"], "captions": ["x", "y", "z"],
                                "split": [0, 1, 2]}, features=features).save_to_disk(str(src))
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == [("a", "train", ["x"]), ("b", "val", ["y"]), ("c", "test", ["z"])]


# ----------------------------------------------------------------------------- errors


def test_missing_column_names_source_column_and_columns(tmp_path: Path, videos: Path):
    src = tmp_path / "nosplit.parquet"
    datasets.Dataset.from_dict({"video": ["a.mp4"], "captions": ["x"]}).to_parquet(str(src))
    with pytest.raises(AnnotationError) as e:
        load_annotations(cfg(src, videos))
    msg = str(e.value)
    assert msg.startswith(f"{src}: no column 'split' (data.columns.split)") and msg.endswith("columns: video, captions")
    with pytest.raises(AnnotationError, match=r"no column 'text' \(data.columns.captions\); columns: video, captions"):
        load_annotations(cfg(src, videos, columns={"captions": "text", "split": "video"}))
    saved = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"clip": ["a.mp4"], "captions": ["x"]})}
                         ).save_to_disk(str(saved))
    with pytest.raises(AnnotationError, match=rf"^{saved}\[train\]: no column 'video' .*columns: clip, captions$"):
        load_annotations(cfg(saved, videos))


def test_unreadable_sources(tmp_path: Path, videos: Path):
    with pytest.raises(AnnotationError, match=r"nope\.parquet: file not found"):
        load_annotations(cfg(tmp_path / "nope.parquet", videos))
    with pytest.raises(AnnotationError, match=r"missing_folder: no such file or folder"):
        load_annotations(cfg(tmp_path / "missing_folder", videos))
    with pytest.raises(AnnotationError, match="data.annotations is not set"):
        load_annotations(cfg("", videos))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(AnnotationError, match=rf"^{plain}: not a folder written by Dataset/DatasetDict.save_to_disk"):
        load_annotations(cfg(plain, videos))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video": "a.mp4", "captions": "x", "split": "train"}\n{not json\n')
    with pytest.raises(AnnotationError, match=rf"^{broken}: cannot read as json: .*JSON parse error"):
        load_annotations(cfg(broken, videos))
    with pytest.raises(AnnotationError, match=f"several sources must all be .*files; not one: {plain}"):
        load_annotations(cfg(f"{broken},{plain}", videos))


def test_settings_that_do_not_apply_are_errors(tmp_path: Path, videos: Path):
    src = tmp_path / "saved"
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(src))
    with pytest.raises(AnnotationError, match=f"hf_subset .*'en'.*{src} is local"):
        load_annotations(cfg(src, videos, hf_subset="en"))
    with pytest.raises(AnnotationError, match="split_files"):
        load_annotations(cfg(src, videos, split_files={"train": "x.txt"}))


def test_hub_offline_says_how_to_supply_the_dataset(videos: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(AnnotationError) as e:
        load_annotations(cfg("someone/video-captions", videos, hf_subset="en"))
    msg = str(e.value)
    assert msg.startswith("someone/video-captions: not a local file or folder, and it cannot be loaded from "
                          "the Hugging Face Hub: ConnectionError")
    assert "supply it locally instead: data.annotations = a folder written by save_to_disk, or parquet file(s)" in msg


def test_video_outside_the_video_folder_is_named_by_its_row(tmp_path: Path, videos: Path):
    src = tmp_path / "caps.jsonl"
    datasets.Dataset.from_dict({"video": ["a.mp4", "../../x.mp4"], "captions": ["x", "y"],
                                "split": ["train", "Train"]}).to_json(str(src))
    ann = load_annotations(cfg(src, videos))
    assert problems(ann) == [(f"{src}:row 1", "unknown split 'Train' (column 'split'; known: train, val, test); "
                                             "did you mean 'train'? (rename it, or set data.train_split=Train); "
                                             "skipped")]
    ann = load_annotations(cfg(src, videos, train_split="Train"))
    assert [(q.source, q.reason) for q in ann.outside] == [
        (f"{src}:row 1", f"video path '../../x.mp4' is outside the video folder {videos}")]


# ----------------------------------------------------------------------------- data check


def test_data_check_end_to_end(tmp_path: Path, videos: Path):
    src = tmp_path / "caps.parquet"
    rows = {k: v + extra for (k, v), extra in zip(ROWS.items(), [["a.mp4", None], ["x", "y"], ["dev", "test"]])}
    datasets.Dataset.from_dict(rows).to_parquet(str(src))
    s = check_dataset(cfg(src, videos), probe=False, progress=False)
    assert s["format"] == "hf" and s["annotations"] == str(src)
    assert {name: (sp["videos"], sp["captions"]) for name, sp in s["splits"].items()} == \
        {"train": (2, 3), "val": (1, 2), "test": (1, 1)}
    assert s["total"] == {"videos": 4, "captions": 6, "source_videos": 4}
    assert s["splits"]["train"]["captions_per_video"] == {"min": 1, "median": 1.5, "max": 2, "mean": 1.5}
    assert s["problem_count"] == 2
    assert s["problems"] == [
        {"source": f"{src}:row 6", "reason": "unknown split 'dev' (column 'split'; known: train, val, test); "
                                             "did you mean 'val'? (rename it, or set data.val_split=dev); skipped"},
        {"source": f"{src}:row 7", "reason": "missing video (column 'video' is null); skipped"},
    ]
    # a.mp4 and b.webm exist; c.mp4 and clips/d.mp4 do not
    assert s["missing_videos"] == {"count": 2, "total": 4,
                                   "paths": [str(videos / "c.mp4"), str(videos / "clips/d.mp4")]}
    assert s["ok"] is False


# ----------------------------------------------------------------------------- cells read one by one (issue 25)


def test_json_cells_of_mixed_types_are_read_one_by_one(tmp_path: Path, videos: Path):
    """datasets' json builder turned a whole column into JSON text when one cell's type differed."""
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"video": "a.mp4", "captions": "a dog", "split": "train"},
        {"video": "b", "captions": ["a cat", "a cat sleeps"], "split": "val"},
        {"video": 5, "captions": "a number", "split": "train"},          # row 2: numeric video
        {"video": "/", "captions": "root", "split": "train"},            # row 3: not a file
        {"video": "c.mp4", "captions": {"x": 1}, "split": "test"},        # row 4: not a caption
        ["not", "an", "object"]]) + "\n")                                  # row 5
    ann = load_annotations(cfg(src, videos))
    assert table(ann) == [("a", "train", ["a dog"]), ("b", "val", ["a cat", "a cat sleeps"])]
    assert [e.path for e in ann.entries] == [videos / "a.mp4", videos / "b.webm"]
    assert [s for s, _ in problems(ann)] == [f"{src}:row {n}" for n in (2, 3, 4, 5)]
    assert "got int 5" in problems(ann)[0][1] and "does not name a file" in problems(ann)[1][1]
    s = check_dataset(cfg(src, videos), probe=False, progress=False)
    assert not s["ok"] and s["problem_count"] == 4
