"""Symmetric InfoNCE over video-text pairs (CLIP, Radford et al. 2021; CLIP4Clip, Luo et al. 2021).

For a batch of B matching (video, caption) pairs with L2-normalised embeddings, the logits are
``scale * video @ text.T``; the loss is the mean of the video-to-text and the text-to-video
cross-entropies with the diagonal as targets.

With ``torch.distributed`` initialised and more than one process, negatives span the global
batch: each process gathers every process's embeddings (gradients flow back to the process that
owns them: the gather's backward is a reduce-scatter), and computes the loss of its
own rows - its videos against all captions and its captions against all videos - with targets
offset by the sizes of the lower ranks (open_clip's ``local_loss`` with ``gather_with_grad``).
Each process's value is weighted by its share of the global batch, so the mean over processes
(DDP's gradient mean) is exactly the loss - and the gradient - over the global batch, also when
per-process batch sizes differ (a process may drop an unreadable video).

A pairwise model (X-CLIP: each caption is prompted by the video it is scored with) gives the
batch's score matrix itself; ``info_nce_scores`` / ``kl_matching_scores`` take that (B_video,
B_text) logits matrix. Its negatives are the process's own batch: scoring another process's
pairs would need its videos' whole states (patch tokens) and a prompt-generator pass per pair,
as X-CLIP's own training computes its loss per GPU. Each process's value is weighted by its
share of the global batch, as above.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward sums every process's gradient for each block and hands each
    owner its block (a reduce-scatter), so a process's embeddings learn from all losses."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = _world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)  # (world * rows, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum over processes
        return grad[ctx.rank * ctx.rows: (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows of ``x`` (N_global, D), and where this process's rows start.

    Rows are padded to the largest per-process count for the collective and cut back after, so
    processes may hold different numbers of rows.
    """
    world, rank = _world()
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    rows = max(counts)
    if rows > x.shape[0]:
        x = torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])  # (rows, D)
    gathered = _AllGather.apply(x)  # (world * rows, D)
    out = torch.cat([gathered[r * rows: r * rows + n] for r, n in enumerate(counts)])  # (N_global, D)
    return out, sum(counts[:rank])


