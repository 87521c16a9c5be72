"""Label-smoothed cross-entropy for captions (Szegedy et al. 2016; CLIP4Caption trains with 0.1).

The model returns logits; training computes the loss here, from ``logits`` (B, L, V) and the next
tokens ``labels`` (B, L), averaged over the non-pad tokens of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1,
                 pad_id: int = 0) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over the tokens whose label is not ``pad_id`` (or -100).

    Args:
        logits: (B, L, V) scores for the next token at each position.
        labels: (B, L) the next tokens; ``pad_id`` and -100 positions are ignored.
        label_smoothing: weight of the uniform distribution over all V classes (torch's definition).
        pad_id: the padding id.

    Returns:
        A scalar (float32); 0 when no position counts.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    target = labels.masked_fill(labels == pad_id, -100)  # (B, L)
    if not (target != -100).any():
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing, reduction="mean")


def caption_loss_sums(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1,
                      pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per caption: the sum of ``caption_loss``'s token losses and the number of tokens it counts,
    ``(sums (B,), counts (B,))`` - so a loss over many batches (or processes) is
    ``sums.sum() / counts.sum()``, whatever the batching."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    target = labels.masked_fill(labels == pad_id, -100)  # (B, L)
    per_token = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100,
                                label_smoothing=label_smoothing, reduction="none").view(labels.shape)  # (B, L)
    return per_token.sum(dim=1), (target != -100).sum(dim=1)
