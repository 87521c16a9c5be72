"""Caption metrics: parity with published pycocoevalcap values (nlg-eval's own test suite), the
no-Java path, the file formats of ``vcap score`` and its output contract.

METEOR's Java process takes ~15 s to load its paraphrase tables, so every METEOR score of this
module comes from one ``meteor_session`` (the ``nlg`` fixture), which also checks that the process
is gone when the session ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caption import metrics as M
from caption.caption_files import load_predictions, load_references
from caption.metrics import (
    meteor_session,
    per_caption_cider,
    ptb_tokenize_approx,
    score_captions,
    tokenize_captions,
)
from retrieval_pretrain.foundation.errors import DatasetError
from vcap_toolkit.cli.main import main as cli_main

# README of ../shared/data/metrics: nlg-eval's published values (pycocoevalcap 1.2, whitespace tokens).
TWO_LINE = {"BLEU-1": 0.55, "BLEU-2": 0.428174, "BLEU-3": 0.284043, "BLEU-4": 0.201143,
            "METEOR": 0.295797, "ROUGE-L": 0.522104, "CIDEr": 1.242192}
ONE_HYP = {"BLEU-1": 0.8, "BLEU-2": 0.632455, "BLEU-3": 0.510873, "BLEU-4": 9.036e-05,
           "METEOR": 0.444344, "ROUGE-L": 0.907063, "CIDEr": 0.0}
ONE_PRED = {"x": "this is a good test"}
ONE_REFS = {"x": ["this is a test", "this is also a test"]}
HAVE_JAVA = shutil.which("java") is not None


def _nlg_eval(folder: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    hyp = (folder / "hyp.txt").read_text().splitlines()
    ref1 = (folder / "ref1.txt").read_text().splitlines()
    ref2 = (folder / "ref2.txt").read_text().splitlines()
    return ({str(i): h for i, h in enumerate(hyp)},
            {str(i): [a, b] for i, (a, b) in enumerate(zip(ref1, ref2))})


def _assert_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-6) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=tol), k


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    return _nlg_eval(shared_data / "metrics" / "nlg-eval")


@pytest.fixture(scope="module")
def nlg(corpus, tmp_path_factory) -> dict:
    """All METEOR-using scores of this module, from one Java process."""
    if not HAVE_JAVA:
        pytest.skip("java is not on the PATH: METEOR parity needs it (the no-Java path is tested separately)")
    preds, refs = corpus
    out_dir = tmp_path_factory.mktemp("score")
    (out_dir / "p.json").write_text(json.dumps(preds))
    (out_dir / "r.json").write_text(json.dumps(refs))
    result: dict = {}
    with meteor_session(start=True):  # started on entering: the published values from that process
        started = M._sessions[-1]
        result["running_on_entry"] = started is not None and started.proc.poll() is None
        result["two"] = score_captions(preds, refs, tokenize="none")
        result["one"] = score_captions(ONE_PRED, ONE_REFS, tokenize="none")
        result["the_started_one"] = M._sessions[-1] is started
        proc = M._sessions[-1].proc
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            # through the command line users type: vcap score --predictions P --references R
            result["exit_code"] = cli_main(["score", "--predictions", str(out_dir / "p.json"), "--references",
                                            str(out_dir / "r.json"), "--tokenize", "none", "--output",
                                            str(out_dir / "o")])
        result["stdout"] = buf.getvalue()
        result["alive_in_session"] = proc.poll() is None
    result["exit_code_after"] = proc.poll()
    result["out_dir"] = out_dir / "o"
    return result


def test_a_session_starts_java_on_first_use_unless_asked_to_start_at_once(monkeypatch, tmp_path):
    """``meteor_session()`` starts nothing until a score needs METEOR; with ``start=True`` an error or
    Ctrl-C in the block kills the process at once (it would finish loading first, seconds); without
    Java on the PATH it starts nothing (the scores then leave METEOR out, with their warning)."""
    with meteor_session():
        assert M._sessions == [None]
    if HAVE_JAVA:  # an error in the block ends a process still loading at once, not once it has loaded
        t = time.perf_counter()
        with pytest.raises(KeyboardInterrupt), meteor_session(start=True):
            proc = M._sessions[-1].proc
            raise KeyboardInterrupt
        assert proc.poll() is not None and M._sessions == [] and time.perf_counter() - t < 3
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    with meteor_session(start=True):
        assert M._sessions == [None]
    assert M._sessions == []


@pytest.mark.skipif(not HAVE_JAVA, reason="java is not on the PATH: the case is a Java process dying")
def test_a_meteor_process_that_died_is_one_error_not_a_hang():
    """The JVM killed under a started session (as an out-of-memory kill would, with 1.2 GB held for
    a whole demo): the score raises RuntimeError naming METEOR and the session ends, where
    pycocoevalcap's lock, kept by its failed ``compute_score``, used to hang both for ever."""
    code = """
import time
from caption import metrics as M
with M.meteor_session(start=True):
    M._sessions[-1].proc.kill()
    time.sleep(0.5)
    try:
        M.score_captions({"1": "a dog runs"}, {"1": ["a dog runs fast"]}, tokenize="none", metrics=("METEOR",))
    except RuntimeError as e:
        print("raised", str(e).splitlines()[0][:40])
print("ended")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert proc.stdout.split("\n")[:2] == ["raised METEOR (java -jar meteor-1.5.jar) failed", "ended"], proc.stderr


def test_two_line_corpus_matches_published_values(nlg):
    _assert_close(nlg["two"], TWO_LINE)


def test_one_hypothesis_matches_published_values(nlg):
    _assert_close(nlg["one"], ONE_HYP)


def test_meteor_java_process_is_reused_then_closed(nlg):
    assert nlg["running_on_entry"] and nlg["the_started_one"]
    assert nlg["alive_in_session"]
    assert nlg["exit_code_after"] is not None, "METEOR's java process outlived its session"
    assert M._sessions == []


def test_vcap_score_prints_json_last_and_writes_metrics(nlg):
    assert nlg["exit_code"] == 0
    last = nlg["stdout"].strip().splitlines()[-1]
    printed = json.loads(last)
    assert json.loads((nlg["out_dir"] / "metrics.json").read_text()) == printed
    _assert_close({k: printed[k] for k in TWO_LINE}, TWO_LINE)
    assert printed["count"] == 2 and printed["tokenize"] == "none"
    assert "ratio" not in nlg["stdout"]  # pycocoevalcap's BLEU chatter is suppressed


def test_per_caption_cider(corpus):
    preds, refs = corpus
    per = per_caption_cider(preds, refs, tokenize="none")
    assert per == {"0": pytest.approx(0.51715, abs=1e-5), "1": pytest.approx(1.96724, abs=1e-5)}
    assert sum(per.values()) / 2 == pytest.approx(TWO_LINE["CIDEr"], abs=1e-6)


def test_no_java_skips_meteor_warns_and_scores_the_rest(corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    assert shutil.which("java") is None
    preds, refs = corpus
    want = {k: v for k, v in TWO_LINE.items() if k != "METEOR"}
    with pytest.warns(RuntimeWarning, match="METEOR"):
        _assert_close(score_captions(preds, refs, tokenize="none"), want)
    # the pure-Python PTB stand-in leaves this plain lower-case text as it is
    with pytest.warns(RuntimeWarning, match="PTB"):
        _assert_close(score_captions(preds, refs, tokenize="ptb"), want)


@pytest.mark.skipif(not HAVE_JAVA, reason="java is not on the PATH: needed for the PTB tokenizer")
def test_ptb_tokenizer_on_plain_text_equals_whitespace(corpus):
    preds, refs = corpus
    subset = ("BLEU-4", "ROUGE-L", "CIDEr")  # no METEOR: keeps this test free of the JVM start-up
    assert score_captions(preds, refs, "ptb", subset) == score_captions(preds, refs, "none", subset)


CAPTIONS = [
    "A man is cooking. The woman eats.", "someone is talking about the U.S. economy.",
    "a girl... is singing!", "Two men are playing ping-pong, and laughing.",
    'a man says "hello" to a \'friend\'', "people's rights and the boys' club", "man:  'hi'",
    "a woman's hair-style isn't nice", "a (red) car [x] {y}", "1.5 m tall; 2,000 km away - done",
    "The dog's toy; cats' toys: yes, no? I'm we're they've you'll he'd can't cannot gonna",
    "e-mail 10,000 people & co. #1 @home 50% $5 a/b", "Mr. Smith and Dr. Who's cafe", "at 10:30 a man runs: fast",
    "it is 3 p.m. now", "a group of people are dancing on a stage",
]


@pytest.mark.skipif(not HAVE_JAVA, reason="java is not on the PATH: the reference is Java's PTBTokenizer")
def test_ptb_approximation_matches_java_on_caption_text():
    java = tokenize_captions({str(i): [c] for i, c in enumerate(CAPTIONS)}, "ptb")
    for i, c in enumerate(CAPTIONS):
        assert ptb_tokenize_approx(c) == java[str(i)][0], c


def test_ptb_approximation_examples():
    assert ptb_tokenize_approx("A man (in red) isn't cooking, he's singing!") == \
        "a man -lrb- in red -rrb- is n't cooking he 's singing"
    assert ptb_tokenize_approx("The U.S. team won 10,000 $.") == "the u.s. team won 10,000 $"


def test_loaders_accept_both_formats(tmp_path):
    (tmp_path / "p1.json").write_text(json.dumps({"v1": "a cat", "7": "a dog"}))
    (tmp_path / "p2.json").write_text(json.dumps([{"video_id": "v1", "caption": "a cat"},
                                                  {"image_id": 7, "caption": "a dog"}]))
    assert load_predictions(tmp_path / "p1.json") == load_predictions(tmp_path / "p2.json") == \
        {"v1": "a cat", "7": "a dog"}
    (tmp_path / "r1.json").write_text(json.dumps({"v1": ["a cat", "cat"], "7": "a dog"}))
    (tmp_path / "r2.json").write_text(json.dumps({"annotations": [
        {"video_id": "v1", "caption": "a cat"}, {"image_id": 7, "caption": "a dog"},
        {"video_id": "v1", "caption": "cat"}]}))
    (tmp_path / "r3.json").write_text(json.dumps({"sentences": [
        {"video_id": "v1", "caption": "a cat"}, {"video_id": "v1", "caption": "cat"},
        {"video_id": 7, "caption": "a dog"}]}))
    want = {"v1": ["a cat", "cat"], "7": ["a dog"]}
    assert load_references(tmp_path / "r1.json") == load_references(tmp_path / "r2.json") == \
        load_references(tmp_path / "r3.json") == want


def test_loaders_name_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_predictions(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(json.dumps([{"video_id": "a", "caption": "x"}, {"video_id": "a", "caption": "y"}]))
    with pytest.raises(ValueError, match="more than one prediction"):
        load_predictions(tmp_path / "dup.json")
    (tmp_path / "nocap.json").write_text(json.dumps({"annotations": [{"video_id": "a"}]}))
    with pytest.raises(ValueError, match="caption"):
        load_references(tmp_path / "nocap.json")
    with pytest.raises(DatasetError, match="file not found: .*nope.json"):
        load_references(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match=f"{tmp_path}: cannot be read"):  # a folder
        load_predictions(tmp_path)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DatasetError, match="binary.json: not a UTF-8 text file"):
        load_predictions(tmp_path / "binary.json")


def test_mismatched_ids_raise_naming_them():
    refs = {"a": ["a cat"], "b": ["a dog"]}
    with pytest.raises(ValueError, match="no references: zz"):
        score_captions({"a": "cat", "b": "dog", "zz": "x"}, refs, "none", ("CIDEr",))
    with pytest.raises(ValueError, match="no prediction: b"):
        score_captions({"a": "cat"}, refs, "none", ("CIDEr",))
    with pytest.raises(ValueError, match="tokenize"):
        score_captions({"a": "cat", "b": "dog"}, refs, "spacy")
    with pytest.raises(ValueError, match="unknown metric"):
        score_captions({"a": "cat", "b": "dog"}, refs, "none", ("SPICE",))


def test_metric_subset_and_empty_caption():
    refs = {"a": ["a cat sits"], "b": ["a dog runs"], "c": ["birds fly"]}
    got = score_captions({"a": "a cat sits", "b": "", "c": "birds fly"}, refs, "none", ("ROUGE-L", "CIDEr"))
    assert list(got) == ["ROUGE-L", "CIDEr"]
    assert 0.0 < got["ROUGE-L"] < 1.0 and got["CIDEr"] > 0.0
