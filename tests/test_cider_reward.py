"""``caption.cider_reward``: parity with pycocoevalcap's ``Cider`` on real MSR-VTT captions and with
nlg-eval's published values, and the behaviour SCST relies on (k samples per video in one call,
empty captions, unknown ids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from caption.cider_reward import CiderD, words
from caption.metrics import ptb_tokenize_approx

# README of ../shared/data/metrics: nlg-eval's per-line CIDEr of its two-line corpus, and the mean.
NLG_EVAL_PER_LINE = (0.51715, 1.96724)
NLG_EVAL_CORPUS = 1.242192


def _split(text: str) -> str:
    """Whitespace tokens, lower-cased, joined by single spaces (what both scorers are given)."""
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def msrvtt_test(shared_data: Path) -> dict[str, list[str]]:
    """``{video_id: [caption, ...]}`` of the official MSR-VTT test split, in file order."""
    info = json.loads((shared_data / "annotations" / "msrvtt" / "msrvtt_val_test_videodatainfo.json").read_text())
    test = {v["video_id"]: [] for v in info["videos"] if v["split"] == "test"}
    for s in info["sentences"]:
        if s["video_id"] in test:
            test[s["video_id"]].append(s["caption"])
    return test


def _held_out(captions: dict[str, list[str]], num_videos: int, vary: bool, tokenize) -> tuple[dict, dict]:
    """First caption of each of the first ``num_videos`` videos as the candidate, the rest (or,
    with ``vary``, 1 to 19 of them) as references: pycocoevalcap's ``gts`` and ``res``."""
    gts, res = {}, {}
    for i, (vid, caps) in enumerate(list(captions.items())[:num_videos]):
        refs = caps[1:1 + (1 + i % 19 if vary else len(caps))]
        gts[vid] = [tokenize(c) for c in refs]
        res[vid] = [tokenize(caps[0])]
    return gts, res


