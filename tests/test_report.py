"""The HTML reports (vcap_toolkit/reports/captions_page.py): built from real clips, parsed, and opened in headless Chromium.

What is checked: every video of the split appears once, worst CIDEr first; each row has one embedded
JPEG per sampled frame (decodable, 96 pixels tall) or the reason its frames are unavailable; data
text is escaped; the page references nothing outside itself; a training log becomes one SVG polyline
per series with one point per record; a real browser renders the page (not blank) and its script
runs (the ``#sort=`` hash re-sorts the rows).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retrieval_pretrain.foundation.errors import DatasetError
from retrieval_pretrain.foundation.run_log import VALUE_BOUND, read_log
from retrieval_pretrain.reading.annotation_table import VideoEntry
from retrieval_pretrain.reading.video import probe_video
from vcap_toolkit.reports.captions_page import ReportRow, as_row, caption_report, make_rows, video_thumbnails
from vcap_toolkit.reports.evaluation import write_evaluation_report
from vcap_toolkit.reports.run_curves import run_report, training_curves

NASTY = 'a man <script>alert("x")</script> & his dog'
METRICS = {"BLEU-1": 0.7, "BLEU-2": 0.55, "BLEU-3": 0.43, "BLEU-4": 0.389, "METEOR": 0.352, "ROUGE-L": 0.619,
           "CIDEr": 1.642, "split": "test", "videos": 6}
CLIPS = {  # id -> file under shared/data/videos
    "test": "mmaction2/test.mp4", "swinbert": "swinbert/G0mjFqytJt4_000152_000162.mp4",
    "nasa": "torchcodec/nasa_13013.mp4", "short<&>": "decord/video_90.mov", "corrupted": "decord/corrupted.mp4",
}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


class Page(HTMLParser):
    """The parts of a report a test looks at: the video rows, every URL-bearing attribute, the
    scripts, the SVG polylines, and the page text (unescaped, as a reader sees it)."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []
        self.urls: list[str] = []
        self.scripts: list[dict] = []
        self.polylines: list[dict] = []
        self.text: list[str] = []
        self.attrs_seen: list[tuple[str, dict]] = []
        self._in_tbody = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.attrs_seen.append((tag, a))
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "poster", "data", "action") and v]
        if tag == "script":
            self.scripts.append(a)
        if tag == "polyline":
            self.polylines.append(a)
        if tag == "tbody":
            self._in_tbody = True
        if tag == "tr" and self._in_tbody and "data-video" in a:  # not the metrics table's rows
            self.rows.append({**a, "imgs": [], "text": []})
        if tag == "img" and self.rows and self._in_tbody:
            self.rows[-1]["imgs"].append(a["src"])

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_tbody and self.rows:
            self.rows[-1]["text"].append(data)


