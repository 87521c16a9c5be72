"""Momentum distillation (CLIP2TV / ALBEF): InfoNCE when alpha is 0 and there is no queue; the
teacher is the EMA of the student; the queue is FIFO and never holds a batch row's positives as its
negatives; the soft targets mix the teacher's distribution with the ground truth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval_pretrain.modeling.distill import MomentumDistiller, row_keys, soft_target_loss
from retrieval_pretrain.modeling.loss import info_nce


def _emb(b: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_alpha_zero_without_queue_is_infonce():
    v, t = _emb(6, 8, 0).requires_grad_(), _emb(6, 8, 1).requires_grad_()
    scale = torch.tensor(14.3)
    empty = torch.zeros(0, 8)
    keep = torch.zeros(6, 0, dtype=torch.bool)
    mine = soft_target_loss(v, t, scale, _emb(6, 8, 2), _emb(6, 8, 3), empty, empty, keep, keep, alpha=0.0)
    ref = info_nce(v, t, scale)
    assert mine.item() == pytest.approx(ref.item(), abs=1e-6)
    g1 = torch.autograd.grad(mine, (v, t))
    g2 = torch.autograd.grad(info_nce(v, t, scale), (v, t))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_soft_targets_by_hand():
    """B=2, one queued row kept for row 0 only: the loss equals the formula written out."""
    v, t, tv, tt = _emb(2, 4, 0), _emb(2, 4, 1), _emb(2, 4, 2), _emb(2, 4, 3)
    qv, qt = _emb(1, 4, 4), _emb(1, 4, 5)
    keep = torch.tensor([[True], [False]])
    s, alpha = torch.tensor(10.0), 0.4
    got = soft_target_loss(v, t, s, tv, tt, qv, qt, keep, keep, alpha)

    def direction(a, b, ta, tb, q):
        total = 0.0
        for i in range(2):
            cols = [b[0], b[1]] + ([q[0]] if keep[i, 0] else [])
            tcols = [tb[0], tb[1]] + ([q[0]] if keep[i, 0] else [])
            logits = s * torch.stack([a[i] @ c for c in cols])
            teacher = (s * torch.stack([ta[i] @ c for c in tcols])).softmax(0)
            truth = torch.zeros(len(cols))
            truth[i] = 1
            target = alpha * teacher + (1 - alpha) * truth
            total += -(target * logits.log_softmax(0)).sum()
        return total / 2

    want = (direction(v, t, tv, tt, qt) + direction(t, v, tt, tv, qv)) / 2
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


class _Tiny(nn.Module):
    """A stand-in student with the VideoTextModel interface (frames, mask, tokens) -> embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.v = nn.Linear(3, 4)
        self.t = nn.Embedding(50, 4)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, frames, mask, tokens):
        return {"video": F.normalize(self.v(frames.mean(1)), dim=-1), "text": F.normalize(self.t(tokens).mean(1), dim=-1),
                "logit_scale": torch.tensor(10.0)}


