"""Retrieval metrics and dual softmax against values worked out by hand.

Conventions under test: ranks are 1-based, R@K is a fraction in [0, 1], ties count against the
query, and video-to-text ranks a video by its best-placed caption.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retrieval_pretrain.stage1.retrieval_metrics import dual_softmax, retrieval_metrics


def test_single_caption_3x3():
    #          v0   v1   v2
    sim = [[0.9, 0.3, 0.1],   # t0 -> v0: first                            rank 1
           [0.8, 0.5, 0.6],   # t1 -> v1: v0 (0.8) and v2 (0.6) ahead       rank 3
           [0.2, 0.7, 0.4]]   # t2 -> v2: v1 (0.7) ahead                    rank 2
    # v2t: v0 column [0.9, 0.8, 0.2], own t0 = 0.9 first                    rank 1
    #      v1 column [0.3, 0.5, 0.7], own t1 = 0.5, t2 (0.7) ahead          rank 2
    #      v2 column [0.1, 0.6, 0.4], own t2 = 0.4, t1 (0.6) ahead          rank 2
    m = retrieval_metrics(np.array(sim), np.array([0, 1, 2]))
    assert m == pytest.approx({
        "t2v_R@1": 1 / 3, "t2v_R@5": 1.0, "t2v_R@10": 1.0, "t2v_MedR": 2.0, "t2v_MeanR": 2.0,
        "v2t_R@1": 1 / 3, "v2t_R@5": 1.0, "v2t_R@10": 1.0, "v2t_MedR": 2.0, "v2t_MeanR": 5 / 3,
    })


def test_ranks_beyond_5_and_10():
    """12 videos, 3 captions (for v0, v1, v2); v3..v11 have no caption."""
    sim = np.zeros((3, 12))
    sim[0, :] = 0.1
    sim[0, 0] = 0.9             # t0: rank 1
    sim[1, 1] = 0.5
    sim[1, 2:7] = 0.8           # t1: five videos ahead -> rank 6
    sim[2, :11] = 0.6
    sim[2, 2] = 0.3             # t2: ten videos ahead (v0, v1, v3..v10) -> rank 11
    # v2t (videos with captions only): v0: own 0.9, others t1 0.0, t2 0.6 -> rank 1
    #   v1: own 0.5, t2 0.6 ahead -> rank 2;  v2: own 0.3, t1 0.8 ahead -> rank 2
    m = retrieval_metrics(sim, [0, 1, 2])
    assert m == pytest.approx({
        "t2v_R@1": 1 / 3, "t2v_R@5": 1 / 3, "t2v_R@10": 2 / 3, "t2v_MedR": 6.0, "t2v_MeanR": 6.0,
        "v2t_R@1": 1 / 3, "v2t_R@5": 1.0, "v2t_R@10": 1.0, "v2t_MedR": 2.0, "v2t_MeanR": 5 / 3,
    })


def test_multi_caption_videos():
    text_to_video = [0, 0, 1, 1, 2]
    #          v0    v1    v2
    sim = [[0.2, 0.9, 0.1],    # t0 -> v0: v1 ahead                         rank 2
           [0.7, 0.3, 0.5],    # t1 -> v0                                   rank 1
           [0.6, 0.4, 0.8],    # t2 -> v1: v0, v2 ahead                     rank 3
           [0.1, 0.5, 0.2],    # t3 -> v1                                   rank 1
           [0.3, 0.35, 0.25]]  # t4 -> v2: v0, v1 ahead                     rank 3
    # v2t, best own caption per video:
    #   v0: own t0 0.2, t1 0.7 -> best 0.7; nobody else >= 0.7              rank 1
    #   v1: own t2 0.4, t3 0.5 -> best 0.5; t0 (0.9) ahead                  rank 2
    #   v2: own t4 0.25; t1 (0.5), t2 (0.8) ahead                           rank 3
    m = retrieval_metrics(torch.tensor(sim), torch.tensor(text_to_video))  # tensors work too
    assert m == pytest.approx({
        "t2v_R@1": 2 / 5, "t2v_R@5": 1.0, "t2v_R@10": 1.0, "t2v_MedR": 2.0, "t2v_MeanR": 2.0,
        "v2t_R@1": 1 / 3, "v2t_R@5": 1.0, "v2t_R@10": 1.0, "v2t_MedR": 2.0, "v2t_MeanR": 2.0,
    })


def test_ties_count_against_the_query():
    """A collapsed model (every score equal) gets the worst rank, not R@1 = 100%."""
    m = retrieval_metrics(np.full((3, 3), 0.5), [0, 1, 2])
    assert m["t2v_R@1"] == 0.0 and m["t2v_MedR"] == 3.0
    assert m["v2t_R@1"] == 0.0 and m["v2t_MedR"] == 3.0
    # two captions of the same video tied with each other do not push each other down
    m = retrieval_metrics(np.array([[0.5, 0.1], [0.5, 0.1], [0.2, 0.9]]), [0, 0, 1])
    assert m["v2t_MedR"] == 1.0 and m["v2t_R@1"] == 1.0


def test_dual_softmax_by_hand():
    """sim = [[0.5, 0.2], [0.1, 0.4]], temperature 10, softmax over texts (dim 0):
    column v0: softmax(5, 1) = (1/(1+e^-4), e^-4/(1+e^-4)) = (0.982014, 0.017986)
    column v1: softmax(2, 4) = (1/(1+e^2),  1/(1+e^-2))    = (0.119203, 0.880797)
    sim * weights = [[0.5*0.982014, 0.2*0.119203], [0.1*0.017986, 0.4*0.880797]]
                  = [[0.491007, 0.023841], [0.001799, 0.352319]]"""
    sim = np.array([[0.5, 0.2], [0.1, 0.4]])
    w00, w01 = 1 / (1 + math.exp(-4)), 1 / (1 + math.exp(2))
    by_hand = np.array([[0.5 * w00, 0.2 * w01], [0.1 * (1 - w00), 0.4 * (1 - w01)]])
    np.testing.assert_allclose(by_hand, [[0.491007, 0.023841], [0.001799, 0.352319]], atol=1e-6)
    got = dual_softmax(sim, temperature=10.0)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)
    as_tensor = dual_softmax(torch.tensor(sim), temperature=10.0)
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), by_hand, rtol=1e-12)
    # dim=1 re-weights over the videos of each text (the video-to-text form)
    np.testing.assert_allclose(dual_softmax(sim, 10.0, dim=1), dual_softmax(sim.T, 10.0).T, rtol=1e-12)


def test_dual_softmax_demotes_a_hub_video():
    """v1 is close to both captions. Plain t2v: t0 ranks v1 (0.52) over its own v0 (0.50).
    Temperature 100, softmax over texts:
      column v0: softmax(50, 10) ~ (1, e^-40)
      column v1: softmax(52, 60) = (1/(1+e^8), 1/(1+e^-8)) = (0.000335, 0.999665)
    re-weighted t0 row: (0.50 * 1, 0.52 * 0.000335 = 0.000174) -> v0 first."""
    sim = np.array([[0.50, 0.52], [0.10, 0.60]])
    plain = retrieval_metrics(sim, [0, 1])
    reweighted = dual_softmax(sim, 100.0)
    assert reweighted[0, 1] == pytest.approx(0.52 / (1 + math.exp(8)), rel=1e-9)
    dsl = retrieval_metrics(reweighted, [0, 1])
    assert plain["t2v_R@1"] == 0.5 and plain["t2v_MedR"] == 1.5
    assert dsl["t2v_R@1"] == 1.0 and dsl["t2v_MeanR"] == 1.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="num_texts"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="index columns"):
        retrieval_metrics(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0], [0.0, 1.0]]), [0, 1])


def test_dual_softmax_video_to_text_normalises_over_videos():
    """t0 is a hub text, close to both videos. sim (texts x videos) = [[0.60, 0.55], [0.10, 0.50]].
    Plain video-to-text: v1's column ranks t0 (0.55) above its own t1 (0.50): rank 2, R@1 = 1/2.
    Dual softmax for video-to-text normalises over the videos of each text row (temperature 100):
      row t0: softmax(60, 55) = (1/(1+e^-5), 1/(1+e^5)) = (0.993307, 0.006693) -> (0.595984, 0.003681)
      row t1: softmax(10, 50) = (e^-40, ~1)                                     -> (~4e-19, 0.5)
    v1's column is now t1 (0.5) > t0 (0.003681): rank 1, R@1 = 1. (Normalising over the texts of
    each column instead, the text-to-video form, keeps t0 ahead: 0.55 * 0.993307 vs 0.5 * 0.006693.)"""
    from retrieval_pretrain.stage1.retrieval_metrics import dsl_retrieval_metrics

    sim = np.array([[0.60, 0.55], [0.10, 0.50]])
    plain = retrieval_metrics(sim, [0, 1])
    assert plain["v2t_R@1"] == 0.5 and plain["v2t_MeanR"] == 1.5
    row_t0 = dual_softmax(sim, 100.0, dim=1)[0]
    np.testing.assert_allclose(row_t0, [0.6 / (1 + math.exp(-5)), 0.55 / (1 + math.exp(5))], rtol=1e-12)
    np.testing.assert_allclose(row_t0, [0.595984, 0.003681], atol=1e-6)
    dsl = dsl_retrieval_metrics(sim, [0, 1], temperature=100.0)
    assert dsl["v2t_R@1"] == 1.0 and dsl["v2t_MeanR"] == 1.0
    assert dsl["t2v_R@1"] == 1.0
    wrong_axis = retrieval_metrics(dual_softmax(sim, 100.0, dim=0), [0, 1])
    assert wrong_axis["v2t_R@1"] == 0.5
    assert set(dsl) == set(plain)