def _decode_jpeg(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    img.load()
    assert img.format == "JPEG"
    return img


@pytest.fixture(scope="module")
def report(shared_data: Path, tmp_path_factory) -> tuple[Path, list[ReportRow], dict[str, int]]:
    """A report of five real clips (one unreadable), plus a video with no file and no caption.
    Returns the file, its rows, and the frames each readable clip should show."""
    videos = {vid: shared_data / "videos" / rel for vid, rel in CLIPS.items()}
    videos["no-file"] = None
    predictions = {vid: f"caption of {vid}" for vid in CLIPS}
    predictions["test"] = NASTY
    references = {vid: [f"reference {i} of {vid} & co" for i in range(7)] for vid in videos}
    cider = {"test": 0.91, "swinbert": 0.05, "nasa": 2.4, "short<&>": 0.4, "corrupted": 1.2}
    rows = make_rows(videos, predictions, references, cider, {"no-file": "no cached features"}, workers=2)
    expected = {vid: min(6, probe_video(videos[vid])["num_frames"]) for vid in ("test", "swinbert", "nasa", "short<&>")}
    path = caption_report(tmp_path_factory.mktemp("report") / "sub" / "report.html", rows, METRICS,
                          title="Captions <test> & split", subtitle="model runs/s2/model")
    return path, rows, expected


def test_thumbnails_sample_real_clips(shared_data: Path) -> None:
    path = shared_data / "videos" / "swinbert" / "G0mjFqytJt4_000152_000162.mp4"
    info = probe_video(path)
    thumbs = video_thumbnails(path, count=4, height=96)
    assert thumbs.error is None and len(thumbs.images) == 4
    for data in thumbs.images:
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.height == 96
        assert abs(img.width - info["width"] * 96 / info["height"]) <= 1  # aspect ratio kept
    assert len(set(thumbs.images)) > 1  # spread over the clip, not one frame repeated


def test_thumbnails_of_unreadable_video_give_the_reason(shared_data: Path, tmp_path: Path) -> None:
    images, error = video_thumbnails(shared_data / "videos" / "decord" / "corrupted.mp4")
    assert images == [] and "decoding failed" in error
    images, error = video_thumbnails(tmp_path / "absent.mp4")
    assert images == [] and error == "file not found"


def test_every_video_once_worst_first(report) -> None:
    path, rows, _ = report
    page = Page(path.read_text(encoding="utf-8"))
    ids = [r["data-video"] for r in page.rows]
    assert sorted(ids) == sorted(r.video_id for r in rows) and len(ids) == len(set(ids)) == 6
    scores = [float(r["data-cider"]) if r["data-cider"] else float("-inf") for r in page.rows]
    assert scores == sorted(scores)  # ascending CIDEr, the unscored row first
    assert ids[0] == "no-file" and ids[1] == "swinbert" and ids[-1] == "nasa"
    assert "worst" in page.rows[0]["class"] and "worst" in page.rows[1]["class"]
    assert "best" in page.rows[-1]["class"] and "worst" not in page.rows[-1]["class"]


def test_rows_embed_their_frames_as_jpeg(report) -> None:
    path, _, expected = report
    page = Page(path.read_text(encoding="utf-8"))
    by_id = {r["data-video"]: r for r in page.rows}
    for vid, count in expected.items():
        imgs = by_id[vid]["imgs"]
        assert len(imgs) == count, vid
        assert all(_decode_jpeg(uri).height == 96 for uri in imgs)
    assert expected["short<&>"] < 6  # a clip shorter than the strip shows each frame once
    for vid, reason in (("corrupted", "frames unavailable: "), ("no-file", "frames unavailable: no video file")):
        assert by_id[vid]["imgs"] == []
        assert reason in "".join(by_id[vid]["text"])
    assert "not captioned: no cached features" in "".join(by_id["no-file"]["text"])


def test_text_is_escaped(report) -> None:
    path, _, _ = report
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert len(page.scripts) == 1  # only the page's own sorting script
    assert '<script>alert' not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; his dog" in text
    shown = "".join(page.text)
    assert NASTY in shown and "Captions <test> & split" in shown and "reference 3 of test & co" in shown
    assert any(r["data-video"] == "short<&>" for r in page.rows)


def test_no_external_resources(report) -> None:
    path, _, _ = report
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.urls and all(u.startswith("data:") for u in page.urls)
    assert not re.search(r"https?://|src=\"//|url\(|@import", text, re.IGNORECASE)
    assert not any(t == "link" for t, _ in page.attrs_seen)
    csp = [a for t, a in page.attrs_seen if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]


def test_metrics_table_in_paper_order(report) -> None:
    path, _, _ = report
    shown = " ".join("".join(Page(path.read_text(encoding="utf-8")).text).split())
    assert "BLEU-1BLEU-2BLEU-3BLEU-4METEORROUGE-LCIDEr" in shown.replace(" ", "")
    assert "0.3890.3520.6191.642" in shown.replace(" ", "") and "split: test" in shown


def test_rows_from_mappings_and_objects(tmp_path: Path) -> None:
    class Result:
        video_id, caption, references, cider = "obj", "a cat", ["a cat sits"], 0.5

    assert as_row(Result()).caption == "a cat"
    assert as_row({"video_id": "m", "cider": None}).caption is None
    with pytest.raises(TypeError, match="unknown report row keys"):
        as_row({"video_id": "m", "score": 1.0})
    out = caption_report(tmp_path / "r.html", [Result(), {"video_id": "m", "caption": "x"}], {}, title="t")
    assert [r["data-video"] for r in Page(out.read_text()).rows] == ["m", "obj"]


def test_report_is_written_atomically(tmp_path: Path) -> None:
    out = caption_report(tmp_path / "r.html", [{"video_id": "a"}], {"CIDEr": 0.1}, title="first")
    before = out.read_text()
    with pytest.raises(TypeError):  # a bad row: the old report stays as it was, no temporary is left
        caption_report(out, [{"video_id": "a", "bogus": 1}], {}, title="second")
    assert out.read_text() == before
    caption_report(out, [{"video_id": "b"}], {}, title="second")
    assert "second" in out.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def _write_log(folder: Path, records: list[dict], tail: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


STAGE2 = ([{"step": s, "epoch": (s - 1) // 4, "loss": 5.0 / s, "lr": 1e-4 * min(1.0, s / 3), "data_s": 0.01,
            "compute_s": 0.2, "steps_per_s": 3.0, "time": 1.7e9 + s} for s in range(1, 9)]
          + [{"epoch": 0, "step": 4, "val_loss": 3.1, "val_CIDEr": 0.2, "best_epoch": 0, "time": 1.7e9},
             {"epoch": 1, "step": 8, "val_loss": 2.9, "val_CIDEr": 0.5, "best_epoch": 1, "time": 1.7e9}])


def test_training_curves_of_a_stage2_log(tmp_path: Path) -> None:
    _write_log(tmp_path / "run", STAGE2, tail='{"step": 9, "loss": 0.')  # killed mid-write
    curves = training_curves(tmp_path / "run")
    assert curves["records"] == 10 and curves["skipped_lines"] == [11] and curves["best_epoch"] == 1
    assert list(curves["step"])[:2] == ["loss", "lr"] and "time" not in curves["step"]
    assert set(curves["epoch"]) == {"val_loss", "val_CIDEr"}
    assert curves["step"]["loss"] == [[s, 5.0 / s] for s in range(1, 9)]
    assert curves["epoch"]["val_CIDEr"] == [[0, 0.2], [1, 0.5]]


def test_run_report_plots_every_record(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_log(run, STAGE2)
    (run / "config.json").write_text(json.dumps({"caption": {"lr": 1e-4, "note": "<b>&"}, "run": {"seed": 0}}))
    text = run_report(run, tmp_path / "out" / "run.html").read_text(encoding="utf-8")
    page = Page(text)
    points = {p["data-series"]: len(p["points"].split()) for p in page.polylines}
    assert points == {"loss": 8, "lr": 8, "data_s": 8, "compute_s": 8, "steps_per_s": 8, "val_loss": 2, "val_CIDEr": 2}
    shown = "".join(page.text)
    assert "step" in shown and "epoch" in shown and "best epoch" in shown
    ticks = [t for t in re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', text)]
    assert "0" in ticks and any(re.fullmatch(r"[0-9.e+-]+", t) for t in ticks) and len(ticks) > 20
    assert "caption.lr" in shown and "<b>&" in shown and "<b>&" not in text
    assert not re.search(r"https?://", text)


def test_training_curves_of_a_stage1_log(tmp_path: Path) -> None:
    records = [{"step": s, "epoch": 0, "loss": 2.0 - s / 10, "lr_new": 1e-4, "lr_clip": 1e-7, "logit_scale": 14.3 + s,
                "data_s": 0.1, "compute_s": 0.5, "videos_per_s": 7.5, "time": 0.0} for s in (1, 5, 10)]
    _write_log(tmp_path / "s1", records)
    curves = training_curves(tmp_path / "s1")
    assert curves["epoch"] == {} and curves["best_epoch"] is None
    assert list(curves["step"])[:4] == ["loss", "lr_new", "lr_clip", "logit_scale"]
    assert all(len(v) == 3 for v in curves["step"].values())
    polylines = Page(run_report(tmp_path / "s1", tmp_path / "s1.html").read_text()).polylines
    assert len(polylines) == 7 and all(len(p["points"].split()) == 3 for p in polylines)


def test_missing_or_empty_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "log.jsonl")) + ".*no training log"):
        training_curves(tmp_path)
    _write_log(tmp_path, [], tail="\n")
    with pytest.raises(DatasetError, match="log.jsonl: the training log holds no step or epoch record"):
        run_report(tmp_path, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_caption_report_embeds_curves(tmp_path: Path) -> None:
    _write_log(tmp_path / "run", STAGE2)
    out = caption_report(tmp_path / "r.html", [{"video_id": "a", "caption": "c", "cider": 0.3}], METRICS,
                         title="t", curves=training_curves(tmp_path / "run"))
    assert len(Page(out.read_text()).polylines) == 7


def _chromium(*args: str, profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_report_renders_in_a_real_browser(report, tmp_path: Path) -> None:
    path, _, _ = report
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1600", path.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1600)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 1000  # text, badges and photographic thumbnails, not blank
    top = img.crop((0, 0, 1280, 300)).getcolors(maxcolors=1 << 20)
    assert len(top) > 20  # the title and metrics are drawn in the first screen
    # The script runs: the hash sorts best first, and the page marks itself ready.
    dom = _chromium("--dump-dom", path.as_uri() + "#sort=-cider", profile=tmp_path / "profile").stdout
    assert 'data-js="ready"' in dom
    rows = Page(dom).rows
    scores = [float(r["data-cider"]) if r["data-cider"] else float("-inf") for r in rows]
    assert len(rows) == 6 and scores == sorted(scores, reverse=True)
    assert rows[0]["data-video"] == "nasa" and rows[-1]["data-video"] == "no-file"


# A killed or diverged run's log (issue 25, class 2): NaN, infinities and a huge number, a line that
# is not an object, a cut last line. Python's json writes NaN/Infinity bare, as a diverged run would.
BAD_LOG = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": float("inf"), "lr": -1e308},
           {"step": 4, "loss": float("-inf"), "lr": 1e-4}, {"step": 5, "loss": 1e308, "lr": 1e308},
           {"step": 6, "loss": 1.5}]
VCAP = Path(sys.executable).with_name("vcap")


def _vcap(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VCAP), *argv], capture_output=True, text=True, timeout=120)


