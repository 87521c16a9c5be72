"""Momentum distillation for stage 1 (CLIP2TV, Gao et al. 2021, after ALBEF, Li et al. 2021):
``pretrain.distill``.

An exponential moving average of the whole model (the *teacher*, ``momentum`` per step) embeds
each batch too; its recent video and caption embeddings wait in two FIFO queues of ``queue_size``
rows that extend the negatives; and the targets are soft:

    targets = alpha * softmax(teacher logits) + (1 - alpha) * ground truth

in both directions (video -> captions, caption -> videos). The student's logits of a video are
``scale * video @ [the batch's captions (student), the queued captions (teacher)]^T``, the teacher's
the same with the teacher's embeddings; the loss is the cross-entropy against the soft targets,
averaged over the two directions. With ``alpha = 0`` and no queue this is exactly the symmetric
InfoNCE of ``retrieval_pretrain.modeling.loss.info_nce``.

A queued row is never a negative of its own positive: every row carries the key of its video and
of its caption text, and a queued row whose video or caption text is one of the scored row's is
left out of that row's softmax (a clip seen again a few batches later, or a label shared by many
videos). The teacher, the queues and their write position are a module registered for
checkpointing, so ``--resume`` continues them exactly.

ALBEF's values for large data: momentum 0.995, queue 65,536, alpha 0.4 (the config's defaults); a
small dataset needs a queue smaller than the training set (else most of it is stale copies of the
same clips).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Sequence

import torch
from torch import nn


def row_keys(values: Sequence[Any]) -> torch.Tensor:
    """A stable 63-bit integer key per value (video id or caption token row), for the queue's
    does-this-row-belong-to-that-positive test."""
    keys = []
    for v in values:
        data = v.cpu().numpy().tobytes() if torch.is_tensor(v) else str(v).encode("utf-8")
        keys.append(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1)
    return torch.tensor(keys, dtype=torch.long)


def soft_target_loss(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, t_video: torch.Tensor,
                     t_text: torch.Tensor, queue_video: torch.Tensor, queue_text: torch.Tensor,
                     keep_v2t: torch.Tensor, keep_t2v: torch.Tensor, alpha: float) -> torch.Tensor:
    """The distillation loss of one batch (see the module docstring).

    Args:
        video, text: (B, D) the student's normalised embeddings of the batch's pairs.
        scale: () the temperature (CLIP's exp(logit_scale)).
        t_video, t_text: (B, D) the teacher's embeddings of the same pairs.
        queue_video, queue_text: (K, D) the teacher's queued embeddings (K may be 0).
        keep_v2t: (B, K) bool, queued captions that may be negatives of each video;
        keep_t2v: (B, K) bool, queued videos that may be negatives of each caption.
        alpha: weight of the teacher's distribution in the targets.
    """
    B = video.shape[0]
    eye = torch.eye(B, device=video.device, dtype=torch.float32)
    truth = torch.cat([eye, eye.new_zeros(B, queue_video.shape[0])], dim=1)  # (B, B + K)
    loss = video.new_zeros((), dtype=torch.float32)
    for s_a, s_b, t_a, t_b, queue, keep in ((video, text, t_video, t_text, queue_text, keep_v2t),
                                            (text, video, t_text, t_video, queue_video, keep_t2v)):
        mask = torch.cat([torch.ones(B, B, dtype=torch.bool, device=keep.device), keep], dim=1)  # (B, B + K)
        logits = scale * torch.cat([s_a @ s_b.T, s_a @ queue.T], dim=1).float()  # (B, B + K)
        logits = logits.masked_fill(~mask, float("-inf"))
        targets = truth
        if alpha > 0:
            with torch.no_grad():
                teacher = (scale * torch.cat([t_a @ t_b.T, t_a @ queue.T], dim=1)).float().masked_fill(~mask, float("-inf"))
                targets = alpha * teacher.softmax(dim=1) + (1 - alpha) * truth
        logp = logits.log_softmax(dim=1).masked_fill(~mask, 0.0)  # excluded columns have target 0
        loss = loss + (-(targets * logp).sum(dim=1)).mean()
    return loss / 2


class MomentumDistiller(nn.Module):
    """The teacher (an EMA copy of the model) and the queues of its embeddings.

    Args:
        model: the student (unwrapped); the teacher starts as its copy.
        momentum: the EMA factor per optimizer step (teacher = m * teacher + (1 - m) * student).
        queue_size: rows in each queue (0: no queue).
        alpha: weight of the teacher's distribution in the targets.
        dim: the embedding width.
    """

    def __init__(self, model: nn.Module, momentum: float, queue_size: int, alpha: float, dim: int):
        super().__init__()
        self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
        self.momentum, self.alpha, self.queue_size = float(momentum), float(alpha), int(queue_size)
        self.register_buffer("queue_video", torch.zeros(queue_size, dim))
        self.register_buffer("queue_text", torch.zeros(queue_size, dim))
        self.register_buffer("queue_video_key", torch.full((queue_size,), -1, dtype=torch.long))  # -1: empty
        self.register_buffer("queue_text_key", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_teacher(self, model: nn.Module) -> None:
        """One EMA step towards the student's current weights (after an optimizer step)."""
        student = dict(model.named_parameters())
        for name, p in self.teacher.named_parameters():
            p.mul_(self.momentum).add_(student[name].detach().to(p.dtype), alpha=1 - self.momentum)
        mine = dict(model.named_buffers())
        for name, b in self.teacher.named_buffers():
            b.copy_(mine[name])

    def _keep(self, own: torch.Tensor, other: torch.Tensor, queue_own: torch.Tensor,
              queue_other: torch.Tensor) -> torch.Tensor:
        """(B, K): queued rows that are real and share neither key with the batch row."""
        filled = queue_own >= 0  # (K,)
        clash = (queue_own[None, :] == own[:, None]) | (queue_other[None, :] == other[:, None])  # (B, K)
        return filled[None, :] & ~clash

    def loss(self, out: dict[str, torch.Tensor], frames: torch.Tensor, mask: torch.Tensor | None,
             tokens: torch.Tensor, video_ids: Sequence[str]) -> torch.Tensor:
        """The batch's distillation loss; then the teacher's embeddings of the batch join the
        queues (after the loss, so a batch is never its own negative)."""
        with torch.no_grad():
            t = self.teacher(frames, mask, tokens)
        t_video, t_text = t["video"].detach().float(), t["text"].detach().float()
        vkey = row_keys(video_ids).to(frames.device)
        tkey = row_keys(list(tokens)).to(frames.device)
        keep_v2t = self._keep(vkey, tkey, self.queue_video_key, self.queue_text_key)  # captions queued
        keep_t2v = keep_v2t  # a queued (video, caption) pair is kept or left out as a whole
        # copies: the backward pass needs the queues as they were, and _enqueue overwrites them now
        loss = soft_target_loss(out["video"], out["text"], out["logit_scale"], t_video, t_text,
                                self.queue_video.clone(), self.queue_text.clone(), keep_v2t, keep_t2v, self.alpha)
        self._enqueue(t_video, t_text, vkey, tkey)
        return loss

    @torch.no_grad()
    def _enqueue(self, video: torch.Tensor, text: torch.Tensor, vkey: torch.Tensor, tkey: torch.Tensor) -> None:
        """FIFO: the oldest rows are overwritten first."""
        K = self.queue_size
        if K == 0:
            return
        n = min(video.shape[0], K)
        video, text, vkey, tkey = video[-n:], text[-n:], vkey[-n:], tkey[-n:]
        at = (int(self.ptr) + torch.arange(n, device=video.device)) % K
        self.queue_video[at] = video.to(self.queue_video.dtype)
        self.queue_text[at] = text.to(self.queue_text.dtype)
        self.queue_video_key[at] = vkey
        self.queue_text_key[at] = tkey
        self.ptr.fill_((int(self.ptr) + n) % K)
        self.filled.fill_(min(int(self.filled) + n, K))
