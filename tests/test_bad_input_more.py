"""The second hostile-user round (152 kinds tried): each input that gave a traceback or a silently
wrong result now gives a named error or a counted skip. In-process where the library decides;
``tests/test_cli_errors.py`` holds the cases that need the installed command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caption.caption_files import load_predictions, load_references
from caption.config import load
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError, FeatureStoreError
from retrieval_pretrain.foundation.run_folder import claim
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.data_check import check_dataset
from retrieval_pretrain.reading.features import FeatureStore
from vcap_toolkit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000 + "]" * 100_000


class _One:
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def test_json_nested_too_deeply_is_a_named_bad_line_or_file(tmp_path):
    good = json.dumps({"video": "a.mp4", "captions": ["a cat"], "split": "train"})
    (tmp_path / "ann.jsonl").write_text(good + "\n" + DEEP + "\n")
    ann = load_annotations(load(None, [f"data.annotations={tmp_path / 'ann.jsonl'}", f"data.videos={tmp_path}"]).data)
    assert len(ann.entries) == 1 and [(q.source, q.reason) for q in ann.problems] == [
        (f"{tmp_path / 'ann.jsonl'}:2", "not valid JSON: nested too deeply; skipped")]
    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'deep.json'}: not valid JSON \(nested too deeply\)"):
        load_predictions(tmp_path / "deep.json")


def test_config_files_that_are_binary_or_repeat_a_key(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load(tmp_path / "bin.yaml")
    (tmp_path / "twice.yaml").write_text("data:\n  format: jsonl\nvideo:\n  num_frames: 4\ndata:\n  videos: x\n")
    with pytest.raises(ConfigError, match="key 'data' appears twice in one mapping \\(first on line 1\\)"):
        load(tmp_path / "twice.yaml")


def test_score_files_with_a_repeated_id_or_an_empty_reference(tmp_path):
    (tmp_path / "p.json").write_text('{"v1": "a cat", "v1": "a dog"}')
    with pytest.raises(DatasetError, match="key 'v1' appears twice"):
        load_predictions(tmp_path / "p.json")
    (tmp_path / "r.json").write_text('{"v1": ["a cat", ""]}')
    with pytest.raises(DatasetError, match="references of id v1 must be non-empty captions"):
        load_references(tmp_path / "r.json")


def test_a_training_video_that_is_a_link_loop_or_a_folder_is_a_named_skip(tmp_path):
    from retrieval_pretrain.stage1.training_set import training_entries

    os.symlink(tmp_path / "b.mp4", tmp_path / "a.mp4")
    os.symlink(tmp_path / "a.mp4", tmp_path / "b.mp4")
    (tmp_path / "c.mp4").mkdir()
    rows = [{"video": f"{n}.mp4", "captions": ["x"], "split": "train"} for n in "abc"]
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load(None, [f"data.annotations={tmp_path / 'ann.jsonl'}", f"data.videos={tmp_path}"])
    kept, skipped = training_entries(load_annotations(cfg.data), cfg)
    assert kept == [] and [s["reason"] for s in skipped] == ["symbolic link loop", "symbolic link loop",
                                                              "a folder, not a video file"]


def test_feature_files_that_cannot_be_used_are_named(tmp_path):
    store = FeatureStore(tmp_path / "feats")
    store.init({"tower_fingerprint": "f", "num_frames": 4, "dim": 8})
    store.write("good", np.ones((3, 8)))
    store.write("wide", np.ones((3, 16)))
    store.write("empty", np.ones((0, 8)))
    store.write("nan", np.full((3, 8), np.nan))
    assert store.problem("good") is None
    assert "shape (3, 16), not (frames, 8)" in store.problem("wide")
    assert "no frame" in store.problem("empty")
    assert "NaN or infinite" in store.problem("nan")
    (tmp_path / "bad" / "features").mkdir(parents=True)
    (tmp_path / "bad" / "meta.json").write_text('{"dim": 8,')
    with pytest.raises(FeatureStoreError, match=rf"{tmp_path / 'bad' / 'meta.json'}: not a readable feature-folder"):
        FeatureStore(tmp_path / "bad").meta()


def test_a_feature_write_cut_by_a_full_disk_fails_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE (SIGXFSZ ignored) makes writes past 300 bytes fail as on a full disk: numpy's
    own writer missed that and renamed a cut file into place; the write now raises, names the file,
    and leaves no file behind."""
    code = f"""
import resource, signal, sys
import numpy as np
sys.path.insert(0, {str(ROOT)!r})
from retrieval_pretrain.reading.features import FeatureStore
store = FeatureStore({str(tmp_path / 'feats')!r})
store.init({{"tower_fingerprint": "f", "num_frames": 4, "dim": 128}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
try:
    store.write("v", np.ones((12, 128)))
except OSError as e:
    print("OSError", e.errno, e.filename)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[0] == "OSError" and words[2] == str(tmp_path / "feats" / "features" / "v.npy"), out.stdout
    assert sorted(p.name for p in (tmp_path / "feats" / "features").iterdir()) == []


def test_outputs_of_one_job_are_not_another_jobs_folder(tmp_path):
    store = FeatureStore(tmp_path / "feats")
    store.init({"tower_fingerprint": "f", "num_frames": 4, "dim": 8})
    with pytest.raises(ConfigError, match="holds a feature folder or a search index"):
        claim(tmp_path / "feats", "pretrain", load(None, []), resume=False, accelerator=_One())
    claim(tmp_path / "run", "pretrain", load(None, []), resume=False, accelerator=_One())
    with pytest.raises(FeatureStoreError, match="is a training run folder"):
        FeatureStore(tmp_path / "run").init({"tower_fingerprint": "f", "num_frames": 4, "dim": 8})


def test_resume_after_the_annotations_changed_is_refused(tmp_path):
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video": "a.mp4", "captions": ["a cat"], "split": "train"}) + "\n")
    cfg = load(None, [f"data.annotations={ann}"])
    claim(tmp_path / "run", "pretrain", cfg, resume=False, accelerator=_One())
    (tmp_path / "run" / "checkpoints" / "step_1").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_1" / "trainer_state.json").write_text("{}")
    claim(tmp_path / "run", "pretrain", cfg, resume=True, accelerator=_One())  # unchanged: fine
    ann.write_text(json.dumps({"video": "a.mp4", "captions": ["a dog"], "split": "train"}) + "\n")
    with pytest.raises(ConfigError, match="another run than this one.*data:annotations"):
        claim(tmp_path / "run", "pretrain", cfg, resume=True, accelerator=_One())


def test_data_check_of_an_empty_annotation_file_is_not_ok(tmp_path):
    (tmp_path / "ann.jsonl").write_text("")
    summary = check_dataset(load(None, [f"data.annotations={tmp_path / 'ann.jsonl'}"]).data, progress=False)
    assert summary["ok"] is False and summary["total"]["videos"] == 0


def test_extract_of_a_split_that_does_not_exist_is_refused(tmp_path):
    from retrieval_pretrain.stage1.extract import _wanted_videos

    (tmp_path / "ann.jsonl").write_text(json.dumps({"video": "a.mp4", "captions": ["x"], "split": "test"}) + "\n")
    cfg = load(None, [f"data.annotations={tmp_path / 'ann.jsonl'}", f"data.videos={tmp_path}"])
    with pytest.raises(DatasetError, match="--split nope: no videos in that split \\(splits found: test\\)"):
        _wanted_videos(cfg, ["nope"])
    assert list(_wanted_videos(cfg, ["test"])) == ["a"]


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["score", "--predictions", "p", "--references", "r", "--output", str(output)]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err.strip().splitlines()[-1]


def test_inference_says_when_the_configs_sampling_is_not_the_models(capsys):
    from retrieval_pretrain.modeling.model_folder import warn_if_video_differs

    warn_if_video_differs(4, 4, "M", "fps", "uniform")
    assert "video.eval_sampling=fps in the config, but M was made with uniform sampling" in capsys.readouterr().err
    warn_if_video_differs(4, 4, "M", "uniform", "uniform")
    assert capsys.readouterr().err == ""
