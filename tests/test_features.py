"""The feature cache: fp16, memory-mapped, atomic, and tied to the tower that wrote it."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval_pretrain.foundation.errors import FeatureStoreError
from retrieval_pretrain.reading.features import FeatureMismatchError, FeatureStore, feature_key


def test_keys_are_safe_and_distinct():
    assert feature_key("video7010") == "video7010"
    a, b = feature_key("videos/a_b"), feature_key("videos_a/b")
    assert "/" not in a and a != b
    assert feature_key("..") != ".."


def test_round_trip_fp16_mmap(tmp_path):
    store = FeatureStore(tmp_path)
    store.init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    store.write("videos/x1", x)
    got = store.load("videos/x1")
    assert isinstance(got, np.memmap) and got.dtype == np.float16 and got.shape == (4, 3)
    np.testing.assert_allclose(got, x.astype(np.float16))
    assert [p.name for p in store.dir.iterdir()] == [f"{feature_key('videos/x1')}.npy"]  # no temporary left
    with pytest.raises(FeatureStoreError, match="no features for video 'missing'"):
        store.load("missing")


def test_refuses_features_of_another_tower(tmp_path):
    FeatureStore(tmp_path).init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})
    FeatureStore(tmp_path).init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})  # same: fine
    with pytest.raises(FeatureMismatchError, match="another tower"):
        FeatureStore(tmp_path).init({"tower_fingerprint": "zzz", "num_frames": 4, "dim": 3})


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    store.init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})

    def save_half_then_die(f, arr, **kwargs):  # the process is interrupted half-way through the file
        f.write(b"\x93NUMPY half a header")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.write("v1", np.zeros((4, 3), np.float32))
    assert not store.has("v1") and list(store.dir.iterdir()) == []


def test_stale_temporaries_of_a_killed_run_are_cleared(tmp_path):
    """A SIGKILL gives no chance to clean up: the next run's init removes the leftovers."""
    store = FeatureStore(tmp_path)
    store.init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})
    store.write("done", np.ones((4, 3), np.float32))
    (store.dir / ".k1ll3d.npy.tmp-x8y2").write_bytes(b"\x93NUMPY partial")  # atomic.write_file's temporary
    FeatureStore(tmp_path).init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})
    assert sorted(p.name for p in store.dir.iterdir()) == ["done.npy"]
    assert store.has("done") and not store.has("k1ll3d")


def test_a_truncated_feature_file_is_named(tmp_path):
    store = FeatureStore(tmp_path)
    store.init({"tower_fingerprint": "abc", "num_frames": 4, "dim": 3})
    store.write("v", np.ones((4, 3), np.float32))
    store.path("v").write_bytes(store.path("v").read_bytes()[:40])
    with pytest.raises(FeatureStoreError, match=r"v\.npy: not a readable feature file"):
        store.load("v")


def test_caption_pairs_read_a_video_once_and_give_the_same_items(tmp_path, monkeypatch):
    """Stage 2's pairs keep a video's features after its first caption (up to the byte budget):
    the items are the same as read from the store each time, and a video past the budget is read
    from the store every time."""
    from caption.data import CaptionPairs

    store = FeatureStore(tmp_path)
    store.init({"tower_fingerprint": "abc", "num_frames": 6, "dim": 3})
    rng = np.random.default_rng(0)
    for v in ("a", "b"):
        store.write(v, rng.normal(size=(6, 3)))
    pairs = [(v, [1, i]) for v in ("a", "b") for i in range(3)]
    reads: list[str] = []
    real_load = FeatureStore.load
    monkeypatch.setattr(FeatureStore, "load", lambda self, vid, mmap=True: reads.append(vid) or real_load(self, vid, mmap))
    one_video = 4 * 3 * 2  # 4 frames kept (max_frames) x 3 dims x fp16
    cached = CaptionPairs(store, pairs, max_frames=4, cache_bytes=one_video)
    items = [cached[k] for k in [0, 3, 1, 4, 2, 5, 6 + 0, 6 + 5]]  # keys of a later epoch wrap
    assert reads == ["a", "b", "b", "b", "b"]  # "a" fits the budget and is read once; "b" does not
    for key, item in zip([0, 3, 1, 4, 2, 5, 0, 5], items):
        vid, ids = pairs[key]
        assert item["video_id"] == vid and item["ids"] == ids
        expected = store.load(vid)[[0, 2, 3, 5]]  # fit_frames' segment centres of 6 frames
        assert item["features"].dtype == np.float16 and np.array_equal(item["features"], expected)
    assert not isinstance(cached[0]["features"], np.memmap)  # held in memory, not a view of the file
    with pytest.raises(ValueError, match="read-only"):  # shared by the video's captions, as read-only as the file
        cached[0]["features"][0, 0] = 1
