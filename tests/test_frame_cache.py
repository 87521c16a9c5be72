"""Stage 1's in-memory frame cache (``video.cache_frames``): items equal the decoded ones bit for
bit, unreadable files stay reported, unsupported sampling and oversized caches are refused, and
a cached training run takes exactly the steps of a decoding one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from retrieval_pretrain.reading.clips import Clip
from retrieval_pretrain.reading.video import read_frames
from retrieval_pretrain.stage1.data import ContrastiveTrainSet, Preprocess, collate_videos
from retrieval_pretrain.stage1.kept_frames import FrameCache

CONFIG = CONFIG_PATH  # the demo's config, shipped in the package
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """6 training clips of 8 frames at 96 px and 2 test clips, real H.264 mp4 files."""
    folder = tmp_path_factory.mktemp("cache")
    spec = demo_data.DemoSpec(num_train=6, num_val=0, num_test=2, frames=8, size=96, seed=5, captions_per_video=2)
    demo_data.generate_dataset(folder, spec, progress=False)
    return folder


def _entries(folder: Path) -> list[SimpleNamespace]:
    lines = [json.loads(x) for x in (folder / "annotations.jsonl").read_text().splitlines()]
    return [SimpleNamespace(video_id=x["video"], path=folder / x["video"], captions=x["captions"])
            for x in lines if x["split"] == "train"]


def _tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), t.count(" ")] for t in texts])


@pytest.mark.parametrize("method", ["tsn", "uniform"])
def test_cached_items_equal_decoded_items(clips, method):
    entries = _entries(clips)
    pre = Preprocess(4, 64, MEAN, STD)  # 96 px clips resized to 64: the cache holds resized frames
    cache = FrameCache([e.path for e in entries], max_frames=8, image_size=64, progress=False)
    assert cache.nbytes == len(entries) * 8 * 3 * 64 * 64
    plain = ContrastiveTrainSet(entries, pre, _tokenize, method=method, seed=7)
    cached = ContrastiveTrainSet(entries, pre, _tokenize, method=method, seed=7, cache=cache)
    for key in [0, 3, 5, 6 * 2 + 1, 6 * 9 + 4]:  # several epochs: TSN offsets differ per epoch
        a, b = plain[key], cached[key]
        assert a["ok"] and b["ok"] and a["caption"] == b["caption"]
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["mask"], b["mask"])
    if method == "tsn":
        assert not torch.equal(cached[1]["frames"], cached[6 + 1]["frames"])  # epochs draw other frames


def test_cache_of_fewer_frames_keeps_uniformly_spread_ones(clips):
    entries = _entries(clips)[:1]
    cache = FrameCache([entries[0].path], max_frames=4, image_size=64, progress=False)
    want = read_frames(entries[0].path, 4, "uniform", short_side=64)  # frames 1, 3, 5, 7 of 8
    assert want.indices.tolist() == [1, 3, 5, 7] and want.frames.shape == (4, 64, 64, 3)
    assert cache.frames[0].shape == (4, 3, 64, 64)
    assert torch.equal(cache.frames[0], torch.from_numpy(want.frames).permute(0, 3, 1, 2))


def test_unreadable_video_is_reported_every_time_it_is_drawn(clips, tmp_path):
    entries = _entries(clips)[:2]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    entries.append(SimpleNamespace(video_id="broken", path=bad, captions=["nothing"]))
    cache = FrameCache([e.path for e in entries], max_frames=8, image_size=64, progress=False)
    assert cache.frames[2] is None and str(bad) in cache.errors[2]
    data = ContrastiveTrainSet(entries, Preprocess(4, 64, MEAN, STD), _tokenize, seed=0, cache=cache)
    for epoch in range(2):
        batch = collate_videos([data[epoch * 3 + i] for i in range(3)])
        assert batch["video_ids"] == [entries[0].video_id, entries[1].video_id]
        assert len(batch["failures"]) == 1 and batch["failures"][0][0] == str(bad)
        assert str(bad) in batch["failures"][0][1]


def test_cache_refuses_fps_sampling_and_a_mismatched_entry_list(clips):
    entries = _entries(clips)[:2]
    cache = FrameCache([e.path for e in entries], max_frames=8, image_size=64, progress=False)
    pre = Preprocess(4, 64, MEAN, STD)
    with pytest.raises(ValueError, match="fps"):
        ContrastiveTrainSet(entries, pre, _tokenize, method="fps", cache=cache)
    with pytest.raises(ValueError, match="holds 2 videos, the training set 1"):
        ContrastiveTrainSet(entries[:1], pre, _tokenize, cache=cache)


def test_frames_are_handed_on_only_where_they_are_exactly_what_decoding_gives(clips, tmp_path):
    entries = _entries(clips)
    pre = Preprocess(4, 64, MEAN, STD)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    whole = FrameCache([e.path for e in entries[:2]] + [bad], max_frames=8, image_size=64, progress=False)
    assert whole.whole == [True, True, False]  # 8 frames of 8-frame clips: all of them
    for e in entries[:2]:
        got = whole.decoded(e.path, pre, "uniform")
        want = pre(e.path, "uniform")
        assert got is not None and torch.equal(got("uniform", None)["frames"], want["frames"])
        assert torch.equal(got("uniform", None)["mask"], want["mask"])
        assert whole.decoded(str(e.path), Preprocess(8, 64, MEAN, STD), "uniform") is not None  # a str path
        assert whole.decoded(e.path, pre, "tsn") is None  # random offsets: the decoder's own draw
        assert whole.decoded(e.path, Preprocess(4, 48, MEAN, STD), "uniform") is None  # another size
    assert whole.decoded(bad, pre, "uniform") is None  # decoded again, and reported there
    assert whole.decoded(entries[3].path, pre, "uniform") is None  # not a video of this cache
    part = FrameCache([entries[0].path], max_frames=4, image_size=64, progress=False)  # 4 of 8 frames
    assert part.whole == [False] and part.decoded(entries[0].path, Preprocess(4, 64, MEAN, STD), "uniform") is None
    # a row is a clip's exact range: 0.0357 and 0.03572 s print alike ("[0.036-0.5 s]") but start on
    # other frames at 28 fps (a hostile test's find); here both start before frame 1 (0.125 s at 8 fps)
    near = FrameCache([Clip(entries[0].path, 0.0357, 0.5)], max_frames=8, image_size=64, progress=False)
    assert near.decoded(Clip(entries[0].path, 0.03572, 0.5), pre, "uniform") is None
    assert near.decoded(Clip(entries[0].path, 0.0357, 0.5), pre, "uniform") is not None
    seconds = Clip(entries[0].path, 0.0, 0.5)  # a range holding 4 of the 8 frames (8 fps): kept whole
    ranged = FrameCache([seconds, Clip(entries[1].path, 0.0, 0.5)], max_frames=4, image_size=64, progress=False)
    assert ranged.whole == [False, False]  # exactly 4 kept of a range: whether there were more is unknown
    assert FrameCache([seconds], max_frames=8, image_size=64, progress=False).whole == [True]


def test_frames_of_a_file_changed_since_or_of_another_decoder_are_not_handed_on(clips, tmp_path, monkeypatch):
    """The cache remembers which file it read (device, inode, size, mtime) and with which decoder:
    a file replaced, deleted or reached through a re-pointed link since is decoded again (and a
    missing one reported), as is every file once another decoder reads (a hostile test's finds)."""
    import shutil

    from retrieval_pretrain.reading.decoding import choice

    entries = _entries(clips)
    pre = Preprocess(4, 64, MEAN, STD)
    copies = [shutil.copy(e.path, tmp_path / f"v{i}.mp4") for i, e in enumerate(entries[:3])]
    link = tmp_path / "link.mp4"
    link.symlink_to(copies[2])
    cache = FrameCache([*copies, link], max_frames=8, image_size=64, progress=False)
    assert all(cache.decoded(p, pre, "uniform") is not None for p in [*copies, link])
    shutil.copy(entries[4].path, copies[0])  # replaced: other content under the same name
    Path(copies[1]).unlink()
    link.unlink()
    link.symlink_to(copies[0])
    assert [cache.decoded(p, pre, "uniform") for p in [copies[0], copies[1], link]] == [None, None, None]
    assert cache.decoded(copies[2], pre, "uniform") is not None  # untouched
    st, other = os.stat(copies[2]), Path(entries[5].path).read_bytes()
    with open(copies[2], "r+b") as f:  # rewritten in place at its size, its mtime set back (cp -p, rsync -t)
        f.write((other * 2)[: st.st_size])
    os.utime(copies[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.decoded(copies[2], pre, "uniform") is None  # the ctime tells
    shutil.copy(entries[2].path, copies[2])
    cache = FrameCache([copies[2]], max_frames=8, image_size=64, progress=False)
    monkeypatch.setenv(choice.ENV, "pyav")
    assert cache.decoded(copies[2], pre, "uniform") is None  # another decoder may return other pixels


TINY = ["video.num_frames=4", "pretrain.batch_size=3", "pretrain.epochs=2", "run.num_workers=0", "run.log_every=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
        "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0"]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_cached_training_takes_the_same_steps(clips, tmp_path, capsys, monkeypatch):
    from retrieval_pretrain.stage1.train import train

    base = [f"data.annotations={clips / 'annotations.jsonl'}", f"data.videos={clips}", *TINY]
    train(load(CONFIG, base + ["video.cache_frames=0"]), tmp_path / "decode")  # the yaml caches: turn it off
    assert "decoded once" not in capsys.readouterr().err
    kept: list[FrameCache] = []
    model = train(load(CONFIG, base + ["video.cache_frames=16"]), tmp_path / "cache", keep_frames=kept)
    assert "6 training videos decoded once into memory (1 MB)" in capsys.readouterr().err
    decoded, cached = _losses(tmp_path / "decode"), _losses(tmp_path / "cache")
    assert len(decoded) == 4 and np.allclose(decoded, cached, rtol=1e-5, atol=1e-6), (decoded, cached)
    assert decoded[0] != pytest.approx(decoded[-1], rel=1e-3)

    # extraction reading the kept frames writes the features decoding writes, bit for bit
    from retrieval_pretrain.reading.features import FeatureStore
    from retrieval_pretrain.stage1.extract import extract_features

    assert len(kept) == 1 and sum(kept[0].whole) == 6  # 8-frame clips, 16 kept: every frame of each
    cfg = load(CONFIG, base)
    decodes: list[str] = []  # a spy on the real decoding call: which videos were decoded
    real_call = Preprocess.__call__
    monkeypatch.setattr(Preprocess, "__call__", lambda self, path, *a, **k: decodes.append(str(path))
                        or real_call(self, path, *a, **k))
    plain = extract_features(model, cfg, tmp_path / "plain", batch_size=4)
    assert len(decodes) == 8
    decodes.clear()
    reused = extract_features(model, cfg, tmp_path / "reused", batch_size=4, frames=kept[0])
    assert plain["extracted"] == reused["extracted"] == 8
    trained = {str(e.path) for e in _entries(clips)}
    assert len(decodes) == 2 and not trained & set(decodes), decodes  # the 2 test clips; the 6 from memory
    a, b = FeatureStore(tmp_path / "plain"), FeatureStore(tmp_path / "reused")
    videos = [json.loads(x)["video"].removesuffix(".mp4") for x in (clips / "annotations.jsonl").read_text().splitlines()]
    assert len(videos) == 8
    for vid in videos:
        assert np.array_equal(a.load(vid, mmap=False), b.load(vid, mmap=False)), vid

    with pytest.raises(ValueError, match=r"video.cache_frames=1000000000: 6 videos x 1000000000 frames .* GB"):
        train(load(CONFIG, base + ["video.cache_frames=1000000000"]), tmp_path / "huge")


def test_each_caption_is_tokenised_once_and_items_keep_its_tokens(clips):
    entries = _entries(clips)
    calls: list[str] = []

    def counting(texts: list[str]) -> torch.Tensor:
        calls.extend(texts)
        return _tokenize(texts)

    data = ContrastiveTrainSet(entries, Preprocess(4, 64, MEAN, STD), counting, method="tsn", seed=7)
    items = [data[epoch * len(entries) + i] for epoch in range(6) for i in range(len(entries))]
    assert all(torch.equal(it["tokens"], _tokenize([it["caption"]])[0]) for it in items)
    drawn = {it["caption"] for it in items}
    assert len(drawn) > len(entries)  # epochs drew other captions of a video
    assert sorted(calls) == sorted(drawn)  # each once, however often it was drawn
    first = data[0]["tokens"]
    first[0] = 999  # an item's tokens are its own
    assert not torch.equal(data[0]["tokens"], first)


def test_normalised_frames_equal_the_plain_formula_bit_for_bit():
    from retrieval_pretrain.reading.transforms import normalise_frames

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 7, 9), dtype=np.uint8))
    for mean, std in [(MEAN, STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.1, 0.2, 0.3), (0.9, 0.01, 0.33))]:
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        got = normalise_frames(x, mean, std)
        assert got.dtype == torch.float32 and got.is_contiguous()
        assert torch.equal(got, (x.float() - m) / s)
    assert torch.equal(normalise_frames(x, list(MEAN), list(STD)), normalise_frames(x, MEAN, STD))
    floats = x.float()  # a float input is left as it is (the constants are shared, the input never written)
    assert torch.equal(normalise_frames(floats, MEAN, STD), normalise_frames(x, MEAN, STD))
    assert torch.equal(floats, x.float())
    assert normalise_frames(x[0], MEAN, STD).shape == (1, 3, 7, 9)  # one frame broadcasts, as before


