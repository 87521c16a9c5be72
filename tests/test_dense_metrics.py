"""Dense (time-stamped) caption scoring: parity with the official ActivityNet Captions evaluator.

``../shared/data/metrics/densevid/reference_values.json`` holds every value the official evaluator
(wjn922/densevid_val_py3, the Python 3 port of ranjaykrishna/densevid_eval) printed for three
prediction files against 200 val_1 videos, and for the ground truth against the full val_1 + val_2
(its default). Each run is scored once per module (the PTB tokenizer and METEOR run in Java: ~15 s
a run on a 2-core machine); every printed value must match to 1e-4 in the evaluator's units.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caption.caption_files import (
    load_dense_predictions,
    load_dense_references,
    parse_dense_predictions,
    parse_dense_references,
    score_files,
)
from caption.dense_metrics import (
    DenseCaption,
    DenseReference,
    detection_scores,
    score_dense,
    tiou,
)
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError
from vcap_toolkit.cli.parser import build_parser

VCAP = Path(sys.executable).with_name("vcap")
JAVA = shutil.which("java") is not None
TOL = 1e-4  # the evaluator prints 100 * score with 4 decimals
NAMES = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "Recall", "Precision"]


@pytest.fixture(scope="module")
def densevid(shared_data) -> Path:
    folder = shared_data / "metrics" / "densevid"
    if not (folder / "reference_values.json").is_file():
        pytest.skip(f"dense-caption reference values not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def reference_values(densevid) -> dict:
    return json.loads((densevid / "reference_values.json").read_text())["runs"]


@pytest.fixture(scope="module")
def scored(densevid, reference_values):
    """Each run's scores, computed once (on first use) and shared by the module's tests."""
    cache: dict[str, dict] = {}

    def get(run: str) -> dict:
        if run not in cache:
            spec = reference_values[run]
            if not all((densevid / r).resolve().is_file() for r in spec["references"]):
                pytest.skip(f"reference files of {run} not found: {spec['references']}")
            references = [load_dense_references((densevid / r).resolve()) for r in spec["references"]]
            cache[run] = score_dense(load_dense_predictions(densevid / spec["prediction"]), references)
        return cache[run]

    return get


RUNS = ["a_groundtruth", "b_shift30_othervideo", "c_whole_video_first_sentence", "a_groundtruth_vs_full_val_1_val_2"]


@pytest.mark.parametrize("run", RUNS)
def test_every_value_the_official_evaluator_printed_is_matched(run, scored, reference_values):
    if not JAVA:
        pytest.skip("java is not on the PATH: METEOR and the evaluator's PTB tokenizer need it (the pure-Python "
                    "stand-in tokenizer is close but not exact: Bleu_1 of run b differs by 0.0018), so parity with "
                    "the official evaluator cannot be checked here")
    spec = reference_values[run]
    got = scored(run)
    assert list(got["tIoU"]) == list(spec["per_tiou"]) == ["0.3", "0.5", "0.7", "0.9"]
    wanted = [(t, m, v) for t, row in spec["per_tiou"].items() for m, v in row.items()]
    wanted += [("average", m, v) for m, v in spec["average_over_tious"].items()]
    assert {m for _, m, _ in wanted} == set(NAMES)
    for where, metric, value in wanted:
        mine = got["average"][metric] if where == "average" else got["tIoU"][where][metric]
        assert abs(mine - value) <= TOL, f"{run} tIoU {where} {metric}: {mine} vs the evaluator's {value}"
    assert len(wanted) == 45


def test_the_order_of_metrics_is_the_evaluators(scored):
    got = scored("c_whole_video_first_sentence")
    names = NAMES if JAVA else [n for n in NAMES if n != "METEOR"]
    assert list(got["average"]) == names
    assert all(list(row) == names for row in got["tIoU"].values())


# ----------------------------------------------------------------------------- tIoU and detection

def test_tiou_is_the_evaluators_formula():
    assert tiou((0, 10), (0, 10)) == pytest.approx(1, abs=1e-8) and tiou((0, 10), (0, 10)) < 1
    assert tiou((0, 10), (5, 15)) == pytest.approx(1 / 3)
    assert tiou((0, 10), (2, 4)) == pytest.approx(0.2)
    assert tiou((0, 10), (10, 20)) == 0 and tiou((0, 1), (5, 6)) == 0
    assert tiou((3, 3), (0, 10)) == 0  # a zero-length prediction overlaps nothing
    assert tiou((0, 10), (0, 5)) < 0.5  # the evaluator's + 1e-8: a nominal 0.5 is just below 0.5


def _cap(start: float, end: float, sentence: str = "a man talks") -> DenseCaption:
    return DenseCaption(start, end, sentence)


def _refs(*segments: tuple[float, float]) -> DenseReference:
    return DenseReference(None, tuple(segments), tuple(f"sentence {i}" for i in range(len(segments))))


PREDICTIONS = {"A": [_cap(0, 10), _cap(5, 15), _cap(30, 40)],  # vs A's segments: tIoU ~1, 1/3 each, 0
               "C": [_cap(0, 10)]}  # C is in no references file: ignored
REFERENCES = {"A": _refs((0, 10), (10, 20)), "B": _refs((0, 4))}  # B has no predictions: 0 and 0


def test_recall_and_precision_on_a_hand_made_two_video_case():
    # tIoU 0.3: A's segments are both covered (recall 1), 2 of its 3 predictions cover one (2/3); B: 0, 0
    assert detection_scores(PREDICTIONS, [REFERENCES], 0.3) == pytest.approx((1 / 2, (2 / 3) / 2))
    # tIoU 0.5: only the first prediction covers (segment 0): recall 1/2, precision 1/3
    assert detection_scores(PREDICTIONS, [REFERENCES], 0.5) == pytest.approx((1 / 4, (1 / 3) / 2))
    # strictly greater: a prediction of tIoU ~1 does not count at 1.0
    assert detection_scores(PREDICTIONS, [REFERENCES], 1.0) == (0, 0)
    # at most 1 proposal per video: precision counts the kept ones only
    assert detection_scores(PREDICTIONS, [REFERENCES], 0.3, max_proposals=1) == pytest.approx((1 / 4, 1 / 2))


def test_several_reference_files_keep_the_better_recall_and_precision_per_video():
    second = {"A": _refs((5, 15))}  # the second prediction matches it exactly: recall 1, precision 1/3
    recall, precision = detection_scores(PREDICTIONS, [REFERENCES, second], 0.5)
    assert (recall, precision) == pytest.approx(((1 + 0) / 2, (1 / 3 + 0) / 2))
    only_second = detection_scores(PREDICTIONS, [second], 0.5)
    assert only_second == pytest.approx((1, 1 / 3))  # B is in no file now: A alone counts


# ----------------------------------------------------------------------------- vcap score

def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "10000"}
    return subprocess.run([str(VCAP), "score", *argv], capture_output=True, text=True, timeout=600, env=env)


def test_vcap_score_on_dense_predictions_end_to_end(densevid, reference_values, tmp_path):
    spec = reference_values["c_whole_video_first_sentence"]
    r = _run("--predictions", str(densevid / spec["prediction"]),
             "--references", str(densevid / spec["references"][0]), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == printed
    assert printed["videos"] == {"references": 200, "predicted": 200, "ignored": 0}
    assert list(printed["dense"]["tIoU"]) == ["0.3", "0.5", "0.7", "0.9"]
    for name in ("Recall", "Precision") + (("CIDEr", "Bleu_4", "METEOR") if JAVA else ()):
        assert abs(printed["dense"]["average"][name] - spec["average_over_tious"][name]) <= TOL
        assert abs(printed["dense"]["tIoU"]["0.7"][name] - spec["per_tiou"]["0.7"][name]) <= TOL


def test_score_takes_several_reference_files():
    args = build_parser().parse_args(["score", "--predictions", "p.json", "--references", "a.json", "b.json",
                                      "--references", "c.json"])
    assert args.references == ["a.json", "b.json", "c.json"]
    assert build_parser().parse_args(["score", "--predictions", "p", "--references", "r"]).references == ["r"]


def test_several_reference_files_are_for_dense_predictions_only(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"v1": "a man talks"}))
    (tmp_path / "r.json").write_text(json.dumps({"v1": ["a man talks"]}))
    (tmp_path / "r2.json").write_text(json.dumps({"v1": ["a man speaks"]}))
    with pytest.raises(ConfigError, match="only for dense"):
        score_files(tmp_path / "p.json", [tmp_path / "r.json", tmp_path / "r2.json"])


def test_the_same_reference_file_twice_is_refused(densevid, reference_values, tmp_path):
    """A hostile round's find: one references file given twice counted as two annotators and moved
    the scores (CIDEr 1000 -> 975 on the references scored against themselves), without a word."""
    spec = reference_values["c_whole_video_first_sentence"]
    refs = densevid / spec["references"][0]
    (tmp_path / "same.json").symlink_to(refs)
    for twice in ([refs, refs], [refs, tmp_path / "same.json"]):
        with pytest.raises(ConfigError, match=r"--references .* is given more than once; give each reference file once"):
            score_files(densevid / spec["prediction"], twice)


GOOD_REFS = {"v1": {"duration": 20.0, "timestamps": [[0, 10], [10, 20]], "sentences": ["a man talks", "he sits"]}}
BAD_PREDICTIONS = {
    "timestamp_not_two_numbers": ({"v1": [{"sentence": "a man talks", "timestamp": [1, "x"]}]}, "two finite numbers"),
    "timestamp_three_values": ({"v1": [{"sentence": "a man talks", "timestamp": [1, 2, 3]}]}, "[start, end]"),
    "end_before_start": ({"v1": [{"sentence": "a man talks", "timestamp": [5, 2]}]}, "ends before it starts"),
    "missing_sentence": ({"v1": [{"timestamp": [0, 2]}]}, "no string \"sentence\""),
    "missing_timestamp": ({"v1": [{"sentence": "a man talks"}]}, "no \"timestamp\""),
    "rows_not_a_list": ({"v1": {"sentence": "a man talks"}}, "must be a list"),
}
BAD_REFERENCES = {
    "fewer_sentences": ({"v1": {"timestamps": [[0, 1], [1, 2]], "sentences": ["one"]}}, "as many sentences"),
    "reversed_segment": ({"v1": {"timestamps": [[3, 1]], "sentences": ["one"]}}, "ends before it starts"),
    "not_finite": ({"v1": {"timestamps": [[0, float("inf")]], "sentences": ["one"]}}, "two finite numbers"),
    "not_dense_references": ({"v1": ["a man talks"]}, "must be {\"duration\""),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICTIONS))
def test_malformed_dense_predictions_are_named(case, tmp_path):
    results, message = BAD_PREDICTIONS[case]
    (tmp_path / "p.json").write_text(json.dumps({"version": "VERSION 1.0", "results": results}))
    with pytest.raises(DatasetError, match=rf"p\.json: results\['v1'\].*{re.escape(message)}"):
        load_dense_predictions(tmp_path / "p.json")


@pytest.mark.parametrize("case", sorted(BAD_REFERENCES))
def test_malformed_dense_references_are_named(case, tmp_path):
    data, message = BAD_REFERENCES[case]
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"r\.json: video 'v1'.*{re.escape(message)}"):
        load_dense_references(tmp_path / "r.json")


@pytest.mark.parametrize("bad", ["prediction", "reference"])
def test_vcap_score_on_a_malformed_dense_row_is_one_line_and_exit_3(bad, tmp_path):
    results = {"v1": [{"sentence": "a man talks", "timestamp": [0, 10]}]}
    refs = GOOD_REFS
    if bad == "prediction":
        results = {"v1": [{"sentence": "a man talks", "timestamp": [10, 0]}]}
    else:
        refs = {"v1": {"duration": 20.0, "timestamps": [[0, 10]], "sentences": [None]}}
    (tmp_path / "p.json").write_text(json.dumps({"results": results}))
    (tmp_path / "r.json").write_text(json.dumps(refs))
    r = _run("--predictions", str(tmp_path / "p.json"), "--references", str(tmp_path / "r.json"))
    assert r.returncode == DatasetError.exit_code, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("vcap: dataset error: ") and ("p.json" if bad == "prediction" else "r.json") in last
    assert r.stdout.strip() == ""


# ----------------------------------------------------------------------------- the reader, any JSON

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=20)
_number = st.integers(-10**400, 10**400) | st.floats(allow_nan=True, allow_infinity=True) | _json
_row = st.fixed_dictionaries({}, optional={"sentence": st.text() | _json,
                                           "timestamp": st.lists(_number, max_size=3) | _json, "extra": _json})
_near = st.fixed_dictionaries({"results": st.dictionaries(st.text(), st.lists(_row | _json, max_size=4) | _json,
                                                          max_size=4)}, optional={"version": _json})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json, _near))
def test_any_json_is_valid_dense_predictions_or_a_dataset_error(value):
    try:
        parsed = parse_dense_predictions(value, "p.json")
    except DatasetError as err:
        assert str(err).startswith("p.json")
        return
    assert parsed and set(parsed) == set(value["results"])
    for caps in parsed.values():
        for cap in caps:
            assert isinstance(cap.sentence, str)
            assert math.isfinite(cap.start) and math.isfinite(cap.end) and cap.start <= cap.end


_ref_entry = st.fixed_dictionaries({}, optional={"duration": _number, "timestamps": st.lists(
    st.lists(_number, max_size=3), max_size=3) | _json, "sentences": st.lists(st.text() | _json, max_size=3) | _json})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json | st.dictionaries(st.text(), _ref_entry | _json, max_size=3))
def test_any_json_is_valid_dense_references_or_a_dataset_error(value):
    try:
        parsed = parse_dense_references(value, "r.json")
    except DatasetError as err:
        assert str(err).startswith("r.json")
        return
    for ref in parsed.values():
        assert ref.segments and len(ref.segments) == len(ref.sentences)
        assert all(math.isfinite(s) and math.isfinite(e) and s <= e for s, e in ref.segments)
