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


def generated_mask(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, L) True for every token up to and including the first ``eos_id`` of its row (all when
    the row has none): the tokens a sampled caption actually consists of."""
    is_eos = (tokens == eos_id).long()
    return (is_eos.cumsum(1) - is_eos) == 0


def scst_loss_sums(logits: torch.Tensor, tokens: torch.Tensor, advantage: torch.Tensor, eos_id: int,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-critical policy gradient (Rennie et al. 2017) as ``(sum, tokens counted)``.

    ``-(reward - baseline) * log p(token | prefix)`` summed over each sampled caption's tokens (EOS
    included) and over the batch; the loss is ``sum / count`` (per token of the batch, as
    ruotianluo's self-critical.pytorch normalises it). Minimising it raises the probability of
    captions whose reward beats the baseline and lowers it for the others.

    Args:
        logits: (B, L, V) teacher-forced logits of the sampled captions (BOS + tokens[:-1] in).
        tokens: (B, L) the sampled captions without BOS (EOS, then PAD).
        advantage: (B,) reward minus baseline, a constant (no gradient flows through it).
        temperature: the sampling temperature; the policy is softmax(logits / temperature).
    """
    if logits.shape[:-1] != tokens.shape or advantage.shape != tokens.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)}, tokens {tuple(tokens.shape)} and advantage "
                         f"{tuple(advantage.shape)} do not match")
    logp = (logits.float() / temperature).log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, L)
    mask = generated_mask(tokens, eos_id).to(logp.dtype)  # (B, L)
    total = -(advantage.detach().to(logp.dtype).unsqueeze(1) * logp * mask).sum()
    return total, mask.sum()
