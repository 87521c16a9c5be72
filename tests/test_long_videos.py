"""Long videos (issue 26, part 2): windows, shots, merging, subtitles, the timeline page, and dense
evaluation - on long mp4 files made of demo scenes whose content is known.

Six demo scenes (colour, shape, motion, background: ``SCENES``), 2 s each (16 frames at 8 fps), are
rendered fresh and concatenated into 12-second videos in shuffled orders; a YouCook2-shaped dataset
(``youcook2.json``) annotates each scene as a segment of its video. The module's fixture trains the
tiny stage 1 and caption model on the 3 training videos through the command line (pretrain,
extract, train), so the captioner knows the scenes; the tests then caption the validation and test videos
- renders it never saw, in orders it never saw - window by window, and evaluate the dense split.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import srt
import webvtt

from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from caption.subtitles import check_subtitles_path, subtitles_text, write_subtitles
from caption.windows import TimedCaption, WindowSpec, bound_shots, detect_cuts, merge_captions, segment_windows
from retrieval_pretrain.foundation.errors import ConfigError
from vcap_toolkit.cli.main import main

SCENES = [("red", "circle", "right", "grey"), ("blue", "square", "down", "black"), ("green", "star", "grow", "beige"),
          ("yellow", "cross", "left", "slate"), ("purple", "triangle", "up", "brown"),
          ("orange", "circle", "still", "dark grey")]
CLIP_FRAMES, FPS, SIZE = 16, 8, 64
CLIP_SECONDS = CLIP_FRAMES / FPS
CHROMIUM = Path("/usr/bin/chromium")
S1 = ["video.num_frames=4", "pretrain.batch_size=6", "pretrain.epochs=10", "run.num_workers=0",
      "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
      "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0"]
# No validation split while training (a val CIDEr per epoch would cost more than the training).
S2 = ["data.val_split=none", "caption.hidden_size=64", "caption.ffn_size=128", "caption.dropout=0.0",
      "caption.batch_size=18", "caption.select_by=last", "caption.vocab_size=120", "caption.epochs=60",
      "caption.lr=1e-2", "caption.label_smoothing=0.0", "caption.save_every=0", "decode.num_beams=1"]


def _caption_of(scene: int) -> str:
    colour, shape, motion, background = SCENES[scene]
    return demo_data.make_captions(colour, shape, motion, background, 1, np.random.default_rng([9, scene]))[0]


def _render(scene: int, seed: list[int]) -> np.ndarray:
    """One fresh render of a scene: (16, 64, 64, 3) uint8 (trajectory, shade and grain drawn anew)."""
    colour, shape, motion, background = SCENES[scene]
    rng = np.random.default_rng(seed)
    back = demo_data.render_background(background, SIZE, rng)
    return demo_data.render_frames(shape, demo_data.object_colour(colour, rng), back,
                                   demo_data.sample_trajectory(motion, CLIP_FRAMES, rng))


# YouCook2 subset and number of scenes of each video (the validation video is short: evaluating
# it runs METEOR on each of its windows at four tIoUs, about a second per item on a busy 2-core CPU).
PLAN = [("training", 6), ("training", 6), ("training", 6), ("validation", 3), ("testing", 6), ("testing", 6)]


def make_long_videos(folder: Path, plan: list[tuple[str, int]] = PLAN) -> dict[str, list[int]]:
    """A video per ``plan`` row (``long0``, ``long1``, ...), its scenes in a shuffled order, 2 s each
    (PyAV, H.264), and their YouCook2-shaped annotations (``folder/youcook2.json``). Returns video id
    -> its scenes in order."""
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    orders, database = {}, {}
    for v, (subset, scenes) in enumerate(plan):
        vid, order = f"long{v}", [int(x) for x in rng.permutation(len(SCENES))[:scenes]]
        frames = np.concatenate([_render(scene, [v, k, scene]) for k, scene in enumerate(order)])  # (96, 64, 64, 3)
        demo_data.write_mp4(folder / "videos" / f"{vid}.mp4", frames, FPS)
        orders[vid] = order
        database[vid] = {"duration": len(order) * CLIP_SECONDS, "subset": subset,
                         "recipe_type": "101",
                         "annotations": [{"segment": [k * CLIP_SECONDS, (k + 1) * CLIP_SECONDS], "id": k,
                                          "sentence": _caption_of(scene)} for k, scene in enumerate(order)]}
    (folder / "youcook2.json").write_text(json.dumps({"database": database}))
    return orders


@dataclass
class Trained:
    root: Path
    model: Path
    orders: dict[str, list[int]]
    args: list[str]  # --config and data overrides for the dataset

    def video(self, vid: str) -> str:
        return str(self.root / "data" / "videos" / f"{vid}.mp4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> Trained:
    """The dataset, and the whole training through the command line: pretrain, extract, train."""
    root = tmp_path_factory.mktemp("long")
    orders = make_long_videos(root / "data")
    args = ["--config", str(CONFIG_PATH), "data.format=youcook2", f"data.annotations={root / 'data' / 'youcook2.json'}",
            f"data.videos={root / 'data' / 'videos'}", *S1]
    assert main(["pretrain", "--output", str(root / "s1"), *args]) == 0
    assert main(["extract", "--model", str(root / "s1" / "model"), "--output", str(root / "feats"), *args]) == 0
    assert main(["train", "--features", str(root / "feats"), "--output", str(root / "s2"), *args, *S2]) == 0
    return Trained(root, root / "s2" / "model", orders, args)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _names(caption: str, scene: int) -> bool:
    """Whether a caption names the scene's colour and shape (the demo's vocabulary and parser)."""
    said = demo_data.caption_attributes(caption)
    return (said["colour"], said["shape"]) == SCENES[scene][:2]


def _scene_at(order: list[int], t: float) -> int:
    return order[min(int(t // CLIP_SECONDS), len(order) - 1)]


# ---------------------------------------------------------------- windows, shots, merging (no model)


def test_windows_cover_the_video_and_fold_a_short_tail():
    assert segment_windows(12.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0), (10.0, 12.0)]
    assert segment_windows(12.4, 2.0)[-1] == (10.0, 12.4)  # 0.4 s < a quarter window: joins the last one
    assert segment_windows(12.6, 2.0)[-2:] == [(10.0, 12.0), (12.0, 12.6)]  # 0.6 s >= 0.5 s: a window of its own
    assert segment_windows(3.0, 10.0) == [(0.0, 3.0)]
    assert segment_windows(0.9, 0.3) == [(0.0, 0.3), (0.3, 0.6), (0.6, 0.9)]  # no float drift at the edges
    hour = segment_windows(3600.0, 10.0)
    assert len(hour) == 360 and all(b[0] == a[1] for a, b in zip(hour, hour[1:])) and hour[-1][1] == 3600.0


def test_shots_shorter_than_the_minimum_merge_and_longer_than_the_maximum_split():
    # a flash at 4.0-4.1 s, a cut at 0.5 s and one 1.5 s before the end: dropped with a 2 s minimum
    assert bound_shots([0.5, 4.0, 4.1, 10.0, 18.5], 20.0, 2.0, 30.0) == [(0.0, 4.0), (4.0, 10.0), (10.0, 20.0)]
    assert bound_shots([], 25.0, 2.0, 10.0) == [(0.0, 8.333), (8.333, 16.667), (16.667, 25.0)]
    assert bound_shots([], 1.0, 2.0, 30.0) == [(0.0, 1.0)]  # a video shorter than the minimum: one shot


def test_merge_joins_consecutive_identical_captions_only():
    a, b = "a red circle moves right", "a blue square falls"
    windows = [TimedCaption(0, 2, a), TimedCaption(2, 4, a), TimedCaption(4, 6, b), TimedCaption(6, 8, None, "bad"),
               TimedCaption(8, 10, b), TimedCaption(10, 12, b), TimedCaption(12, 14, a)]
    assert merge_captions(windows) == [TimedCaption(0, 4, a), TimedCaption(4, 6, b), TimedCaption(6, 8, None, "bad"),
                                       TimedCaption(8, 12, b), TimedCaption(12, 14, a)]


def test_window_options_are_checked():
    for bad in (0, -1, float("nan"), float("inf"), "ten", True):
        with pytest.raises(ConfigError, match="--segments"):
            WindowSpec(bad)
    with pytest.raises(ConfigError, match="--max-segment 1 is shorter than --min-segment 2"):
        WindowSpec("shots", 2.0, 1.0)
    assert WindowSpec("shots").as_dict() == {"segments": "shots", "min_segment": 2.0, "max_segment": 30.0}


def test_shot_detection_finds_every_cut(tmp_path):
    orders = make_long_videos(tmp_path, [("training", 6)])
    video = tmp_path / "videos" / "long0.mp4"
    cuts = detect_cuts(video, min_segment=1.0)
    assert cuts == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0], abs=1 / FPS)  # within one frame of each scene change
    assert len(orders["long0"]) == 6


def test_subtitle_files_parse_with_their_libraries(tmp_path):
    windows = [TimedCaption(0.0, 2.5, "a red circle & a <blue> square --> right"), TimedCaption(2.5, 4.0, None, "x"),
               TimedCaption(4.0, 3725.25, "a green star grows")]
    vtt = webvtt.read(str(write_subtitles(tmp_path / "out.vtt", windows)))
    assert [(c.start, c.end) for c in vtt] == [("00:00:00.000", "00:00:02.500"), ("00:00:04.000", "01:02:05.250")]
    assert vtt[0].raw_text == "a red circle &amp; a &lt;blue&gt; square --&gt; right"  # escaped: one cue, no tag
    subs = list(srt.parse(write_subtitles(tmp_path / "out.srt", windows).read_text()))
    assert [(s.index, s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == [
        (1, 0.0, 2.5, windows[0].caption), (2, 4.0, 3725.25, "a green star grows")]
    assert subtitles_text([], ".vtt").startswith("WEBVTT")


def test_a_subtitle_file_vcap_did_not_write_is_never_replaced(tmp_path):
    """A hostile round's find: ``--subtitles mine.srt`` replaced a user's hand-made subtitles. A WebVTT
    file vcap wrote says so in a NOTE block and may be replaced; any other file there is refused."""
    windows = [TimedCaption(0.0, 2.0, "a red circle moves up")]
    ours = write_subtitles(tmp_path / "ours.vtt", windows)
    assert "NOTE written by vcap caption" in ours.read_text() and len(webvtt.read(str(ours)).captions) == 1
    assert check_subtitles_path(ours) == ours  # vcap's own: a rerun replaces it
    mine = {"mine.srt": "1\n00:00:00,000 --> 00:00:02,000\nmy words\n",
            "mine.vtt": "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nmy words\n", "notes.vtt": "not subtitles"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=rf"--subtitles {re.escape(str(tmp_path / name))} exists \(.*\); nothing "
                                              "was changed - move it away"):
            check_subtitles_path(tmp_path / name)
        assert (tmp_path / name).read_text() == text


def test_bad_window_options_are_one_line_before_any_work(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not read: the options are refused first")
    model = str(tmp_path / "no_model")
    other = tmp_path / "w.mp4"
    other.write_bytes(b"")
    cases = [([video], ["--subtitles", str(tmp_path / "out.vtt")], "subtitles need windows"),
             ([video], ["--segments", "2", "--subtitles", str(tmp_path / "out.txt")], "ending in .vtt (WebVTT)"),
             ([video], ["--segments", "2", "--subtitles", str(video)], "ending in .vtt"),
             ([video], ["--segments", "2", "--min-segment", "1"], "go with --segments shots"),
             ([video, other], ["--segments", "2", "--subtitles", str(tmp_path / "o.srt")], "for one video; 2 given")]
    for videos, extra, message in cases:
        capsys.readouterr()
        assert main(["caption", *map(str, videos), "--model", model, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("vcap: config error: ") and message in err[-1], (extra, err)
        assert not any(line.startswith("vcap:") or "Traceback" in line for line in err[:-1]), err
    with pytest.raises(SystemExit) as exit_:
        main(["caption", str(video), "--model", model, "--segments", "0"])
    assert exit_.value.code == 2 and "is not a number of seconds > 0" in capsys.readouterr().err


# ---------------------------------------------------------------- with the trained captioner


def test_dense_dataset_end_to_end(trained, capsys):
    """``vcap evaluate`` on the validation split (1 video, 3 annotated segments): the segment-level
    scores as before, and each whole video captioned in 2-second windows, written in the challenge
    format and scored with the dense metric; ``vcap score`` of the two files it wrote agrees."""
    out = trained.root / "ev"
    assert main(["evaluate", "--model", str(trained.model), "--split", "val", "--segments", "2", "--output", str(out),
                 *trained.args, *S2]) == 0
    metrics = _last_json(capsys)
    assert (metrics["videos"], metrics["not_captioned"], metrics["dense_videos"]) == (3, 0, 1)
    assert metrics["windows"] == {"segments": 2.0} and metrics["dense_not_captioned"] == 0
    assert metrics == json.loads((out / "metrics.json").read_text())
    dense = metrics["dense"]
    assert set(dense["tIoU"]) == {"0.3", "0.5", "0.7", "0.9"}
    assert list(dense["average"]) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "Recall",
                                      "Precision"]
    refs = json.loads((out / "references_dense.json").read_text())
    assert refs["long3"]["sentences"] == [_caption_of(s) for s in trained.orders["long3"]]
    assert refs["long3"]["timestamps"] == [[2.0 * k, 2.0 * k + 2] for k in range(3)] and refs["long3"]["duration"] == 6
    results = json.loads((out / "predictions_dense.json").read_text())["results"]
    assert set(results) == {"long3"}
    right = sum(_names(row["sentence"], _scene_at(trained.orders[vid], t))
                for vid, rows in results.items() for row in rows
                for t in np.arange(row["timestamp"][0] + 1, row["timestamp"][1], CLIP_SECONDS))
    with capsys.disabled():
        print(f"\ndense: {right}/3 windows name their scene; average {json.dumps(dense['average'])}")
    assert right == 3
    # A window right in content and place is a hit at every tIoU; the sentences are the references.
    assert dense["tIoU"]["0.9"]["Recall"] == dense["tIoU"]["0.9"]["Precision"] == 100
    assert dense["average"]["METEOR"] > 90 and dense["average"]["Bleu_4"] > 90
    assert main(["score", "--predictions", str(out / "predictions_dense.json"),
                 "--references", str(out / "references_dense.json")]) == 0
    again = _last_json(capsys)["dense"]
    assert {(t, m): again["tIoU"][t][m] for t in again["tIoU"] for m in again["tIoU"][t]} == pytest.approx(
        {(t, m): dense["tIoU"][t][m] for t in dense["tIoU"] for m in dense["tIoU"][t]}, rel=1e-9)


def _windows_named(trained: Trained, captions: dict[str, list[dict]]) -> tuple[int, int, list[float]]:
    """(clips whose middle's caption names their scene, clips, each caption boundary's distance to
    the nearest scene change)."""
    right = total = 0
    gaps = []
    for vid in ("long4", "long5"):
        windows, order = captions[trained.video(vid)], trained.orders[vid]
        assert windows[0]["start"] == 0 and windows[-1]["end"] == 12.0
        assert all(a["end"] == b["start"] for a, b in zip(windows, windows[1:]))  # they tile the video
        for k, scene in enumerate(order):
            middle = (k + 0.5) * CLIP_SECONDS
            w = next(w for w in windows if w["start"] <= middle < w["end"])
            right += _names(w["caption"], scene)
            total += 1
        gaps += [min(abs(w["start"] - CLIP_SECONDS * k) for k in range(1, 6)) for w in windows[1:]]
    return right, total, gaps


@pytest.mark.parametrize("seconds", [2, 1])
def test_caption_each_window_names_its_scene(trained, capsys, seconds):
    """2-second windows fall on the scenes; 1-second windows see half a scene each, and merge."""
    videos = [trained.video("long4"), trained.video("long5")]
    assert main(["caption", *videos, "--model", str(trained.model), "--segments", str(seconds), "--json"]) == 0
    captions = _last_json(capsys)["captions"]
    right, total, gaps = _windows_named(trained, captions)
    with capsys.disabled():
        print(f"\n{seconds} s windows: {right}/{total} scenes named; {sum(map(len, captions.values()))} windows after "
              f"merging; boundaries off the scene changes by up to {max(gaps)} s")
    assert right >= total - 1
    assert all(g <= seconds for g in gaps)  # every caption boundary within one window of a scene change


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_shots_and_subtitles_in_headless_chromium(trained, tmp_path, capsys):
    """``--segments shots`` cuts at the scene changes; the WebVTT file parses with webvtt-py and plays
    in Chromium as a ``<track>`` (cue count and first cue read from the page); SubRip parses with srt."""
    site = tmp_path / "site"
    site.mkdir()
    video = site / "long4.mp4"
    video.write_bytes(Path(trained.video("long4")).read_bytes())
    assert main(["caption", str(video), "--model", str(trained.model), "--segments", "shots", "--min-segment", "1",
                 "--subtitles", str(site / "long4.vtt"), "--json"]) == 0
    windows = _last_json(capsys)["captions"][str(video)]
    assert [(w["start"], w["end"]) for w in windows] == [(2.0 * k, 2.0 * k + 2) for k in range(6)]  # the scenes
    assert sum(_names(w["caption"], s) for w, s in zip(windows, trained.orders["long4"])) >= 5
    cues = webvtt.read(str(site / "long4.vtt"))
    assert [(c.start_in_seconds, c.end_in_seconds, c.text) for c in cues] == [
        (w["start"], w["end"], w["caption"]) for w in windows]
    assert main(["caption", str(video), "--model", str(trained.model), "--segments", "shots", "--min-segment", "1",
                 "--subtitles", str(site / "long4.srt")]) == 0
    subs = list(srt.parse((site / "long4.srt").read_text()))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == [
        (w["start"], w["end"], w["caption"]) for w in windows]

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    (site / "index.html").write_text('<!DOCTYPE html><video id="v" src="long4.mp4" muted preload="auto">'
                                     '<track id="t" kind="subtitles" srclang="en" src="long4.vtt" default></video>')
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.wait_for_function("document.getElementById('t').readyState >= 2", timeout=30_000)
            state = page.evaluate("document.getElementById('t').readyState")  # 2: loaded, 3: error
            track = "document.getElementById('v').textTracks[0]"
            count = page.evaluate(f"{track}.cues.length")
            first = page.evaluate(f"[{track}.cues[0].startTime, {track}.cues[0].endTime, {track}.cues[0].text]")
            browser.close()
    finally:
        server.shutdown()
        thread.join(10)
    assert state == 2 and count == len(windows) == 6
    assert first == [windows[0]["start"], windows[0]["end"], windows[0]["caption"]]


class _Timeline(HTMLParser):
    """The rows of the timeline page: (data-start, data-end, the frame's data URI, the caption)."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[list] = []
        self.failed: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-start" in a:
            self.rows.append([float(a["data-start"]), float(a["data-end"]), None, ""])
        elif tag == "img" and self.rows:
            self.rows[-1][2] = a["src"]
        elif tag == "td" and a.get("class") == "gen":
            self._in = "gen"
        elif tag == "p" and a.get("class") == "missing":
            self._in = "missing"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "p"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "gen":
            self.rows[-1][3] += data
        elif self._in == "missing":
            self.failed.append(data)


def _object_colour(uri: str) -> str:
    """The demo colour nearest to the saturated pixels of a JPEG thumbnail (the scene's object)."""
    import base64
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=np.float32)
    saturated = rgb[(rgb.max(axis=2) - rgb.min(axis=2)) > 90]  # (N, 3): the object, not the muted background
    refs = {c: demo_data.object_colour(c, np.random.default_rng(0)) for c, *_ in SCENES}
    return min(refs, key=lambda c: float(np.abs(saturated.mean(axis=0) - refs[c]).sum()))