def test_vcap_report_leaves_bad_values_out_and_says_how_many(tmp_path: Path) -> None:
    _write_log(tmp_path / "run", BAD_LOG, tail='[1, 2]\n{"step": 7, "loss": 1.')
    r = _vcap("report", str(tmp_path / "run"), "--output", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "6 value(s)" in warnings[0] and "2 line(s)" in warnings[0], r.stderr
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    page = Page(text)
    loss = next(p for p in page.polylines if p["data-series"] == "loss")
    assert len(loss["points"].split()) == 2  # steps 1 and 6
    note = [t for t in page.text if "left out of the curves" in t.lower()]
    assert len(note) == 1 and "6 value(s)" in note[0] and "line 2, 3, 4, 5" in note[0] and "line 7, 8" in note[0]
    numbers = re.findall(r'(?:points|cx|cy|x1|x2|y1|y2|x|y)="([^"]*)"', text)
    assert numbers and not any(re.search(r"nan|inf", n, re.I) for n in numbers)


def test_vcap_report_of_an_undecodable_log_is_one_line_and_exit_3(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_bytes(b'{"step": 1, "loss": 2.0}\n\xff\xfe{"step": 2}\n')
    r = _vcap("report", str(tmp_path / "run"))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and r.stderr.startswith("vcap: dataset error: "), r.stderr
    assert "not UTF-8" in r.stderr and not (tmp_path / "run" / "report.html").exists()


@pytest.mark.parametrize("log", ["nan", "undecodable", "folder"])
def test_evaluation_report_never_fails_on_the_runs_log(tmp_path: Path, log: str, capsys) -> None:
    # vcap evaluate --report's page writer (caption/evaluate.py passes it as `report`), over a model in
    # a run folder; a whole trained model is not needed to reach the log.
    run = tmp_path / "run"
    if log == "nan":
        _write_log(run, BAD_LOG, tail='{"step": 7')
    elif log == "undecodable":
        run.mkdir()
        (run / "log.jsonl").write_bytes(b"\xff\xfe\xfd\n")
    else:
        (run / "log.jsonl").mkdir(parents=True)
    entry = VideoEntry("a", tmp_path / "a.mp4", ["a dog runs"], "test")
    out = write_evaluation_report(tmp_path / "eval" / "report.html", run / "model", [entry], {"a": "a dog"}, [],
                                  {"CIDEr": 0.1, "split": "test", "videos": 1})
    page = Page(out.read_text(encoding="utf-8"))
    shown = "".join(page.text).lower()
    assert ("left out of the curves" in shown) if log == "nan" else ("no training curves" in shown)
    assert len(page.polylines) == (2 if log == "nan" else 0)  # loss and lr
    assert capsys.readouterr().err.count("warning:") == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(), st.sampled_from(['{"step": 1e999}', '{"a": [NaN, {"b": -Infinity}]}',
                                                      '{"step": 1e31, "x": 12345678901234567890123456789012}',
                                                      '{"s": "\\ud800"}', "[" * 3000, "NaN", '{"x": 1.0}']))))
def test_read_log_never_raises_and_keeps_only_finite_bounded_numbers(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        records, problems = read_log(path)
    except DatasetError as e:  # only a file that is not UTF-8 (a lone surrogate written raw) as a whole
        assert "not UTF-8" in str(e)
        return
    assert all(isinstance(r, dict) for _, r in records) and all(p.what in ("line", "value") for p in problems)
    stack = [r for _, r in records]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            assert math.isfinite(item) and abs(item) <= VALUE_BOUND
        elif isinstance(item, str):
            item.encode("utf-8")