def test_teacher_is_the_ema_of_the_student():
    torch.manual_seed(0)
    student = _Tiny()
    d = MomentumDistiller(student, momentum=0.9, queue_size=0, alpha=0.4, dim=4)
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    expected = dict(start)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for k in range(4):
        frames, tokens = torch.randn(3, 2, 3), torch.randint(1, 50, (3, 5))
        loss = d.loss(student(frames, None, tokens), frames, None, tokens, ["a", "b", "c"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        student.steps += 1
        d.update_teacher(student)
        expected = {n: 0.9 * expected[n] + 0.1 * p.detach() for n, p in student.named_parameters()}
    for n, p in d.teacher.named_parameters():
        torch.testing.assert_close(p, expected[n], atol=1e-6, rtol=1e-6)
        assert not torch.equal(p, start[n]) and not p.requires_grad
    assert d.teacher.steps.item() == 4  # buffers follow the student


def test_queue_is_fifo_and_never_holds_a_rows_positives_as_negatives():
    torch.manual_seed(0)
    student = _Tiny()
    d = MomentumDistiller(student, momentum=0.99, queue_size=5, alpha=0.0, dim=4)
    tokens = torch.randint(1, 50, (9, 5))
    frames = torch.randn(9, 2, 3)
    ids = [f"v{i}" for i in range(9)]
    # Three batches of 3: the queue holds the last 5 rows, oldest overwritten first.
    for b in range(3):
        sl = slice(3 * b, 3 * b + 3)
        d.loss(student(frames[sl], None, tokens[sl]), frames[sl], None, tokens[sl], ids[sl])
    keys = row_keys(ids)
    # writes: rows 0-2 at 0-2, rows 3-4 at 3-4, row 5 at 0, rows 6-8 at 1-3
    assert d.queue_video_key.tolist() == [keys[5], keys[6], keys[7], keys[8], keys[4]]
    assert int(d.ptr) == 4 and int(d.filled) == 5
    with torch.no_grad():  # the queue holds the teacher's embeddings of the rows
        teach = d.teacher(frames, None, tokens)
    torch.testing.assert_close(d.queue_video[1], teach["video"][6])
    torch.testing.assert_close(d.queue_text[4], teach["text"][4])
    # A batch with clip v6 again (a later epoch) and a caption shared with v8: both are left out.
    batch_ids = ["v6", "new"]
    batch_tokens = torch.stack([tokens[0], tokens[8]])  # the second row's caption is v8's
    keep = d._keep(row_keys(batch_ids), row_keys(list(batch_tokens)), d.queue_video_key, d.queue_text_key)
    assert keep.tolist() == [[True, False, True, True, True], [True, True, True, False, True]]


def test_alpha_and_queue_change_the_loss():
    torch.manual_seed(0)
    student = _Tiny()
    frames, tokens = torch.randn(4, 2, 3), torch.randint(1, 50, (4, 5))
    out = student(frames, None, tokens)
    plain = info_nce(out["video"], out["text"], out["logit_scale"])
    d0 = MomentumDistiller(student, momentum=0.99, queue_size=0, alpha=0.0, dim=4)
    assert d0.loss(student(frames, None, tokens), frames, None, tokens, list("abcd")).item() == pytest.approx(plain.item(), abs=1e-6)
    d1 = MomentumDistiller(student, momentum=0.99, queue_size=0, alpha=0.4, dim=4)
    assert d1.loss(student(frames, None, tokens), frames, None, tokens, list("abcd")).item() != pytest.approx(plain.item(), abs=1e-4)


def test_distilled_training_on_real_files_checkpoints_teacher_and_queues(tmp_path):
    """`vcap pretrain` with pretrain.distill on real mp4s: another loss than plain InfoNCE, and a run
    cut after step 3's checkpoint and resumed ends with the straight run's losses and weights (teacher
    and queues restored)."""
    import json
    import shutil

    from safetensors.torch import load_file

    from caption.config import load
    from caption.demo import CONFIG_PATH
    from caption.demo import data as demo_data
    from retrieval_pretrain.stage1.train import train

    data = tmp_path / "data"
    demo_data.generate_dataset(data, demo_data.DemoSpec(num_train=8, num_val=0, num_test=1, frames=8, size=64, seed=3,
                                                        captions_per_video=1), progress=False, workers=1)
    args = [f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}", "video.num_frames=4",
            "pretrain.batch_size=4", "pretrain.epochs=3", "run.num_workers=0", "run.log_every=1",
            "video.cache_frames=0", "pretrain.head_layers=1", "pretrain.save_every=1", "pretrain.keep_checkpoints=10",
            "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
            "clip.custom.text_cfg.layers=1"]
    distill = ["pretrain.distill.enabled=true", "pretrain.distill.queue_size=6", "pretrain.distill.momentum=0.9"]
    plain = train(load(CONFIG_PATH, args), tmp_path / "plain")
    cfg = load(CONFIG_PATH, args + distill)
    straight = train(cfg, tmp_path / "straight")

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]

    a, b = losses(tmp_path / "plain"), losses(tmp_path / "straight")
    # soft targets from step 1 on (the teacher starts as the student), queued negatives from step 2
    assert len(a) == len(b) == 6 and all(x != pytest.approx(y, abs=1e-4) for x, y in zip(a, b))
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "straight", cut)
    for ckpt in (cut / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > 3:
            shutil.rmtree(ckpt)
    shutil.rmtree(cut / "model")
    resumed = train(cfg, cut, resume=True)
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses(cut) == b
    assert not all(torch.equal(wa[k], load_file(plain / "model.safetensors")[k]) for k in wa)
