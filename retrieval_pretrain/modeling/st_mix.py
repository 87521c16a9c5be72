"""Space-time mixing attention in the CLIP image tower (Open-VCLIP, Weng et al. 2023, after Bulat et
al. 2021): in every block of the ViT, each frame's tokens attend to the keys and values of the
previous and the next frame of the same video as well as to their own. No new parameters: the
weights stay interchangeable with image CLIP's (``clip.temporal_attention=st_mix``).

Frames of one video are consecutive rows of the batch the image tower sees; ``FrameLayout`` tells
the blocks how many frames each video has (padding frames never reach the tower), so a frame's
neighbours are never another video's. A video of one frame, or a tower without the switch, runs
open_clip's own attention unchanged (bit for bit).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from retrieval_pretrain.foundation.errors import ConfigError


class FrameLayout:
    """Which rows of the image tower's batch belong together: per row, the row of the previous and
    the next frame of its video (-1: none). Set for the duration of one ``encode_image`` call."""

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None
        self.next: torch.Tensor | None = None

    @contextmanager
    def videos(self, lengths: torch.Tensor) -> Iterator[None]:
        """``lengths`` (B,): real frames of each video, whose rows are consecutive in that order."""
        starts = torch.cumsum(lengths, 0) - lengths  # (B,)
        video = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (N,)
        pos = torch.arange(int(lengths.sum())) - starts[video]  # (N,) frame index inside its video
        rows = torch.arange(len(pos))
        self.prev = torch.where(pos > 0, rows - 1, -1)
        self.next = torch.where(pos < lengths[video] - 1, rows + 1, -1)
        try:
            yield
        finally:
            self.prev = self.next = None


def _mixed_attention(self: Any, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                     attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A block's attention with the neighbouring frames' tokens as extra keys and values."""
    layout: FrameLayout = self.st_layout
    if layout.prev is None or k_x is not None or bool((layout.prev < 0).all() & (layout.next < 0).all()):
        return self.st_own_attention(q_x, k_x, v_x, attn_mask)  # open_clip's path, unchanged
    n, length, _ = q_x.shape  # (frames, tokens, width); batch-first
    prev, nxt = layout.prev.to(q_x.device), layout.next.to(q_x.device)
    padded = torch.cat([q_x, q_x.new_zeros(1, *q_x.shape[1:])])  # row -1: zeros, masked below
    kv = torch.cat([padded[prev], q_x, padded[nxt]], dim=1)  # (n, 3 * length, width)
    missing = torch.zeros(n, 3 * length, dtype=torch.bool, device=q_x.device)
    missing[:, :length] = (prev < 0)[:, None]
    missing[:, 2 * length:] = (nxt < 0)[:, None]
    mask = None
    if attn_mask is not None:  # (length, length) over one frame's tokens: the same for each neighbour
        mask = attn_mask.to(q_x.dtype).repeat(1, 3)
    return self.attn(q_x, kv, kv, need_weights=False, key_padding_mask=missing, attn_mask=mask)[0]


def enable_st_mix(visual: nn.Module) -> FrameLayout:
    """Switch the ViT ``visual`` to space-time mixing attention; returns the layout its blocks read."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ConfigError("clip.temporal_attention=st_mix needs a ViT image tower (open_clip VisionTransformer); "
                          f"this one is a {type(visual).__name__}")
    layout = FrameLayout()
    for block in blocks:
        if not getattr(block.attn, "batch_first", False):
            raise ConfigError("clip.temporal_attention=st_mix: this open_clip version's attention is not batch-first")
        block.st_own_attention = block.attention
        block.st_layout = layout
        block.attention = types.MethodType(_mixed_attention, block)
    return layout