def info_nce(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: ``(CE(video -> text) + CE(text -> video)) / 2``.

    Args:
        video: (B, D) L2-normalised video embeddings; row i matches ``text`` row i.
        text: (B, D) L2-normalised caption embeddings.
        logit_scale: the multiplier of the cosine similarities (``exp`` of CLIP's learned
            log-temperature, already clamped), a scalar tensor or float.
    Returns:
        a scalar; over the global batch when ``torch.distributed`` runs several processes.
    """
    if video.shape != text.shape:
        raise ValueError(f"video {tuple(video.shape)} and text {tuple(text.shape)} embeddings differ in shape")
    world, _ = _world()
    if world == 1:
        logits = logit_scale * video @ text.T  # (B, B) video rows, text columns
        labels = torch.arange(video.shape[0], device=video.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    all_video, offset = gather_with_grad(video)  # (N, D)
    all_text, _ = gather_with_grad(text)  # (N, D)
    labels = torch.arange(video.shape[0], device=video.device) + offset
    v2t = logit_scale * video @ all_text.T  # (B, N) local videos against every caption
    t2v = logit_scale * text @ all_video.T  # (B, N) local captions against every video
    local = (F.cross_entropy(v2t, labels) + F.cross_entropy(t2v, labels)) / 2
    # Weight by this process's share of the global batch: DDP's mean over processes of these
    # values (and of their gradients) is then exactly the global-batch loss, sizes equal or not.
    return local * (video.shape[0] * world / all_video.shape[0])


def _local_share(rows: int, device: torch.device) -> float:
    """``rows * world / global_rows``: the weight that makes DDP's mean over processes of local
    losses the mean over the global batch's rows (1.0 with one process)."""
    world, _ = _world()
    if world == 1:
        return 1.0
    size = torch.tensor([rows], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    return rows * world / sum(int(s) for s in sizes)


def _check_square(logits: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"pairwise logits must be (B, B) with matching pairs on the diagonal, "
                         f"got {tuple(logits.shape)}")


def info_nce_scores(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a model's own score matrix: ``(CE(rows) + CE(columns)) / 2``.

    Args:
        logits: (B, B) scaled scores, video rows and text columns, pair i on the diagonal (a
            pairwise model's ``forward`` output ``"logits"``). Equal to ``info_nce`` when
            ``logits = logit_scale * video @ text.T``.
    Returns:
        a scalar over the process's batch, weighted by its share of the global batch.
    """
    _check_square(logits)
    labels = torch.arange(logits.shape[0], device=logits.device)
    local = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return local * _local_share(logits.shape[0], logits.device)


def kl_matching_scores(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """ActionCLIP's loss (``kl_matching``) over a model's own (B, B) score matrix (video rows,
    text columns); ``tokens`` (B, L) say which texts are the same. Over the process's batch,
    weighted by its share of the global batch."""
    _check_square(logits)
    if tokens.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} must have one row per pair")
    groups = text_groups(tokens)
    target = (groups[:, None] == groups[None, :]).float()  # (B, B), symmetric
    target = target / target.sum(dim=1, keepdim=True)
    local = (_kl_rows(logits, target) + _kl_rows(logits.T, target)) / 2
    return local * _local_share(logits.shape[0], logits.device)


def text_groups(tokens: torch.Tensor) -> torch.Tensor:
    """(B,) ids that are equal exactly where two rows of ``tokens`` (B, L) are the same text."""
    return torch.unique(tokens, dim=0, return_inverse=True)[1]


def _kl_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target_row || softmax(logits_row)); 0 log 0 counts as 0."""
    log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    target = target.to(log_p.dtype)
    return (torch.xlogy(target, target) - target * log_p).sum(dim=1).mean()


def kl_matching(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
                tokens: torch.Tensor) -> torch.Tensor:
    """ActionCLIP's loss (Wang et al. 2021): video-text matching as a distribution, both directions.

    Several videos of a batch may share a text (a label's prompt, a repeated caption). The target
    of a video's row is uniform over the columns holding *its* text (all of them positives, not
    false negatives); the loss is ``(KL(target || softmax(video -> text)) + KL(target ||
    softmax(text -> video))) / 2``, averaged over rows. When every text is distinct the target is
    the identity and this is exactly symmetric InfoNCE.

    Args:
        video, text: (B, D) L2-normalised embeddings; row i of each belong together.
        logit_scale: the similarity multiplier (as ``info_nce``).
        tokens: (B, L) the texts' token ids: equal rows are the same text.
    Returns:
        a scalar; over the global batch when ``torch.distributed`` runs several processes (each
        process's rows against every process's columns, weighted by its share, as ``info_nce``).
    """
    if video.shape != text.shape or tokens.shape[0] != video.shape[0]:
        raise ValueError(f"video {tuple(video.shape)}, text {tuple(text.shape)} and tokens "
                         f"{tuple(tokens.shape)} must have one row per pair")
    world, _ = _world()
    if world == 1:
        groups = text_groups(tokens)
        target = (groups[:, None] == groups[None, :]).float()  # (B, B), symmetric
        target = target / target.sum(dim=1, keepdim=True)
        logits = logit_scale * video @ text.T  # (B, B)
        return (_kl_rows(logits, target) + _kl_rows(logits.T, target)) / 2
    all_video, offset = gather_with_grad(video)  # (N, D)
    all_text, _ = gather_with_grad(text)  # (N, D)
    all_tokens, _ = gather_with_grad(tokens)  # (N, L) no gradient: integer ids
    groups = text_groups(all_tokens)  # (N,)
    mine = groups[offset: offset + video.shape[0]]  # (B,)
    target = (mine[:, None] == groups[None, :]).float()  # (B, N)
    target = target / target.sum(dim=1, keepdim=True)
    local = (_kl_rows(logit_scale * video @ all_text.T, target) + _kl_rows(logit_scale * text @ all_video.T, target)) / 2
    return local * (video.shape[0] * world / all_video.shape[0])
