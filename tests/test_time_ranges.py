"""Sampling inside a time range (``read_frames`` of a ``Clip``) on the real clips, and the range rules.

References: every frame's start time from the per-frame json of the variable-frame-rate clip
(written by ffprobe, independent of decord), and for the other clips the whole-file read of the same
indices (a range must pick frames of the file, not of a re-timed copy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval_pretrain.reading import video as video_module
from retrieval_pretrain.reading.clips import Clip, clip_id, frames_in_range, range_problem
from retrieval_pretrain.reading.video import VideoReadError, probe_video, read_frames

READABLE = ["mmaction2/test.mp4", "mmaction2/demo.mp4", "mmaction2/test.avi", "mmaction2/test_video_structuralize.mp4",
            "mmaction2/S001C001P001R001A001_rgb.avi", "decord/flipping_a_pancake.mkv", "torchcodec/var_fps_video.mp4",
            "torchcodec/nasa_13013.mp4", "swinbert/G0mjFqytJt4_000152_000162.mp4"]


@pytest.fixture(scope="module")
def videos(shared_data: Path) -> Path:
    return shared_data / "videos"


@pytest.mark.parametrize("name", READABLE)
@pytest.mark.parametrize("method", ["uniform", "fps", "tsn"])
def test_every_sampled_frame_lies_in_the_range(videos: Path, name: str, method: str):
    path = videos / name
    info = probe_video(path)
    start, end = 0.3 * info["duration"], 0.7 * info["duration"]
    got = read_frames(Clip(path, start, end), 8, method, rng=np.random.default_rng(0))
    real = got.timestamps[got.mask]
    assert len(real) >= 2
    assert (real >= start - 1e-6).all() and (real <= end).all(), (name, real, start, end)
    whole = read_frames(path, 8, "uniform")
    assert got.num_video_frames == whole.num_video_frames
    # the frames are the file's own frames at those indices: same pixels as a whole-file read of them
    reader = video_module._open(str(path), 1)
    ref = video_module._to_numpy(reader.get_batch(got.indices.tolist()))
    np.testing.assert_array_equal(got.frames, ref)


def test_variable_frame_rate_range_matches_ffprobe_times(videos: Path):
    """var_fps_video.mp4 has gaps of 0.033-0.533 s: the range is cut by time, not by frame count."""
    path = videos / "torchcodec/var_fps_video.mp4"
    times = np.array([float(f["pts_time"]) for f in
                      json.loads((videos / "torchcodec/var_fps_video.mp4.stream0.all_frames_info.json").read_text())])
    start, end = 2.0, 5.5
    inside = np.flatnonzero((times >= start - 1e-6) & (times < end - 1e-6))
    got = read_frames(Clip(path, start, end), 400, "uniform")  # more than the range holds: every frame once
    assert got.indices[got.mask].tolist() == inside.tolist()
    np.testing.assert_allclose(got.timestamps[got.mask], times[inside], atol=1e-4)
    # the clip's first frame is not the file's frame 0
    assert got.indices[0] == inside[0] > 0


def test_consecutive_windows_share_no_frame_and_cover_the_video(videos: Path):
    path = videos / "mmaction2/test.mp4"  # 300 frames, 30 fps: 10 s
    seen = []
    for s in range(0, 10, 2):
        got = read_frames(Clip(path, float(s), float(s + 2)), 100, "uniform")
        seen.extend(got.indices[got.mask].tolist())
    assert seen == list(range(300))


def test_windows_of_one_file_reuse_one_reader(videos: Path):
    path = videos / "mmaction2/test.mp4"
    read_frames(Clip(path, 0.0, 2.0), 4)
    first = video_module._LAST.value[1]
    read_frames(Clip(path, 2.0, 4.0), 4)
    assert video_module._LAST.value[1] is first
    read_frames(Clip(videos / "mmaction2/demo.mp4", 0.0, 2.0), 4)
    assert video_module._LAST.value[1] is not first


def test_a_range_past_the_end_names_the_file_and_range(videos: Path):
    path = videos / "mmaction2/test.mp4"
    with pytest.raises(VideoReadError, match=r"test\.mp4: the range 12-15 s starts past the end of the video \(10 s"):
        read_frames(Clip(path, 12.0, 15.0), 4)
    with pytest.raises(VideoReadError, match=r"the range 1.01-1.02 s holds no frame"):
        read_frames(Clip(path, 1.01, 1.02), 4)
    # an end past the duration is the rest of the video
    got = read_frames(Clip(path, 8.0, 30.0), 100)
    assert got.indices[got.mask].tolist() == list(range(240, 300))


@pytest.mark.parametrize("start,end,why", [
    (-1, 2, "negative start"), (3, 3, "zero-length"), (5, 2, "end before start"),
    (float("nan"), 2, "finite"), (0, float("inf"), "finite"), ("1", 2, "number"), (True, 2, "number"),
])
def test_range_problems(start, end, why):
    assert why in range_problem(start, end)
    with pytest.raises(ValueError, match=why):
        Clip(Path("a.mp4"), start, end)


def test_clip_ids_and_names():
    assert clip_id("v_abc", 12.5, 20.0) == "v_abc[12.5-20]"
    assert clip_id("v_abc", None, None) == "v_abc"
    assert clip_id("v", 0.0001, 1.23456) == "v[0-1.235]"
    assert str(Clip(Path("a.mp4"), 1, 2.25)) == "a.mp4 [1-2.25 s]"
    assert str(Clip(Path("a.mp4"))) == "a.mp4"


def test_frames_in_range_is_half_open():
    starts = np.arange(10) / 10.0  # frames at 0.0 .. 0.9, the video ends at 1.0
    assert frames_in_range(starts, Clip(Path("x"), 0.2, 0.5), 1.0) == (2, 5)
    assert frames_in_range(starts, Clip(Path("x"), 0.25, 0.5), 1.0) == (3, 5)
    assert frames_in_range(starts, Clip(Path("x"), 0.9, 5.0), 1.0) == (9, 10)


_FORK_AFTER_RANGE = """
import sys
from torch.utils.data import DataLoader
from retrieval_pretrain.reading.clips import Clip
from retrieval_pretrain.reading.video import read_frames
a, b = sys.argv[1], sys.argv[2]
read_frames(Clip(a, 0.0, 2.0), 4)  # this process now holds a decoder of a
loader = DataLoader([Clip(b, 0.0, 2.0), Clip(a, 2.0, 4.0)], batch_size=1, num_workers=1,
                    collate_fn=lambda items: int(read_frames(items[0], 4).mask.sum()))
print(sum(loader))
"""


def test_a_forked_loader_worker_never_touches_the_parents_decoder(videos: Path):
    """decord's destructor waits for decoding threads that a forked child does not have: a worker that
    inherited the parent's range decoder and dropped it hung forever (gdb: FFMPEGThreadedDecoder::Stop)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _FORK_AFTER_RANGE, str(videos / "mmaction2/test.mp4"),
                           str(videos / "mmaction2/demo.mp4")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "8"