def test_text_output_timeline_page_and_a_bad_file(trained, tmp_path, capsys):
    """One 'video<TAB>start-end<TAB>caption' line per window; the timeline page shows each window with
    a frame from inside it (its object has the window's scene colour) and the caption; an unreadable
    file is named (exit 1) and shown with its reason. The Python API gives the same windows."""
    from caption.pipeline import CaptionPipeline

    video, bad = trained.video("long5"), tmp_path / "broken.mp4"
    bad.write_text("not a video")
    page = tmp_path / "timeline.html"
    assert main(["caption", video, str(bad), "--model", str(trained.model), "--segments", "2",
                 "--report", str(page)]) == 1
    out = capsys.readouterr()
    lines = [line.split("\t") for line in out.out.strip().splitlines()]
    assert [line[:2] for line in lines] == [[video, f"0:00:{2 * k:02d}.000-0:00:{2 * k + 2:02d}.000"] for k in range(6)]
    assert str(bad) in out.err and "6/6" in out.err and "window" in out.err  # the progress bar counts windows
    timeline = _Timeline(page.read_text())
    assert [(r[0], r[1], r[3]) for r in timeline.rows] == [(2.0 * k, 2.0 * k + 2, line[2])
                                                           for k, line in enumerate(lines)]
    colours = [_object_colour(r[2]) for r in timeline.rows]
    assert colours == [SCENES[s][0] for s in trained.orders["long5"]]
    assert len(timeline.failed) == 1 and f"{bad}: not a video file" in timeline.failed[0]
    api = CaptionPipeline.from_pretrained(trained.model, device="cpu").caption([video], segments=2, num_workers=0)
    assert [(w.start, w.end, w.caption) for w in api[video]] == [(2.0 * k, 2.0 * k + 2, line[2])
                                                                 for k, line in enumerate(lines)]


