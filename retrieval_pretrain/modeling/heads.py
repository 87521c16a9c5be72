"""CLIP4Clip's temporal heads: frame features (B, T, D) -> contextualised frame features (B, T, D).

Luo et al., "CLIP4Clip" (2021), the "loose" similarity types:

* ``meanP``: parameter-free; the video is the mean of its frame features.
* ``seqTransf``: frame features + learned frame-position embeddings through a small transformer,
  plus a residual to the frame features, then the mean. As in CLIP4Clip the transformer's blocks
  and the position table start as copies of the first blocks / positions of CLIP's own text
  transformer when the widths agree (CLIP4Clip's "initialization trick"); otherwise they start
  random.

* ``seqLSTM``: an LSTM over the frame features (padding frames left out: the sequence is packed
  to each video's real length), plus a residual to the frame features, then the mean.

Padding frames (mask False) are excluded from attention as keys.

Each kind is its own small module (``MeanP``, ``SeqTransf``, ``SeqLSTM``, all ``TemporalHead``s),
picked once by ``build_head`` (``HEAD_CLASSES``: kind -> class); an optional part that is off is
an ``nn.Identity()`` (``SeqTransf.norm`` without ``input_norm``), not a branch in ``forward``.
Their parameter names are those of the one-class head they replace (``frame_position_embeddings``,
``transformer.*``, ``lstm.*``), so model folders written before load strictly.

``tightTransf`` (``pretrain.head=tightTransf``) is not a temporal head: it scores each (text, video)
pair with a cross-modal transformer (``retrieval_pretrain.modeling.tight_transf``); its model uses ``meanP``
here for the per-frame features and the fallback video embedding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from open_clip.transformer import Transformer
from torch import nn

from retrieval_pretrain.foundation.errors import ConfigError


@torch.no_grad()
def copy_text_blocks(transformer: Transformer, text_transformer: Transformer) -> bool:
    """Copy the first ``len(transformer.resblocks)`` blocks of CLIP's text transformer into
    ``transformer`` (CLIP4Clip's initialisation trick). Returns False, changing nothing, where
    the widths or block counts do not fit or the blocks are built differently."""
    blocks = transformer.resblocks
    if text_transformer.width != transformer.width or len(text_transformer.resblocks) < len(blocks):
        return False
    states = [text_transformer.resblocks[i].state_dict() for i in range(len(blocks))]
    before = [{k: v.clone() for k, v in block.state_dict().items()} for block in blocks]
    try:
        for block, state in zip(blocks, states):
            block.load_state_dict(state)
    except RuntimeError:  # a differently built text block (layer scale, custom attention)
        for block, state in zip(blocks, before):
            block.load_state_dict(state)
        return False
    return True


def _key_bias(mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask (B * heads, T, T) that hides padding frames (``mask`` (B, T), True for
    real ones) as keys: 0 for real keys, -inf for padding; a video without real frames attends to
    all of them (no all -inf row)."""
    B, T = mask.shape
    keep = mask.bool()
    keep = keep | ~keep.any(dim=1, keepdim=True)
    bias = torch.zeros(B, T, dtype=dtype, device=mask.device).masked_fill(~keep, float("-inf"))
    return bias[:, None, :].expand(B, T, T).repeat_interleave(heads, dim=0)  # (B*H, T, T)


class TemporalHead(nn.Module, ABC):
    """Turns frame features (B, T, D) into contextualised frame features (B, T, D): the base of
    the head kinds (``MeanP``, ``SeqTransf``, ``SeqLSTM``), which ``build_head`` picks once; each
    kind's ``forward`` is its own.

    Every head records ``kind``, ``dim``, ``layers``, ``num_frames``, ``heads`` and ``input_norm``
    (what a model folder's config.json says of it).

    Args (of every head class):
        dim: feature width D (CLIP's joint embedding width).
        layers: transformer blocks for ``seqTransf``, LSTM layers for ``seqLSTM`` (CLIP4Clip: 1);
            recorded only for ``meanP``.
        num_frames: size of the frame-position table (the most frames a video may have).
        heads: attention heads; default ``max(1, dim // 64)``.
        act_layer: MLP activation of the blocks (CLIP's text tower uses QuickGELU for OpenAI weights).
        input_norm: heads with ``has_input_norm`` only (``seqTransf``). False (CLIP4Clip): the head
            works on the frame features as the image tower gives them. True: each frame feature is
            first layer-normalised (no learned scale) and the frame-position table starts at std
            0.5 instead of 0.01, so the frame order is visible from the first step whatever the
            features' scale. For towers trained from scratch, whose unnormalised features grow to
            a norm of ~100, the CLIP4Clip form leaves position embeddings ~1000x smaller than the
            features, and the head stays blind to frame order (see BENCHMARKS.md, "the tiny demo
            model").
    """

    kind = ""
    has_input_norm = False  # whether ``input_norm=True`` means anything to this kind

    def __init__(self, dim: int, layers: int = 4, num_frames: int = 12, heads: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, input_norm: bool = False):
        super().__init__()
        self.dim, self.layers, self.num_frames, self.input_norm = dim, layers, num_frames, input_norm
        self.heads = heads or max(1, dim // 64)

    @torch.no_grad()
    def init_from_text(self, text_transformer: Transformer, text_pos: torch.Tensor) -> bool:
        """Start from CLIP's text transformer (CLIP4Clip's init) where the head has blocks to start;
        False, changing nothing, for heads without them or where the shapes do not fit."""
        return False

    @abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) frame features and their (B, T) mask -> (B, T, D): each head kind defines it."""


class MeanP(TemporalHead):
    """``meanP``: no parameters, the identity (the model's pooling takes the mean)."""

    kind = "meanP"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


class SeqLSTM(TemporalHead):
    """``seqLSTM``: an LSTM over each video's real frames (packed: padding neither feeds nor follows
    the real ones), zeros at padding positions, plus the residual."""

    kind = "seqLSTM"

    def __init__(self, dim: int, layers: int = 4, num_frames: int = 12, heads: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, input_norm: bool = False):
        super().__init__(dim, layers, num_frames, heads, act_layer, input_norm)
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        lengths = (mask.bool().sum(dim=1) if mask is not None else torch.full((B,), T)).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, D)
        return out.to(x.dtype) + x


class SeqTransf(TemporalHead):
    """``seqTransf``: (optionally layer-normalised) frame features + learned frame-position
    embeddings through a small transformer, plus the residual to the (normalised) features.
    ``norm`` is a parameter-free LayerNorm with ``input_norm``, else ``nn.Identity()``."""

    kind = "seqTransf"
    has_input_norm = True

    def __init__(self, dim: int, layers: int = 4, num_frames: int = 12, heads: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, input_norm: bool = False):
        super().__init__(dim, layers, num_frames, heads, act_layer, input_norm)
        pos_std = 0.5 if input_norm else 0.01
        self.frame_position_embeddings = nn.Parameter(torch.empty(num_frames, dim).normal_(std=pos_std))
        self.transformer = Transformer(dim, layers, self.heads, act_layer=act_layer, batch_first=True)
        # zero mean and unit variance per frame, no learned scale (so no state-dict entry)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if input_norm else nn.Identity()

    @torch.no_grad()
    def init_from_text(self, text_transformer: Transformer, text_pos: torch.Tensor) -> bool:
        """Copy the first blocks and positions of CLIP's text transformer (CLIP4Clip's init).
        Returns False, leaving the random init, where the shapes do not fit."""
        if text_pos.shape[0] < self.num_frames or text_pos.shape[1] != self.dim:
            return False
        if not copy_text_blocks(self.transformer, text_transformer):
            return False
        if not self.input_norm:  # text positions are on the scale of raw features, not normalised ones
            self.frame_position_embeddings.copy_(text_pos[: self.num_frames])
        return True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)  # (B, T, D)
        T = x.shape[1]
        if T > self.num_frames:
            raise ValueError(f"{T} frames given but the seqTransf head has {self.num_frames} frame positions")
        h = x + self.frame_position_embeddings[:T].to(x.dtype)  # (B, T, D)
        attn_mask = None if mask is None else _key_bias(mask, self.heads, x.dtype)
        return self.transformer(h, attn_mask=attn_mask) + x  # residual to the frame features


HEAD_CLASSES: dict[str, type[TemporalHead]] = {cls.kind: cls for cls in (MeanP, SeqTransf, SeqLSTM)}
HEADS = tuple(HEAD_CLASSES)


def build_head(dim: int, kind: str = "seqTransf", layers: int = 4, num_frames: int = 12, heads: int | None = None,
               act_layer: type[nn.Module] = nn.GELU, input_norm: bool = False) -> TemporalHead:
    """The temporal head of ``kind`` (``pretrain.head``: one of ``HEADS``), arguments as
    ``TemporalHead``'s. ``ConfigError`` for an unknown kind, or ``input_norm`` on a kind without it."""
    cls = HEAD_CLASSES.get(kind)
    if cls is None:
        raise ConfigError(f"pretrain.head: unknown temporal head {kind!r}; choose one of {', '.join(HEADS)}")
    if input_norm and not cls.has_input_norm:
        takes = ", ".join(k for k, c in HEAD_CLASSES.items() if c.has_input_norm)
        raise ConfigError(f"pretrain.head_input_norm applies to the {takes} head only, not {kind}; "
                          "set pretrain.head_input_norm=false")
    return cls(dim, layers, num_frames, heads=heads, act_layer=act_layer, input_norm=input_norm)
