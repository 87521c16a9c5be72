"""Moments (issue 27): ``vcap index --segments`` indexes windows of each video, ``vcap search``
returns video, start, end and score; overlapping results of one video collapse to the best; a
rerun embeds new and changed files only and drops gone ones; under ``accelerate launch`` two CPU
processes embed their shares into their own shards, and a run killed midway resumes losing at most
a shard per process.

The long video is the session's ``motion_model`` clips (conftest: 1 s demo clips captioned "moving
<motion>", the model trained on them) one after another, their packets copied
(``benchmarks.long_video.concatenate``), so window k holds exactly clip k's frames."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from conftest import free_port

from benchmarks.long_video import concatenate
from caption.windows import segment_windows
from retrieval_pretrain.foundation.errors import FeatureMismatchError
from retrieval_pretrain.reading.clips import fixed_windows
from vcap_toolkit.cli.main import main
from vcap_toolkit.jobs.moments import Hit, collapse
from vcap_toolkit.jobs.search import IndexSearcher, VideoIndex, build_index, search

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- windows and collapse (no model)


def test_index_windows_are_the_caption_windows_and_a_stride_overlaps_them():
    rng = random.Random(0)
    for _ in range(2000):
        duration, seconds = rng.uniform(0.05, 600), rng.choice([0.3, 1.0, 2.5, 10.0, rng.uniform(0.1, 60)])
        assert fixed_windows(duration, seconds) == segment_windows(duration, seconds), (duration, seconds)
    assert fixed_windows(12.0, 4.0, 2.0) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0), (8.0, 12.0)]
    assert fixed_windows(13.0, 4.0, 3.0) == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0), (9.0, 13.0)]
    assert fixed_windows(3.0, 4.0, 2.0) == [(0.0, 3.0)]  # shorter than a window: one
    with pytest.raises(ValueError):
        fixed_windows(10.0, 2.0, 3.0)  # a stride longer than the window would leave gaps


def test_overlapping_results_of_one_video_collapse_to_the_best():
    hits = [Hit("a", 0.9, 4.0, 8.0), Hit("a", 0.8, 6.0, 10.0), Hit("b", 0.7, 4.0, 8.0), Hit("a", 0.6, 8.0, 12.0),
            Hit("a", 0.5, 2.0, 6.0), Hit("a", 0.4, 0.0, 4.0)]
    assert collapse(hits) == [Hit("a", 0.9, 4.0, 8.0), Hit("b", 0.7, 4.0, 8.0), Hit("a", 0.6, 8.0, 12.0),
                              Hit("a", 0.4, 0.0, 4.0)]  # 8-12 and 0-4 only touch 4-8: kept
    assert collapse([Hit("a", 0.9), Hit("b", 0.8)]) == [Hit("a", 0.9), Hit("b", 0.8)]  # whole files never collapse


# ----------------------------------------------------------------------------- a long video, indexed in windows


@pytest.fixture(scope="module")
def long_video(tmp_path_factory, motion_model) -> tuple[Path, Path, list[str], dict[str, str]]:
    """The motion model's 20 clips (1 s each: 8 frames at 8 fps) one after another in one 20 s video
    (their packets copied, ``long_video.concatenate``: window k decodes to clip k's very frames)."""
    model, truth = motion_model
    clips = sorted(truth)
    video = tmp_path_factory.mktemp("moments") / "long.mp4"
    concatenate([Path(c) for c in clips], video)
    return model, video, clips, truth


def test_a_long_video_indexed_in_windows_finds_each_moment(long_video, tmp_path, capsys):
    model, video, clips, truth = long_video
    idx = tmp_path / "idx"
    assert main(["index", str(video), "--model", str(model), "--output", str(idx), "--segments", "1",
                 "--num-workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["indexed"], report["rows"], report["vectors"]["kind"]) == (1, 20, "exact")
    meta = json.loads((idx / "meta.json").read_text())
    assert (meta["format"], meta["segments"]) == (3, {"seconds": 1.0, "stride": 1.0})
    rows = json.loads((idx / "shards" / "000000.json").read_text())
    assert [(r["start"], r["end"]) for r in rows] == [(float(k), float(k + 1)) for k in range(20)]

    # by example: a clip is its window, found first with its start and end
    for k in (0, 13):
        assert main(["search", str(idx), "--video", clips[k], "--top", "3", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
        assert result[0][:3] == [str(video), float(k), float(k + 1)] and result[0][3] == pytest.approx(1.0, abs=2e-3)
        assert len(result) == 3 and all(len(r) == 4 and r[0] == str(video) for r in result)

    # by caption: the windows rank as their clips do in an index of the clips themselves
    build_index(model, clips, tmp_path / "clips", CPU, batch_size=8)
    hits = 0
    for caption in sorted(set(truth.values())):
        moments = search(idx, CPU, text=caption, top=5)
        whole = search(tmp_path / "clips", CPU, text=caption, top=5)
        assert [clips[int(start)] for _, start, _, _ in moments] == [p for p, _ in whole], caption
        assert all(end == start + 1 for _, start, end, _ in moments)
        np.testing.assert_allclose([m[3] for m in moments], [s for _, s in whole], atol=2e-3)
        hits += truth[clips[int(moments[0][1])]] == caption  # the window of a clip with this caption first
    labels = len(set(truth.values()))
    assert hits / labels >= 0.5, (hits, labels)  # a random first window has the caption 1 time in `labels`

    assert main(["search", str(idx), "moving up", "--top", "2"]) == 0  # the text form names the window
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[2] == str(video) and line.endswith(" s") for line in lines)


def test_overlapping_windows_and_reruns_of_a_moment_index(long_video, tmp_path, capsys):
    model, video, _, _ = long_video
    work = tmp_path / "videos"
    work.mkdir()
    first, second = work / "a.mp4", work / "b.mp4"
    shutil.copy(video, first)
    idx = tmp_path / "idx"
    report = build_index(model, [first], idx, CPU, batch_size=8, segments=2.0, stride=1.0)
    assert (report["indexed"], report["rows"]) == (1, 19)  # 0-2, 1-3, ..., 18-20
    got = search(idx, CPU, text="moving left", top=5)
    assert len(got) == 5 and all(r[2] - r[1] == 2.0 for r in got)
    assert not any(a[1] < b[2] and b[1] < a[2] for i, a in enumerate(got) for b in got[i + 1:])  # none overlap
    shards = {p.name: p.stat().st_mtime_ns for p in (idx / "shards").iterdir()}

    shutil.copy(video, second)  # a new file: only it is embedded; the vector index takes its rows, no retraining
    report = build_index(model, [first, second], idx, CPU, batch_size=8, segments=2.0, stride=1.0)
    assert (report["done_before"], report["indexed"], report["rows"]) == (1, 1, 38)
    assert report["vectors"]["trained_rows"] == 19  # the vector index was added to, not built again
    assert IndexSearcher(idx).vectors.index.ntotal == 38  # and is the one a search uses
    assert all((idx / "shards" / n).stat().st_mtime_ns == t for n, t in shards.items())  # nothing rewritten
    got = search(idx, CPU, text="moving left", top=4)
    assert {r[0] for r in got} == {str(first), str(second)}  # the same moments in both files, equal scores
    assert got[0][1:] == got[1][1:] and got[2][1:] == got[3][1:]

    os.unlink(first)  # gone: its 11 rows dropped, listed
    report = build_index(model, [second], idx, CPU, batch_size=8, segments=2.0, stride=1.0)
    assert (report["gone"], report["dropped"], report["rows"]) == (1, 19, 19)
    assert IndexSearcher(idx).vectors.index.ntotal == 19
    assert {r[0] for r in search(idx, CPU, text="moving left", top=10)} == {str(second)}
    with pytest.raises(FeatureMismatchError, match="holds windows of 2 s, one every 1 s"):
        build_index(model, [second], idx, CPU, segments=1.0)
    with pytest.raises(FeatureMismatchError, match="holds windows of 2 s"):
        build_index(model, [second], idx, CPU)  # whole files into a moment index


def test_a_bad_window_option_is_one_line(long_video, tmp_path, capsys):
    model, video, _, _ = long_video
    for extra, message in ((["--segments", "0"], "--segments 0.0: give a number of seconds > 0"),
                           (["--segments", "2", "--stride", "3"], "--stride 3 is longer than --segments 2"),
                           (["--stride", "1"], "--stride needs --segments"),
                           (["--vectors", "approximate", "--segments", "nan"], "--segments nan: give a number"),
                           (["--segments", "1e-6"], "--segments 1e-06: windows shorter than 0.1 s are not cut"),
                           (["--segments", "5", "--stride", "0.01"], "--stride 0.01: windows shorter than 0.1 s")):
        capsys.readouterr()
        assert main(["index", str(video), "--model", str(model), "--output", str(tmp_path / "i"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"vcap: config error: {message}"), err
    assert not (tmp_path / "i").exists()  # refused before any work


# ----------------------------------------------------------------------------- two processes (accelerate launch)


def _launch(args: list[str]) -> subprocess.Popen:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vcap_toolkit.cli.main", "index", *args]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow  # two 'accelerate launch'es: each starts two interpreters that load torch (~20-40 s here)
def test_two_processes_killed_midway_resume_and_equal_one(motion_model, tmp_path):
    model, truth = motion_model
    videos = []
    for copy in range(3):  # 60 files: enough work that the kill lands while both processes embed
        folder = tmp_path / f"v{copy}"
        folder.mkdir()
        for clip in sorted(truth):
            os.symlink(clip, folder / Path(clip).name)
            videos.append(str(folder / Path(clip).name))
    one = build_index(model, videos, tmp_path / "one", CPU, batch_size=4, shard_size=4)
    assert one["indexed"] == len(videos)
    args = [*videos, "--model", str(model), "--output", str(tmp_path / "two"), "--batch-size", "1",
            "--shard-size", "1", "--num-workers", "0", "--device", "cpu"]
    proc = _launch(args)
    parts, deadline = tmp_path / "two" / "parts", time.monotonic() + 300
    while not all(len(list(parts.glob(f"rank{r}/shards/*.json"))) >= 2 for r in (0, 1)):  # each saved shards
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.005)
    launched = psutil.Process(proc.pid)
    for member in [*launched.children(recursive=True), launched]:  # both processes and the launcher, mid-run
        member.kill()  # (torchrun starts its workers in sessions of their own: not one process group)
    proc.communicate()
    saved = sum(len(json.loads(p.read_text())) for p in parts.glob("rank*/shards/*.json"))
    assert 4 <= saved < len(videos)
    proc = _launch(args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["processes"] == 2 and report["done_before"] == saved  # what the killed run saved is kept
    assert report["indexed"] == len(videos) - saved and sum(report["indexed_per_process"]) == report["indexed"]
    assert not parts.exists() and report["rows"] == len(videos)
    a, b = VideoIndex(tmp_path / "one"), VideoIndex(tmp_path / "two")
    got = dict(zip(b.paths(), b.embeddings().astype(np.float32)))
    assert sorted(got) == sorted(videos) and len(b.paths()) == len(videos)
    want = dict(zip(a.paths(), a.embeddings().astype(np.float32)))
    assert all(np.allclose(got[v], want[v], atol=2e-3) for v in videos)
    two, one = (search(tmp_path / name, CPU, text="moving up", top=6) for name in ("two", "one"))
    assert sorted(Path(p).name for p, _ in two) == sorted(Path(p).name for p, _ in one)  # each clip 3 times:
    np.testing.assert_allclose([s for _, s in two], [s for _, s in one], atol=2e-3)  # ties in any order


# ----------------------------------------------------------------------------- the page


def test_the_page_plays_a_found_moment_from_its_start_with_its_subtitles(long_video, tmp_path):
    """``vcap serve`` over a moment index, in headless Chromium: a search shows each result's window,
    clicking one plays the video from that window's start (``currentTime``), and the video's .vtt
    (``vcap caption --subtitles``) is the player's subtitle track. The caption model is the one
    ``tests/data/legacy_v1.tar.xz`` holds (the page needs one; this test does not caption)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("flask", reason="the web extra is not installed")
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip(f"no Chromium at {chromium}")
    import tarfile
    import threading

    from vcap_toolkit.web.models import ServeModels, path_guard
    from vcap_toolkit.web.serve import create_app, make_server, stop_server

    model, video, _, _ = long_video
    with tarfile.open(Path(__file__).parent / "data" / "legacy_v1.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    idx = tmp_path / "idx"
    build_index(model, [video], idx, CPU, batch_size=8, segments=1.0)
    vtt = video.with_suffix(".vtt")
    vtt.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:10.000\nthe first half\n\n"
                   "00:00:10.000 --> 00:00:20.000\nthe second half\n")
    want = search(idx, CPU, text="moving up", top=4)
    models = ServeModels.load(tmp_path / "legacy_v1" / "stage2_model", None, idx, device="cpu")
    srv = make_server(create_app(models, path_guard(models, None), 1, upload_dir=tmp_path), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        with sync_api.sync_playwright() as p:
            args = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
            browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=args)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{srv.effective_port}/")
            page.wait_for_selector("html[data-ready='1']")
            assert "1 videos, 20 moments" in page.inner_text("#loaded")
            page.fill("#query", "moving up")
            page.select_option("#top", "4")
            page.click("#search-btn")
            page.wait_for_selector("#search-card[data-state='done']")
            cards = page.locator("#results .result").all()
            shown = [(c.get_attribute("data-path"), float(c.get_attribute("data-start")),
                      float(c.get_attribute("data-end"))) for c in cards]
            assert shown == [tuple(r[:3]) for r in want]
            pick = next(i for i, r in enumerate(want) if r[1] >= 1)  # a moment that does not start where the video does
            start, end = want[pick][1], want[pick][2]
            cards[pick].click()
            _until(page, "document.getElementById('player').readyState >= 1")  # (the CSP forbids wait_for_function)
            _until(page, "(t => t.length == 1 && t[0].cues && t[0].cues.length == 2)"
                         "(document.getElementById('player').textTracks)")
            now = page.evaluate("document.getElementById('player').currentTime")
            assert start <= now <= end and now - start < 0.5, (now, start, end)
            assert page.evaluate("document.getElementById('player').textTracks[0].mode") == "showing"
            assert page.evaluate("document.getElementById('player').textTracks[0].cues[1].text") == "the second half"
            browser.close()
        assert errors == []
    finally:
        stop_server(srv)
        thread.join(10)
        vtt.unlink()


def _until(page, expression: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, expression
        time.sleep(0.05)