def test_windows_on_a_split_without_time_ranges_are_refused(tmp_path, capsys):
    """``vcap evaluate --segments`` on a split of whole videos: one line, exit 2, before the model
    is read (the model folder here does not exist)."""
    (tmp_path / "ann.jsonl").write_text(json.dumps({"video": "a.mp4", "captions": ["a cat"], "split": "test"}) + "\n")
    code = main(["evaluate", "--model", str(tmp_path / "no_model"), "--segments", "5", "--output", str(tmp_path / "ev"),
                 "--config", str(CONFIG_PATH), f"data.annotations={tmp_path / 'ann.jsonl'}", f"data.videos={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("vcap: config error: --segments: split 'test' of ")
    assert "has no time ranges" in err[-1]


@pytest.mark.parametrize("command, options", [
    (["caption"], ["--segments SECONDS|shots", "--min-segment S", "--max-segment S", "--subtitles OUT.vtt|OUT.srt"]),
    (["evaluate"], ["--segments SECONDS|shots", "--min-segment S", "--max-segment S", "predictions_dense.json"])])
def test_help_explains_the_window_options(command, options, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and all(o in out for o in options), [o for o in options if o not in out]


@pytest.mark.parametrize("option, value", [("--segments", "0"), ("--segments", "-2"), ("--segments", "nan"),
                                           ("--segments", "inf"), ("--segments", "shot"), ("--min-segment", "0"),
                                           ("--max-segment", "nan")])
def test_impossible_window_lengths_are_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", "v.mp4", "--model", "m", "--segments", "shots", option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}: {value!r} is not a number of seconds > 0" in err


@pytest.mark.parametrize("option, value", [("--segments", "1e-9"), ("--max-segment", "0.01")])
def test_windows_too_short_to_hold_a_frame_are_refused_before_any_work(option, value, capsys):
    """A hostile round's find: ``--segments 1e-9`` asked for 10^10 windows and ran out of memory."""
    extra = [option, value] if option == "--segments" else ["--segments", "shots", option, value]
    assert main(["caption", "v.mp4", "--model", "m", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vcap: config error: {option} {float(value):g}: windows shorter "
                                               "than 0.1 s are not cut"), err