def test_normalising_first_under_inference_mode_leaves_the_constants_usable_with_autograd():
    from retrieval_pretrain.reading import transforms

    odd = (0.3, 0.3, 0.3)  # a pair no other test made first
    with torch.inference_mode():
        transforms.normalise_frames(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), odd, odd)
    x = torch.rand(1, 3, 2, 2, requires_grad=True)
    transforms.normalise_frames(x, odd, odd).sum().backward()  # dividing by the cached std saves it for backward
    assert torch.allclose(x.grad, torch.full_like(x, 1 / (0.3 * 255)))


def test_a_batch_drawn_at_once_equals_its_items_decoded_one_by_one(clips, tmp_path):
    """``__getitems__`` (how a DataLoader fetches a batch) gathers and normalises the batch's cached
    frames in one go: each item, the failing one in the middle included, as decoded alone."""
    entries = _entries(clips)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    entries.insert(2, SimpleNamespace(video_id="broken", path=bad, captions=["nothing", "at all"]))
    pre = Preprocess(4, 64, MEAN, STD)
    cache = FrameCache([e.path for e in entries], max_frames=8, image_size=64, progress=False)
    plain = ContrastiveTrainSet(entries, pre, _tokenize, method="tsn", seed=3)
    cached = ContrastiveTrainSet(entries, pre, _tokenize, method="tsn", seed=3, cache=cache)
    keys = [5, 2, 0, 7 * 4 + 1, 7 * 4 + 2, 7 * 11 + 6]
    batch = cached.__getitems__(keys)
    assert [it["video_id"] for it in batch] == [entries[k % 7].video_id for k in keys]
    for key, got in zip(keys, batch):
        want = plain[key]
        assert got["ok"] == want["ok"] and got["caption"] == want["caption"] and got["path"] == want["path"]
        assert torch.equal(got["frames"], want["frames"]) and torch.equal(got["mask"], want["mask"])
        assert torch.equal(got["tokens"], want["tokens"]) and got["error"] == want["error"]
    assert [it["ok"] for it in batch] == [True, False, True, True, False, True] and str(bad) in batch[1]["error"]
    loader = torch.utils.data.DataLoader(cached, batch_size=4, collate_fn=collate_videos)
    first = next(iter(loader))
    assert torch.equal(first["frames"], torch.stack([plain[k]["frames"] for k in (0, 1, 3)]))
    assert first["failures"] == [(str(bad), plain[2]["error"])]


def test_a_normalisation_that_fits_no_frame_fails_each_item_as_decoding_does(clips):
    """A batch normalised at once that cannot be (mean/std of 2 channels): every item fails with its
    own file named, as decoding one by one reports it - not one error for the whole batch (a hostile
    test's find)."""
    entries = _entries(clips)[:3]
    pre = Preprocess(4, 64, (0.5, 0.5), (0.2, 0.2))
    cache = FrameCache([e.path for e in entries], max_frames=8, image_size=64, progress=False)
    plain = ContrastiveTrainSet(entries, pre, _tokenize, seed=1)
    cached = ContrastiveTrainSet(entries, pre, _tokenize, seed=1, cache=cache)
    got, want = cached.__getitems__([0, 1, 2]), [plain[k] for k in (0, 1, 2)]
    assert [it["ok"] for it in got] == [it["ok"] for it in want] == [False, False, False]
    for it, entry in zip(got, entries):
        assert it["error"].startswith(f"{entry.path}: RuntimeError:")
