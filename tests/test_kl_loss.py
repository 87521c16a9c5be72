"""ActionCLIP's KL matching loss (``pretrain.loss=kl``): InfoNCE when every text differs, a hand-computed
case with a shared text, and the global batch over two processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_gloo_pair

from retrieval_pretrain.modeling.loss import info_nce, kl_matching, text_groups


def _pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    return video, text


def test_with_all_texts_distinct_it_is_info_nce_and_so_is_its_gradient():
    video, text = _pairs(6)
    tokens = torch.arange(6 * 3).view(6, 3)  # six different texts
    v1, t1 = video.clone().requires_grad_(), text.clone().requires_grad_()
    v2, t2 = video.clone().requires_grad_(), text.clone().requires_grad_()
    kl, nce = kl_matching(v1, t1, 7.0, tokens), info_nce(v2, t2, 7.0)
    assert kl.item() == pytest.approx(nce.item(), abs=1e-12)
    (kl + nce).backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=0, atol=1e-12)


def test_a_shared_text_makes_both_videos_positives_by_hand():
    """Videos = texts = the 3x3 identity, scale 1, so logits = I; rows 0 and 1 have the same text.
    v2t row 0: p = softmax(1, 0, 0) = (e, 1, 1) / (e + 2), target (1/2, 1/2, 0):
    KL = -log 2 - (log p0 + log p1) / 2 = -log 2 - 1/2 + log(e + 2); row 1 the same; row 2 (its own
    text): -log p2 = log(e + 2) - 1. t2v is the same (I and the target are symmetric), so
    loss = (3 log(e + 2) - 2 log 2 - 2) / 3 = 0.422680, where InfoNCE would give log(e + 2) - 1 = 0.551444."""
    eye = torch.eye(3, dtype=torch.float64)
    tokens = torch.tensor([[5, 9], [5, 9], [5, 7]])
    by_hand = (3 * math.log(math.e + 2) - 2 * math.log(2) - 2) / 3
    assert by_hand == pytest.approx(0.422680, abs=1e-6)
    assert kl_matching(eye, eye, 1.0, tokens).item() == pytest.approx(by_hand, abs=1e-12)
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-12)


def test_text_groups_are_equal_exactly_for_equal_rows():
    groups = text_groups(torch.tensor([[1, 2, 0], [1, 2, 0], [1, 3, 0], [2, 1, 0]]))
    assert groups[0] == groups[1] and len({int(groups[0]), int(groups[2]), int(groups[3])}) == 3


_WORKER = """
import json, sys
import torch, torch.distributed as dist, torch.nn.functional as F
from retrieval_pretrain.modeling.loss import kl_matching
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
g = torch.Generator().manual_seed(0)
video = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
text = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
tokens = torch.tensor(TOKENS)
own = slice(0, 3) if rank == 0 else slice(3, 5)
v, t = video[own].clone().requires_grad_(), text[own].clone().requires_grad_()
loss = kl_matching(v, t, 5.0, tokens[own])
loss.backward()
dist.destroy_process_group()
json.dump([loss.item(), v.grad.tolist(), t.grad.tolist()], open(out, "w"))
"""
TOKENS = [[1, 0], [2, 0], [3, 0], [1, 0], [2, 0]]  # texts shared across the two processes


def test_over_two_processes_it_is_the_global_batch_loss(tmp_path):
    """3 + 2 rows on two gloo processes, with texts shared across processes: the mean of their
    losses and gradients (what DDP averages) equals one process's over the 5 rows."""
    ranks = run_gloo_pair(_WORKER.replace("TOKENS", repr(TOKENS)), tmp_path)
    video, text = _pairs(5)
    video.requires_grad_()
    text.requires_grad_()
    loss = kl_matching(video, text, 5.0, torch.tensor(TOKENS))
    loss.backward()
    assert np.mean([r[0] for r in ranks]) == pytest.approx(loss.item(), abs=1e-12)
    assert loss.item() != pytest.approx(info_nce(video.detach(), text.detach(), 5.0).item(), abs=1e-3)
    # DDP averages gradients over the 2 processes; each process's rows get their owner's gradient
    grad_v = np.concatenate([np.asarray(r[1]) for r in ranks]) / 2
    grad_t = np.concatenate([np.asarray(r[2]) for r in ranks]) / 2
    np.testing.assert_allclose(grad_v, video.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grad_t, text.grad.numpy(), atol=1e-12)
