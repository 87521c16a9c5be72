"""Frame sampling (``retrieval_pretrain.reading.video``): index rules, real clips, bad inputs.

Real clips come from ``../shared/data/videos`` (facts in its README); small clips that need to be
broken in a particular way are written here with PyAV. Pixel references are PyAV decoding every
frame in sequence (an independent reader; its bundled ffmpeg converts 8-bit YUV to RGB exactly as
decord's does), rotated by the frame's display-matrix angle.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from retrieval_pretrain.reading.video import (
    SampledFrames,
    VideoReadError,
    probe_video,
    read_frames,
    sample_indices,
)

# ------------------------------------------------------------------ helpers


def write_clip(path: Path, num: int, size: tuple[int, int] = (48, 64), fps: int = 10,
               faststart: bool = False, noise: bool = False) -> Path:
    """A small H.264 (libx264, else mpeg4) mp4 whose frame i has red channel 40*i % 256."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    h, w = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(num):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (40 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def pyav_frames(path: Path, wanted: set[int] | None = None) -> dict:
    """Frames of the stream decord reads, decoded in sequence by PyAV, keyed by their position in
    decode-output (presentation) order, upright; only ``wanted`` ones are converted to RGB."""
    frames = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.best("video"))):
            if wanted is None or i in wanted:
                # frame.rotation is the display matrix's counter-clockwise angle; np.rot90 turns CCW
                frames[i] = np.rot90(frame.to_ndarray(format="rgb24"), (frame.rotation // 90) % 4)
    frames["count"] = i + 1
    return frames


@pytest.fixture(scope="module")
def videos(shared_data: Path) -> Path:
    return shared_data / "videos"


# ------------------------------------------------------------------ sample_indices (pure)


@pytest.mark.parametrize("n,k,expected", [
    (10, 4, [1, 3, 6, 8]),
    (5, 4, [0, 1, 3, 4]),
    (7, 3, [1, 3, 5]),
    (12, 12, list(range(12))),
    (100, 12, [4, 12, 20, 29, 37, 45, 54, 62, 70, 79, 87, 95]),
])
def test_uniform_indices_by_hand(n, k, expected):
    indices, mask = sample_indices(n, k, "uniform")
    assert indices.tolist() == expected and indices.dtype == np.int64
    assert mask.all() and mask.dtype == bool


@pytest.mark.parametrize("method", ["uniform", "tsn", "fps"])
def test_short_clip_takes_every_frame_then_pads(method):
    indices, mask = sample_indices(3, 5, method, fps=1.0, rng=np.random.default_rng(0))
    assert indices.tolist() == [0, 1, 2, 2, 2] and mask.tolist() == [True, True, True, False, False]
    indices, mask = sample_indices(1, 4, method, fps=1.0, rng=np.random.default_rng(0))
    assert indices.tolist() == [0, 0, 0, 0] and mask.tolist() == [True, False, False, False]


@pytest.mark.parametrize("n,fps,k,expected,real", [
    # 10 s at 30 fps: frames 0, 30, ..., 270 (CLIP4Clip's one per second), then padding
    (300, 30.0, 12, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 270, 270], 10),
    # CLIP4Clip truncates the rate: 29.97 fps steps 29 frames
    (300, 29.97, 12, [0, 29, 58, 87, 116, 145, 174, 203, 232, 261, 290, 290], 11),
    # 30 s: 30 one-per-second frames thinned by linspace(0, 29, 12, dtype=int)
    (900, 30.0, 12, [0, 60, 150, 210, 300, 390, 450, 540, 630, 690, 780, 870], 12),
    # a rate below 1 fps steps one frame
    (5, 0.5, 8, [0, 1, 2, 3, 4, 4, 4, 4], 5),
])
def test_fps_rule_by_hand(n, fps, k, expected, real):
    indices, mask = sample_indices(n, k, "fps", fps=fps)
    assert indices.tolist() == expected and int(mask.sum()) == real and mask[:real].all()


@pytest.mark.parametrize("n", [12, 13, 25, 50, 299, 1000])
def test_tsn_picks_one_frame_inside_each_segment(n):
    k = 12
    bounds = [-(-i * n // k) for i in range(k + 1)]  # ceil(i * n / k)
    seen = [set() for _ in range(k)]
    for seed in range(300):
        indices, mask = sample_indices(n, k, "tsn", rng=np.random.default_rng(seed))
        assert mask.all() and (np.diff(indices) > 0).all()
        for i, idx in enumerate(indices.tolist()):
            assert bounds[i] <= idx < bounds[i + 1], (seed, i, idx)
            seen[i].add(idx)
    if n <= 50:  # every frame of every segment is reachable
        assert all(seen[i] == set(range(bounds[i], bounds[i + 1])) for i in range(k))
    a = sample_indices(n, k, "tsn", rng=np.random.default_rng(7))[0]
    b = sample_indices(n, k, "tsn", rng=np.random.default_rng(7))[0]
    assert a.tolist() == b.tolist()


def test_sample_indices_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rng"):
        sample_indices(100, 12, "tsn")
    with pytest.raises(ValueError, match="fps"):
        sample_indices(100, 12, "fps")
    with pytest.raises(ValueError, match="unknown sampling method"):
        sample_indices(100, 12, "random")
    with pytest.raises(ValueError):
        sample_indices(0, 12)
    with pytest.raises(ValueError):
        sample_indices(10, 0)


def test_video_read_error_is_picklable():
    e = pickle.loads(pickle.dumps(VideoReadError("a/b.mp4", "file is empty")))
    assert (e.path, e.reason, str(e)) == ("a/b.mp4", "file is empty", "a/b.mp4: file is empty")


# ------------------------------------------------------------------ real clips: README facts

FACTS = [  # file, frames, fps (None: not stated), H, W (None: not stated)
    ("mmaction2/test.mp4", 300, 30.0, 256, 340),
    ("mmaction2/rawvideo_part_0.mp4", 32, 30.0, None, None),
    ("mmaction2/demo.mp4", 280, 28.0, 256, 340),
    ("mmaction2/test.avi", 164, 25.0, 240, 320),
    ("mmaction2/test_video_structuralize.mp4", 300, 29.97, 240, 426),
    ("mmaction2/demo_skeleton.mp4", 72, None, 1080, 1920),
    ("mmaction2/demo_spatiotemporal_det.mp4", 57, 6.0, None, None),
    ("mmaction2/S001C001P001R001A001_rgb.avi", 103, 30.0, 1080, 1920),
    ("decord/flipping_a_pancake.mkv", 310, None, None, None),
    ("decord/video_0.mov", 3, None, 320, 568),
    ("decord/video_90.mov", 3, None, 568, 320),
    ("decord/video_180.mov", 3, None, 320, 568),
    ("decord/video_270.mov", 3, None, 568, 320),
    ("decord/unordered.mov", 4, None, None, None),
    ("swinbert/G0mjFqytJt4_000152_000162.mp4", 298, 29.75, 360, 540),
    ("torchcodec/nasa_13013.mp4", 390, 29.97, 270, 480),  # decord's stream: the 480x270 one
    ("torchcodec/var_fps_video.mp4", 300, None, 128, 128),
    ("torchcodec/h265_video.mp4", 10, None, None, None),
    ("torchcodec/h264_10bits.mp4", 30, None, None, None),
    ("torchcodec/h265_10bits.mp4", 30, None, None, None),
    ("torchcodec/bt709_full_range.mp4", 30, None, None, None),
]


@pytest.mark.parametrize("name,frames,fps,height,width", FACTS, ids=[f[0] for f in FACTS])
def test_probe_matches_readme(videos, name, frames, fps, height, width):
    info = probe_video(videos / name)
    assert info["num_frames"] == frames
    if fps is not None:
        assert info["fps"] == pytest.approx(fps, abs=0.01)
    if height is not None:
        assert (info["height"], info["width"]) == (height, width)
    assert info["duration"] == pytest.approx(frames / info["fps"], rel=0.6)  # sane, VFR included


@pytest.mark.parametrize("name", ["decord/video_0.mov", "decord/video_90.mov", "decord/video_180.mov",
                                  "decord/video_270.mov", "decord/unordered.mov", "mmaction2/test.avi",
                                  "decord/flipping_a_pancake.mkv", "torchcodec/var_fps_video.mp4",
                                  "torchcodec/nasa_13013.mp4", "swinbert/G0mjFqytJt4_000152_000162.mp4",
                                  "torchcodec/h265_video.mp4"])
def test_sampled_frames_equal_sequential_pyav_decode(videos, name):
    """Seek-based get_batch == every frame decoded in order by another library, pixel for pixel;
    rotation applied as the display matrix says."""
    outs = [read_frames(videos / name, 12, method=method, rng=np.random.default_rng(3))
            for method in ("uniform", "tsn")]
    reference = pyav_frames(videos / name, {int(i) for out in outs for i in out.indices})
    for out in outs:
        assert out.num_video_frames == reference["count"]
        for frame, idx in zip(out.frames, out.indices):
            np.testing.assert_array_equal(frame, reference[int(idx)])


def test_ten_bit_clips_decode_close_to_pyav(videos):
    """decord's ffmpeg and PyAV's newer one convert 10-bit YUV to 8-bit RGB differently at colour
    edges (chroma upsampling): the same frames, not the same bytes. Measured: median difference 0,
    90% of values within 8 levels, 99th percentile about 60."""
    name = "torchcodec/h264_10bits.mp4"
    out = read_frames(videos / name, 4)
    reference = pyav_frames(videos / name, set(out.indices.tolist()))
    for frame, idx in zip(out.frames, out.indices):
        diff = np.abs(frame.astype(int) - reference[int(idx)])
        assert np.median(diff) == 0 and (diff <= 8).mean() > 0.85


def test_rotation_and_short_side_resize(videos):
    full = read_frames(videos / "decord/video_90.mov", 3)
    assert full.frames.shape == (3, 568, 320, 3)
    small = read_frames(videos / "decord/video_90.mov", 3, short_side=160)
    assert small.frames.shape == (3, 284, 160, 3)  # upright, shorter side 160, aspect kept
    upright = np.asarray(Image.fromarray(full.frames[1]).resize((160, 284), Image.BILINEAR), dtype=int)
    flipped = np.asarray(Image.fromarray(full.frames[1][::-1, ::-1].copy()).resize((160, 284)), dtype=int)
    assert np.abs(small.frames[1] - upright).mean() < 3 < np.abs(small.frames[1] - flipped).mean()
    for name, shape in [("decord/video_0.mov", (112, 199)), ("decord/video_270.mov", (199, 112)),
                        ("mmaction2/test.mp4", (224, 298))]:
        side = min(shape)
        assert read_frames(videos / name, 2, short_side=side).frames.shape[1:3] == shape


def test_short_side_equal_to_native_reuses_reader(videos):
    a = read_frames(videos / "mmaction2/rawvideo_part_0.mp4", 6)
    b = read_frames(videos / "mmaction2/rawvideo_part_0.mp4", 6, short_side=256)
    np.testing.assert_array_equal(a.frames, b.frames)


def test_timestamps(videos):
    pancake = read_frames(videos / "decord/flipping_a_pancake.mkv", 310, short_side=16)
    assert pancake.timestamps[:5] == pytest.approx([0, 0.033, 0.067, 0.1, 0.133], abs=1e-3)
    unordered = read_frames(videos / "decord/unordered.mov", 4)
    assert unordered.timestamps.tolist() == [0, 0.03125, 0.0625, 0.09375]
    assert unordered.timestamps.dtype == np.float64
    for name, stream in [("torchcodec/var_fps_video.mp4", 0), ("torchcodec/nasa_13013.mp4", 3)]:
        info = json.loads((videos / f"torchcodec/{Path(name).name}.stream{stream}.all_frames_info.json").read_text())
        truth = np.array([float(f["pts_time"]) for f in info])
        out = read_frames(videos / name, 12, method="tsn", rng=np.random.default_rng(0))
        assert out.num_video_frames == len(truth)
        np.testing.assert_allclose(out.timestamps, truth[out.indices], atol=1e-5)
    var = json.loads((videos / "torchcodec/var_fps_video.mp4.stream0.all_frames_info.json").read_text())
    gaps = np.diff([float(f["pts_time"]) for f in var])  # README: gaps 0.033-0.533 s
    assert gaps.min() == pytest.approx(0.0333, abs=1e-3) and gaps.max() == pytest.approx(0.5333, abs=1e-3)
    # AVI has no pts: decord reports garbage, so frame i starts at i / fps
    avi = read_frames(videos / "mmaction2/test.avi", 4)
    np.testing.assert_allclose(avi.timestamps, avi.indices / 25.0)


def test_fps_method_on_real_clip(videos):
    out = read_frames(videos / "mmaction2/test.mp4", 12, method="fps")
    assert out.indices.tolist() == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 270, 270]
    assert out.mask.tolist() == [True] * 10 + [False] * 2
    np.testing.assert_allclose(out.timestamps[:10], np.arange(10), atol=1e-6)


def test_result_types(videos):
    out = read_frames(videos / "mmaction2/rawvideo_part_0.mp4", 12, short_side=112, num_threads=2)
    assert isinstance(out, SampledFrames)
    assert out.frames.dtype == np.uint8 and out.frames.shape == (12, 112, 149, 3)
    assert out.indices.dtype == np.int64 and out.mask.dtype == bool and out.timestamps.dtype == np.float64
    assert out.num_video_frames == 32 and out.fps == pytest.approx(30.0)


# ------------------------------------------------------------------ synthetic clips


def test_one_frame_video_is_rejected_two_frames_are_padded(tmp_path):
    assert_read_error(write_clip(tmp_path / "one.mp4", 1), "only 1 frame: a still image, not a video")
    path = write_clip(tmp_path / "two.mp4", 2)
    out = read_frames(path, 4, short_side=24)
    assert out.num_video_frames == 2 and out.indices.tolist() == [0, 1, 1, 1]
    assert out.mask.tolist() == [True, True, False, False] and out.frames.shape == (4, 24, 32, 3)
    assert probe_video(path)["num_frames"] == 2


def test_short_clip_pads_by_repeating_last_frame(tmp_path):
    path = write_clip(tmp_path / "ten.mp4", 10)
    out = read_frames(path, 12)
    assert out.indices.tolist() == list(range(10)) + [9, 9] and int(out.mask.sum()) == 10
    np.testing.assert_array_equal(out.frames[9], out.frames[11])
    reds = out.frames[:10, 0, 0, 0].astype(int)
    assert np.abs(reds - (40 * np.arange(10)) % 256).max() <= 6  # frame i is the i-th frame


# A trailing packet that yields no frame (the container lists one frame more than decodes): every
# backend stands in the previous frame - tests/test_backends.py (with_trailing_packet).


# ------------------------------------------------------------------ bad inputs


def assert_read_error(path: Path, *reason_parts: str) -> str:
    for call in (lambda: read_frames(path, 8), lambda: read_frames(path, 8, short_side=32),
                 lambda: probe_video(path)):
        with pytest.raises(VideoReadError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{path}: ") and info.value.path == str(path)
        assert "\n" not in message and ".cc:" not in message  # no decord C++ internals
        for part in reason_parts:
            assert part in info.value.reason, message
    return message


def test_bad_files_written_here(tmp_path):
    assert_read_error(tmp_path / "missing.mp4", "file not found")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert_read_error(tmp_path / "empty.mp4", "file is empty")
    (tmp_path / "folder.mp4").mkdir()
    assert_read_error(tmp_path / "folder.mp4", "not a regular file")
    (tmp_path / "text.mp4").write_text("this is a caption file, not a video\n" * 40)
    assert_read_error(tmp_path / "text.mp4", "not a video file")
    # moov box at the end (PyAV's default): cut in half, the index is gone
    whole = write_clip(tmp_path / "whole.mp4", 30, noise=True).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    assert_read_error(tmp_path / "cut.mp4", "truncated")
    # moov box first: the index survives, the packets it lists do not
    front = write_clip(tmp_path / "front.mp4", 30, faststart=True, noise=True).read_bytes()
    (tmp_path / "front_cut.mp4").write_bytes(front[: len(front) * 2 // 3])
    assert_read_error(tmp_path / "front_cut.mp4", "truncated")


def test_audio_only_mp4_written_here(tmp_path):
    path = tmp_path / "speech.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        t = np.arange(16000) / 16000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, samples), 1 s
        for start in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    assert_read_error(path, "no video stream (audio only)")


def test_bad_real_files(videos, tmp_path):
    assert_read_error(videos / "mmaction2/test.wav", "no video stream (audio only)")
    assert_read_error(videos / "torchcodec/nasa_13013.mp4.audio.mp3", "no video stream (audio only)")
    assert_read_error(videos / "torchcodec/av1_video.mkv", "decord cannot decode codec av1", "libx264")
    real = (videos / "mmaction2/test.mp4").read_bytes()
    (tmp_path / "test_cut.mp4").write_bytes(real[: len(real) // 3])
    assert_read_error(tmp_path / "test_cut.mp4", "truncated")


def test_corrupted_stream_names_the_frame(videos):
    path = videos / "decord/corrupted.mp4"
    assert probe_video(path)["num_frames"] == 50  # the header's claim; frame 0 decodes
    with pytest.raises(VideoReadError) as info:
        read_frames(path, 12)  # uniform: 2, 6, ..., 27, 31, ...: 31 is past the last good frame
    assert str(info.value).startswith(f"{path}: decoding failed at frame 31 ")
    assert "Invalid data" in info.value.reason


# ------------------------------------------------------------------ truncated files, deep probe

DEEP = [(12, "uniform"), (12, "tsn")]  # the default config's samplings (data_check.video_probe)


def cut_before_frame(src: Path, dst: Path, frame: int) -> Path:
    """``src`` cut just before the data of its ``frame``-th packet, header intact: a download
    that stopped between two packets."""
    with av.open(str(src)) as container:
        starts = sorted(e.pos for e in container.streams.video[0].index_entries)
    dst.write_bytes(src.read_bytes()[: starts[frame]])
    return dst


def test_faststart_mp4_cut_to_a_tenth_is_refused_as_truncated(tmp_path):
    """moov first: the index survives the cut, and decord alone opens the 30 packets left as a
    one-second clip of a ten-second video."""
    import decord

    whole = write_clip(tmp_path / "whole.mp4", 300, fps=30, faststart=True, noise=True)
    cut = cut_before_frame(whole, tmp_path / "cut.mp4", 30)
    size = cut.stat().st_size
    assert 0.08 < size / whole.stat().st_size < 0.13  # about a tenth of the bytes
    assert len(decord.VideoReader(str(cut))) == 30  # what decord makes of it
    message = assert_read_error(cut, "truncated: the stream ends after 30 (1.00 s) of the 300 frames the "
                                     f"header lists; the file has {size} bytes, its index lists frame data up to "
                                     f"byte {whole.stat().st_size}")
    assert message.startswith(f"{cut}: truncated: ")
    with pytest.raises(VideoReadError, match="truncated"):
        probe_video(cut, samplings=DEEP)
    # the same kind of file whole, and missing its last 4 frames (within max(2, 2%)), reads
    assert read_frames(whole, 8).num_video_frames == 300
    assert probe_video(whole, samplings=DEEP)["num_frames"] == 300
    assert read_frames(cut_before_frame(whole, tmp_path / "almost.mp4", 296), 8).num_video_frames == 296


def test_matroska_and_avi_cut_short_are_refused_as_truncated(videos, tmp_path):
    whole = write_clip(tmp_path / "whole.mkv", 300, fps=30, noise=True)
    data = whole.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 10])
    assert_read_error(tmp_path / "cut.mkv", "truncated: the stream ends at ",
                      "of the 10.00 s the header states as the video track's duration")
    assert read_frames(whole, 8).num_video_frames == 300
    data = (videos / "mmaction2/test.avi").read_bytes()  # XviD in AVI: the index is at the end, cut off
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    assert_read_error(tmp_path / "cut.avi", "truncated: the stream ends after 77 ",
                      "of the 164 frames the header lists")


def test_truncation_tolerances():
    from retrieval_pretrain.reading.video_integrity import Listed, truncation

    assert truncation(Listed(frames=300), 294, 9.8, 30.0, 10**6) is None  # 6 frames = 2%: tolerated
    assert truncation(Listed(frames=300), 293, 9.77, 30.0, 10**6).startswith(
        "truncated: the stream ends after 293 (9.77 s) of the 300 frames the header lists")
    assert truncation(Listed(seconds=10.0), 9.85, 9.85, 30.0, 10**6) is None
    assert "of the 10.00 s the header states as the video track's duration" in truncation(
        Listed(seconds=10.0), 291, 9.7, 30.0, 10**6)
    # a segment duration covers the audio too: up to max(1 s, 10%) shorter video is no truncation
    assert truncation(Listed(seconds=10.4, loose=True), 285, 9.5, 30.0, 10**6) is None
    assert "the header states as the file's duration" in truncation(Listed(seconds=10.4, loose=True), 150,
                                                                     5.0, 30.0, 10**6)


def test_deep_probe_decodes_what_extraction_samples(videos):
    path = videos / "decord/corrupted.mp4"
    with pytest.raises(VideoReadError) as info:  # frame 0 decodes; the TSN segment [30, 34) does not
        probe_video(path, samplings=DEEP)
    # where the error surfaces depends on the decoder's threads: frame 29 on a quiet machine, 27 (or
    # no frame named) under load - always past the 28 frames PyAV gets out of the stream, give or take
    assert re.match(r"decoding failed (at frame (27|29) )?\(the container lists 50 frames\)", info.value.reason), \
        info.value.reason
    with pytest.raises(ValueError, match="unknown sampling method"):
        probe_video(path, samplings=[(12, "random")])


@pytest.mark.parametrize("name,frames", [(f[0], f[1]) for f in FACTS], ids=[f[0] for f in FACTS])
def test_readable_real_clips_pass_the_deep_probe(videos, name, frames):
    assert probe_video(videos / name, samplings=DEEP + [(12, "fps")])["num_frames"] == frames


def test_works_in_dataloader_workers(videos):
    torch = pytest.importorskip("torch")

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return read_frames(videos / "mmaction2/rawvideo_part_0.mp4", 4, "tsn", short_side=32,
                               rng=np.random.default_rng(i)).frames

    loader = torch.utils.data.DataLoader(Clips(), batch_size=2, num_workers=2)
    batches = list(loader)
    assert [tuple(b.shape) for b in batches] == [(2, 4, 32, 42, 3)] * 2
