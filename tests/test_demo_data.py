"""The demo's procedural dataset: real H.264 files decord reads back, DESIGN's jsonl format, split
rules (unique test combinations, held-out colour-shape pairs), caching, determinism, the caption
parser and attribute scoring, and direction visible only from frame order."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from caption.demo import data as dd
from caption.demo import render as demo_render

SMALL = dd.DemoSpec(num_train=24, num_val=4, num_test=20, seed=3)  # real frame count and size
TINY = dd.DemoSpec(num_train=6, num_val=2, num_test=6, frames=6, size=64, seed=5)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _entries(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo_small")
    assert dd.generate_dataset(folder, SMALL, progress=False) == folder / "annotations.jsonl"
    return folder


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


# ------------------------------------------------------------------------------------------ files


def test_writes_h264_mp4s_decord_reads_back(small):
    entries = _entries(small)
    assert len(entries) == SMALL.num_train + SMALL.num_val + SMALL.num_test
    assert Counter(e["split"] for e in entries) == {"train": SMALL.num_train, "val": SMALL.num_val,
                                                    "test": SMALL.num_test}
    for e in entries:
        assert set(e) >= {"video", "captions", "split"}
        assert e["video"].startswith("videos/") and e["video"].endswith(".mp4")
        assert len(e["captions"]) == SMALL.captions_per_video == len(set(e["captions"]))
        vr = decord.VideoReader(str(small / e["video"]))
        assert len(vr) == SMALL.frames
        assert vr[0].shape == (SMALL.size, SMALL.size, 3)
    with av.open(str(small / entries[0]["video"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert not [p for p in (small / "videos").iterdir() if p.suffix != ".mp4"], "temporary files left behind"


def test_toolkit_reads_the_jsonl_and_ids_match_attributes(small):
    from retrieval_pretrain.reading.annotations import load_annotations
    from retrieval_pretrain.reading.data_config import DataConfig

    ann = load_annotations(DataConfig(format="jsonl", annotations=str(small / "annotations.jsonl"),
                                      videos=str(small)))
    assert not ann.problems
    attributes = dd.load_attributes(small)
    ids = {e.video_id for s in ("train", "val", "test") for e in ann.split(s)}
    assert ids == set(attributes)
    for e in _entries(small):
        vid = e["video"][: -len(".mp4")]
        assert e["attributes"] == attributes[vid] == dd.attributes_of(e) == dd.attributes_of(vid, small)
        assert Path(vid).name.startswith("_".join(attributes[vid][k] for k in dd.ATTRIBUTE_KEYS) + "_")


def test_colours_survive_compression(small):
    names = list(demo_render._RGB)
    centres = np.array([demo_render._RGB[c] for c in names], dtype=float)
    for clip in dd.plan_splits(SMALL):
        rendered = dd.render_clip(clip, SMALL)
        decoded = decord.VideoReader(str(small / clip.video)).get_batch(list(range(SMALL.frames))).asnumpy()
        inside = np.all(np.abs(rendered.frames.astype(float) - np.rint(rendered.rgb)) < 0.6, axis=-1)
        inside = np.stack([_erode(_erode(m)) for m in inside])
        mean = decoded[inside].astype(float).mean(0)
        assert np.abs(mean - rendered.rgb).max() < 12, (clip.video, mean, rendered.rgb)
        assert names[int(np.argmin(((centres - mean) ** 2).sum(1)))] == clip.colour
        psnr = 10 * np.log10(255**2 / ((decoded.astype(float) - rendered.frames) ** 2).mean())
        assert psnr > 28, (clip.video, psnr)


# ----------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("spec", [dd.DemoSpec(), dd.quick_spec(), SMALL], ids=["default", "quick", "small"])
def test_split_rules(spec):
    clips = dd.plan_splits(spec)
    by_split = {s: [(c.colour, c.shape, c.motion) for c in clips if c.split == s] for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [spec.num_train, spec.num_val, spec.num_test]
    assert len(set(by_split["test"])) == len(by_split["test"]), "a test combination repeats"
    for pair in dd.HELD_OUT_PAIRS:
        assert pair not in {(c, s) for c, s, _ in by_split["train"] + by_split["val"]}
        assert pair in {(c, s) for c, s, _ in by_split["test"]}
    if spec is not SMALL:  # every attribute plentiful in training
        for i, values in enumerate((dd.COLOURS, dd.SHAPES, dd.MOTIONS)):
            counts = Counter(combo[i] for combo in by_split["train"])
            assert min(counts[v] for v in values) >= spec.num_train // (2 * len(values))
    assert plan_signature(spec) == plan_signature(spec)  # a pure function of the spec


def plan_signature(spec):
    return [(c.name, c.split) for c in dd.plan_splits(spec)]


def test_spec_validation():
    with pytest.raises(ValueError, match="num_test"):
        dd.plan_splits(dd.DemoSpec(num_test=len(dd.all_combinations()) + 1))
    with pytest.raises(ValueError, match="even"):
        dd.plan_splits(dd.DemoSpec(size=95))
    with pytest.raises(ValueError, match="64"):
        dd.plan_splits(dd.DemoSpec(size=48))  # decord 0.6 cannot read frames narrower than 64 px
    assert len(dd.COLOURS) * len(dd.SHAPES) * len(dd.MOTIONS) == len(dd.all_combinations())
    assert len(dd.MOTIONS) >= 7


# ----------------------------------------------------------------------------- caching, determinism


def test_rerun_is_cached_and_missing_manifest_regenerates(tmp_path):
    folder = tmp_path / "d"
    dd.generate_dataset(folder, TINY, progress=False)
    before = _mtimes(folder)
    assert "manifest.json" in before and len([k for k in before if k.endswith(".mp4")]) == 14
    dd.generate_dataset(folder, TINY, progress=False)
    assert _mtimes(folder) == before, "a cached dataset was rewritten"

    # As if interrupted before the end: no manifest, one video half-written.
    video = folder / _entries(folder)[0]["video"]
    good = video.read_bytes()
    video.write_bytes(good[: len(good) // 2])
    (folder / "manifest.json").unlink()
    dd.generate_dataset(folder, TINY, progress=False)
    after = _mtimes(folder)
    assert set(after) == set(before)
    assert video.read_bytes() == good and len(decord.VideoReader(str(video))) == TINY.frames
    assert all(after[k] >= before[k] for k in before)

    (folder / "videos" / Path(_entries(folder)[0]["video"]).name).unlink()  # a lost video
    dd.generate_dataset(folder, TINY, progress=False)
    assert len(list((folder / "videos").glob("*.mp4"))) == 14

    other = dd.DemoSpec(**{**TINY.__dict__, "num_train": 3})  # another spec: regenerated, stale clips gone
    killed = folder / "videos" / ".red_circle_left_0001.mp4.tmp-k1ll3d"  # what a killed write leaves
    killed.write_bytes(b"half an mp4")
    dd.generate_dataset(folder, other, progress=False)
    assert not killed.exists()
    names = {Path(e["video"]).name for e in _entries(folder)}
    assert {p.name for p in (folder / "videos").glob("*.mp4")} == names and len(names) == 11
    assert json.loads((folder / "manifest.json").read_text())["hash"] == dd.spec_hash(other)


def test_same_seed_same_dataset(tmp_path):
    a, b, c = (dd.generate_dataset(tmp_path / n, s, progress=False)
               for n, s in (("a", TINY), ("b", TINY), ("c", dd.DemoSpec(**{**TINY.__dict__, "seed": 6}))))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for e in _entries(a.parent):
        assert (a.parent / e["video"]).read_bytes() == (b.parent / e["video"]).read_bytes()


# -------------------------------------------------------------------------------------- captions


def test_caption_attributes_recovers_every_generated_caption(small):
    captions = [(cap, e["attributes"]) for e in _entries(small) for cap in e["captions"]]
    rng = np.random.default_rng(0)
    for colour, shape, motion in dd.all_combinations():
        for background in dd.BACKGROUNDS:
            size = float(rng.uniform(0.2, 0.45))
            for cap in dd.make_captions(colour, shape, motion, background, 5, rng, object_size=size):
                captions.append((cap, {"colour": colour, "shape": shape, "motion": motion}))
    assert len(captions) > 7000
    for cap, truth in captions:
        assert len(cap.split()) <= dd.MAX_CAPTION_WORDS, cap
        assert dd.caption_attributes(cap) == {k: truth[k] for k in dd.ATTRIBUTE_KEYS}, cap
    variety = {c for c, _ in captions}
    assert len(variety) > 0.9 * len(captions)
    assert any(bg in c for c, _ in captions for bg in ("grey background", "beige backdrop", "black background"))


@pytest.mark.parametrize("caption, expected", [
    ("a red circle moves to the left", ("red", "circle", "left")),
    ("A small red ball slides leftward across a grey background.", ("red", "circle", "left")),
    ("the red round shape travels left", ("red", "circle", "left")),
    ("a blue box goes from left to right", ("blue", "square", "right")),
    ("a green triangle heads rightwards", ("green", "triangle", "right")),
    ("an orange star rises", ("orange", "star", "up")),
    ("a yellow plus sign falls from top to bottom", ("yellow", "cross", "down")),
    ("a violet cross gets bigger", ("purple", "cross", "grow")),
    ("a purple square expands", ("purple", "square", "grow")),
    ("a red disc gets smaller", ("red", "circle", "shrink")),
    ("a blue star stays still", ("blue", "star", "still")),
    ("a blue star does not move", ("blue", "star", "still")),
    ("a green ball remains in place", ("green", "circle", "still")),
    ("a circle moves left", (None, "circle", "left")),
    ("a red thing", ("red", None, None)),
    ("a red and blue circle moves", (None, "circle", None)),
    ("a red circle and a square move up", ("red", None, "up")),
    ("a red circle moves left and right", ("red", "circle", None)),
    ("", (None, None, None)),
])
def test_caption_attributes_by_hand(caption, expected):
    assert tuple(dd.caption_attributes(caption).values()) == expected


def test_attribute_accuracy_on_hand_made_predictions():
    attributes = {
        "videos/red_star_left_0001": {"colour": "red", "shape": "star", "motion": "left"},  # held out
        "videos/blue_circle_grow_0002": {"colour": "blue", "shape": "circle", "motion": "grow"},
        "videos/green_square_still_0003": {"colour": "green", "shape": "square", "motion": "still"},
        "videos/purple_cross_down_0004": {"colour": "purple", "shape": "cross", "motion": "down"},
    }
    predictions = {
        "videos/red_star_left_0001": "a red star moves to the left",  # all right
        "videos/blue_circle_grow_0002": "a blue ball shrinks",  # motion wrong
        "green_square_still_0003": "a red square stays still",  # matched by name; colour wrong
        "videos/purple_cross_down_0004": "a purple shape",  # shape and motion missing
        "videos/unknown_0009": "a red star",
    }
    acc = dd.attribute_accuracy(predictions, attributes)
    assert acc["videos"] == 4 and acc["unmatched"] == 1
    assert (acc["colour"], acc["shape"], acc["motion"], acc["all"]) == (0.75, 0.75, 0.5, 0.25)
    assert acc["held_out"] == {"videos": 1, "colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}
    assert acc["seen_pairs"]["videos"] == 3 and acc["seen_pairs"]["all"] == 0.0
    assert dd.is_held_out(attributes["videos/red_star_left_0001"])
    assert not dd.is_held_out(attributes["videos/blue_circle_grow_0002"])
    assert dd.attribute_accuracy({}, attributes)["all"] is None


# ------------------------------------------------------------------------------------------ motion


@pytest.mark.parametrize("a, b", [("left", "right"), ("up", "down"), ("grow", "shrink")])
def test_opposite_motions_are_the_same_frames_reversed(a, b):
    for seed in range(20):
        ta = dd.sample_trajectory(a, 16, np.random.default_rng(seed))
        tb = dd.sample_trajectory(b, 16, np.random.default_rng(seed))
        rb = tb.reversed()
        assert np.array_equal(ta.cx, rb.cx) and np.array_equal(ta.cy, rb.cy) and np.array_equal(ta.size, rb.size)


def test_motion_is_large_and_objects_big():
    for seed in range(50):
        for motion in dd.MOTIONS:
            t = dd.sample_trajectory(motion, 16, np.random.default_rng(seed))
            assert t.size.min() >= 0.18 and t.size.max() <= 0.62
            assert (t.cx - t.size / 2).min() >= 0 and (t.cx + t.size / 2).max() <= 1  # fully visible
            assert (t.cy - t.size / 2).min() >= 0 and (t.cy + t.size / 2).max() <= 1
            travel = max(np.ptp(t.cx), np.ptp(t.cy))
            if motion in ("left", "right", "up", "down"):
                assert travel >= 0.40 and 0.34 <= t.size[0] <= 0.44
            elif motion in ("grow", "shrink"):
                assert travel == 0 and np.ptp(t.size) >= 0.30
            else:
                assert travel == 0 and np.ptp(t.size) == 0


def _centroids(path: Path, rgb: np.ndarray) -> np.ndarray:
    frames = decord.VideoReader(str(path)).get_batch(list(range(16))).asnumpy().astype(float)
    mask = np.abs(frames - rgb).max(-1) < 40
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    return np.array([[xs[m].mean(), ys[m].mean(), m.sum()] for m in mask])


def test_direction_only_from_frame_order_on_decoded_frames(tmp_path):
    spec = dd.DemoSpec()
    rng = np.random.default_rng(11)
    rgb = dd.object_colour("green", rng)
    background = dd.render_background("grey", spec.size, rng)
    found = {}
    for motion in ("left", "right", "grow", "shrink"):
        traj = dd.sample_trajectory(motion, spec.frames, np.random.default_rng(99))
        path = tmp_path / f"{motion}.mp4"
        dd.write_mp4(path, dd.render_frames("circle", rgb, background, traj), spec.fps)
        found[motion] = _centroids(path, rgb)
    x_left, x_right = found["left"][:, 0], found["right"][:, 0]
    assert np.all(np.diff(x_left) < 0) and np.all(np.diff(x_right) > 0)
    assert x_left[0] - x_left[-1] > 0.45 * spec.size
    np.testing.assert_allclose(x_left[::-1], x_right, atol=0.5)  # left reversed looks like right
    area_grow, area_shrink = found["grow"][:, 2], found["shrink"][:, 2]
    assert np.all(np.diff(area_grow) > 0) and np.all(np.diff(area_shrink) < 0)
    np.testing.assert_allclose(area_grow[::-1], area_shrink, rtol=0.05)


def test_shapes_are_distinct_at_64px():
    """Downsampled to the demo's 64 px, the five silhouettes of one size still differ clearly."""
    masks = {}
    for shape in dd.SHAPES:
        bg = np.zeros((96, 96, 3), dtype=np.float32)
        traj = dd.Trajectory(np.array([0.5]), np.array([0.5]), np.array([0.3]))
        frame = dd.render_frames(shape, (255, 255, 255), bg, traj)[0, ..., 0].astype(float) / 255
        masks[shape] = _resize(frame, 64)
    for a in dd.SHAPES:
        for b in dd.SHAPES:
            if a < b:
                assert np.abs(masks[a] - masks[b]).sum() > 20, (a, b)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    idx = (np.arange(size) + 0.5) * img.shape[0] / size - 0.5
    i0 = np.clip(np.floor(idx).astype(int), 0, img.shape[0] - 1)
    i1 = np.clip(i0 + 1, 0, img.shape[0] - 1)
    w = (idx - i0)[:, None]
    rows = img[i0] * (1 - w) + img[i1] * w
    return rows[:, i0] * (1 - w.T) + rows[:, i1] * w.T