@pytest.mark.parametrize("vary", [False, True], ids=["19-refs", "1-to-19-refs"])
def test_parity_with_pycocoevalcap_on_msrvtt(msrvtt_test, vary):
    gts, res = _held_out(msrvtt_test, 200, vary, _split)
    mean, want = Cider().compute_score(gts, res)
    scorer = CiderD({vid: [r.split() for r in refs] for vid, refs in gts.items()})
    got = scorer.score(list(res), [res[vid][0].split() for vid in res])
    assert got.dtype == np.float64 and got.shape == (200,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.mean() == pytest.approx(mean, abs=1e-6)
    assert want.std() > 0.1  # real spread, not a degenerate all-zero comparison


def test_parity_with_pycocoevalcap_after_words(msrvtt_test):
    """Captions tokenised by ``words`` (PTB approximation, punctuation dropped) score the same."""
    gts, res = _held_out(msrvtt_test, 150, False, lambda c: " ".join(words(c)))
    _, want = Cider().compute_score(gts, res)
    scorer = CiderD({vid: [r.split() for r in refs] for vid, refs in gts.items()})
    got = scorer.score(list(res), [res[vid][0].split() for vid in res])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_parity_with_pycocoevalcap_on_repetitive_random_text():
    """Tiny vocabularies make repeated n-grams, n-grams in several videos, empty sentences and
    varying reference counts common; two candidate-only words exercise n-grams in no reference."""
    rng = np.random.default_rng(7)
    ref_vocab, cand_vocab = list("abcdefgh"), list("abcdefghyz")

    def sentence(vocab: list[str], longest: int) -> str:
        return " ".join(rng.choice(vocab, size=rng.integers(0, longest + 1)))

    gts = {f"v{i}": [sentence(ref_vocab, 12) for _ in range(rng.integers(1, 7))] for i in range(60)}
    res = {vid: [sentence(cand_vocab, 15)] for vid in gts}
    res["v0"], res["v1"] = ["y y y y z y z"], ["a a a a a a a a"]
    _, want = Cider().compute_score(gts, res)
    scorer = CiderD({vid: [r.split() for r in refs] for vid, refs in gts.items()})
    got = scorer.score(list(res), [res[vid][0].split() for vid in res])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert (want > 0).sum() > 30


def test_nlg_eval_published_values(shared_data):
    folder = shared_data / "metrics" / "nlg-eval"
    hyp, ref1, ref2 = ((folder / f).read_text().splitlines() for f in ("hyp.txt", "ref1.txt", "ref2.txt"))
    scorer = CiderD({str(i): [a.split(), b.split()] for i, (a, b) in enumerate(zip(ref1, ref2))})
    got = scorer.score(["0", "1"], [h.split() for h in hyp])
    np.testing.assert_allclose(got, NLG_EVAL_PER_LINE, rtol=0, atol=5e-6)
    assert got.mean() == pytest.approx(NLG_EVAL_CORPUS, abs=1e-6)


def test_samples_per_video_in_one_call_equal_separate_calls(msrvtt_test):
    gts, _ = _held_out(msrvtt_test, 100, True, _split)
    scorer = CiderD({vid: [r.split() for r in refs] for vid, refs in gts.items()})
    rng = np.random.default_rng(0)
    pool = [c for caps in list(msrvtt_test.values())[:300] for c in caps]
    vids = [vid for vid in list(gts)[:16] for _ in range(5)]  # 16 videos x 5 samples
    # Each video's first sample is its held-out caption, the other four random MSR-VTT captions.
    cands = [_split(msrvtt_test[vid][0] if i % 5 == 0 else pool[rng.integers(len(pool))]).split()
             for i, vid in enumerate(vids)]
    cands[3] = []  # an empty sample among the others
    together = scorer.score(vids, cands)
    apart = np.array([scorer.score([v], [c])[0] for v, c in zip(vids, cands)])
    np.testing.assert_allclose(together, apart, rtol=0, atol=1e-12)
    assert together[3] == 0.0 and (together > 0).sum() > 40


def test_empty_candidate_scores_zero():
    scorer = CiderD({"a": [["a", "dog", "runs"]], "b": [["a", "cat", "sleeps"]]})
    got = scorer.score(["a", "b"], [[], ["a"]])
    np.testing.assert_array_equal(got, [0.0, 0.0])
    assert scorer.score([], []).shape == (0,)


def test_unknown_video_id_is_a_key_error_naming_it():
    scorer = CiderD({"a": [["a", "dog", "runs"]]})
    with pytest.raises(KeyError, match="video404"):
        scorer.score(["a", "video404"], [["a"], ["dog"]])


def test_bad_arguments():
    scorer = CiderD({"a": [["a", "dog", "runs"]]})
    with pytest.raises(ValueError, match="2 video ids for 1 candidates"):
        scorer.score(["a", "a"], [["dog"]])
    with pytest.raises(TypeError, match="words"):
        scorer.score(["a"], ["a dog runs"])  # a string, not a token list
    with pytest.raises(ValueError, match="no references"):
        CiderD({"a": []})


def test_consensus_caption_beats_its_shuffle():
    consensus = "a man is playing a guitar on a stage".split()
    scorer = CiderD({"guitar": [consensus] * 5,
                     "cook": ["a woman is cooking pasta in a kitchen".split()] * 5,
                     "car": ["a red car drives down a road".split()] * 5})
    shuffled = list(np.random.default_rng(1).permutation(consensus))
    assert shuffled != consensus
    exact, mixed = scorer.score(["guitar", "guitar"], [consensus, shuffled])
    assert exact > mixed > 0
    # Identical to every reference: each order's cosine is 1, the length penalty 1, so 10 x 1.
    assert exact == pytest.approx(10.0, abs=1e-9)


def test_words_is_the_metrics_tokenisation():
    text = "A man's dog, (running) fast... on 10,000 \"stairs\"!"
    assert words(text) == ptb_tokenize_approx(text).split()
    assert words(text) == ["a", "man", "'s", "dog", "-lrb-", "running", "-rrb-", "fast", "on", "10,000", "stairs"]
