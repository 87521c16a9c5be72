"""CLIP4Clip's video-text model: CLIP's image tower per frame, a temporal head, CLIP's text tower.

Luo et al., "CLIP4Clip: An Empirical Study of CLIP for End to End Video Clip Retrieval" (2021),
the "loose" similarity types, as the first stage of CLIP4Caption (Tang et al., ACM MM 2021):

* ``meanP``: parameter-free; the video is the mean of its frame features.
* ``seqTransf``: frame features + learned frame-position embeddings through a small transformer,
  plus a residual to the frame features, then the mean. As in CLIP4Clip the transformer's blocks
  and the position table start as copies of the first blocks / positions of CLIP's own text
  transformer when the widths agree (CLIP4Clip's "initialization trick"); otherwise they start
  random.

Pooling follows CLIP4Clip's ``_loose_similarity``: each frame feature is L2-normalised, the
normalised features are averaged over the real frames (mask True), and the mean is normalised
again. Padding frames (mask False) are never encoded by the image tower, are excluded from
attention as keys, and are left out of the mean, so their contents can never change an embedding.

This module defines networks only; building backbones and reading/writing model folders is
``retrieval_pretrain.hub``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn

HEADS = ("meanP", "seqTransf")


def _text_parts(clip: nn.Module) -> tuple[nn.Module | None, torch.Tensor | None]:
    """CLIP's text transformer and its position table (``CLIP`` keeps them flat, ``CustomTextCLIP``
    under ``.text``); ``(None, None)`` for text towers without them (e.g. Hugging Face ones)."""
    owner = clip.text if hasattr(clip, "text") else clip
    transformer = getattr(owner, "transformer", None)
    pos = getattr(owner, "positional_embedding", None)
    if not isinstance(transformer, Transformer) or not isinstance(pos, torch.Tensor):
        return None, None
    return transformer, pos


class TemporalHead(nn.Module):
    """Turns frame features (B, T, D) into contextualised frame features (B, T, D).

    Args:
        dim: feature width D (CLIP's joint embedding width).
        kind: ``meanP`` (identity) or ``seqTransf`` (position embeddings + transformer + residual).
        layers: transformer blocks for ``seqTransf``.
        num_frames: size of the frame-position table (the most frames a video may have).
        heads: attention heads; default ``max(1, dim // 64)``.
        act_layer: MLP activation of the blocks (CLIP's text tower uses QuickGELU for OpenAI weights).
        input_norm: ``seqTransf`` only. False (CLIP4Clip): the head works on the frame features as
            the image tower gives them. True: each frame feature is first layer-normalised (no
            learned scale) and the frame-position table starts at std 0.5 instead of 0.01, so
            the frame order is visible from the first step whatever the features' scale. For
            towers trained from scratch, whose unnormalised features grow to a norm of ~100,
            the CLIP4Clip form leaves position embeddings ~1000x smaller than the features, and
            the head stays blind to frame order (see BENCHMARKS.md, "the tiny demo model").
    """

    def __init__(self, dim: int, kind: str = "seqTransf", layers: int = 4, num_frames: int = 12,
                 heads: int | None = None, act_layer: type[nn.Module] = nn.GELU, input_norm: bool = False):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown temporal head {kind!r}; choose one of {', '.join(HEADS)}")
        if input_norm and kind != "seqTransf":
            raise ValueError("input_norm applies to the seqTransf head only (meanP has no parameters)")
        self.kind, self.dim, self.num_frames, self.input_norm = kind, dim, num_frames, input_norm
        self.heads = heads or max(1, dim // 64)
        if kind == "seqTransf":
            pos_std = 0.5 if input_norm else 0.01
            self.frame_position_embeddings = nn.Parameter(torch.empty(num_frames, dim).normal_(std=pos_std))
            self.transformer = Transformer(dim, layers, self.heads, act_layer=act_layer, batch_first=True)
        else:  # meanP has no parameters: the head is the identity
            self.frame_position_embeddings = None
            self.transformer = None

    @torch.no_grad()
    def init_from_text(self, text_transformer: Transformer, text_pos: torch.Tensor) -> bool:
        """Copy the first blocks and positions of CLIP's text transformer (CLIP4Clip's init).
        Returns False, leaving the random init, where the shapes do not fit."""
        if self.transformer is None:
            return False
        blocks = self.transformer.resblocks
        if (text_transformer.width != self.dim or len(text_transformer.resblocks) < len(blocks)
                or text_pos.shape[0] < self.num_frames or text_pos.shape[1] != self.dim):
            return False
        states = [text_transformer.resblocks[i].state_dict() for i in range(len(blocks))]
        try:
            for block, state in zip(blocks, states):
                block.load_state_dict(state)
        except RuntimeError:  # a differently built text block (layer scale, custom attention)
            return False
        if not self.input_norm:  # text positions are on the scale of raw features, not normalised ones
            self.frame_position_embeddings.copy_(text_pos[: self.num_frames])
        return True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.transformer is None:  # meanP
            return x
        if self.input_norm:
            x = F.layer_norm(x, (x.shape[-1],))  # (B, T, D), zero mean and unit variance per frame
        B, T, D = x.shape
        if T > self.num_frames:
            raise ValueError(f"{T} frames given but the seqTransf head has {self.num_frames} frame positions")
        h = x + self.frame_position_embeddings[:T].to(x.dtype)  # (B, T, D)
        attn_mask = None
        if mask is not None:
            keep = mask.bool()
            keep = keep | ~keep.any(dim=1, keepdim=True)  # a video without real frames: avoid all -inf rows
            bias = torch.zeros(B, T, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
            attn_mask = bias[:, None, :].expand(B, T, T).repeat_interleave(self.heads, dim=0)  # (B*H, T, T)
        return self.transformer(h, attn_mask=attn_mask) + x  # residual to the frame features


class VideoTextModel(nn.Module):
    """CLIP4Clip: frames -> CLIP image tower -> temporal head -> pooled video embedding; captions ->
    CLIP text tower. Embeddings are L2-normalised; ``forward`` also returns CLIP's temperature.

    Args:
        clip: an open_clip ``CLIP`` / ``CustomTextCLIP`` (real weights or randomly initialised).
        head: ``meanP`` or ``seqTransf``.
        head_layers: transformer blocks of ``seqTransf``.
        num_frames: frame positions of ``seqTransf`` (the most frames per video).
        image_mean / image_std: the normalisation CLIP was trained with (carried for preprocessing;
            never used in ``forward``, which takes normalised frames).
        build_info: JSON-able description of how the backbone was built (source, tokenizer), carried
            so ``hub.save_pretrained`` can write it; never read here.
        init_head_from_text: CLIP4Clip's initialisation of ``seqTransf`` from the text transformer.
        head_input_norm: ``TemporalHead``'s ``input_norm`` (off in CLIP4Clip; on for from-scratch towers).
    """

    def __init__(self, clip: nn.Module, head: str = "seqTransf", head_layers: int = 4, num_frames: int = 12,
                 image_mean: Sequence[float] = OPENAI_DATASET_MEAN, image_std: Sequence[float] = OPENAI_DATASET_STD,
                 build_info: dict[str, Any] | None = None, init_head_from_text: bool = True,
                 head_input_norm: bool = False):
        super().__init__()
        self.clip = clip
        dim = getattr(clip.visual, "output_dim", None)
        if dim is None:
            raise ValueError("the CLIP image tower does not say its output width (visual.output_dim)")
        text, text_pos = _text_parts(clip)
        heads, act = None, nn.GELU
        text_block = text.resblocks[0] if text is not None and len(text.resblocks) else None
        if isinstance(text_block, ResidualAttentionBlock) and text.width == dim:
            heads, act = text_block.attn.num_heads, type(text_block.mlp.gelu)  # match the blocks we copy
        self.head = TemporalHead(dim, head, head_layers, num_frames, heads=heads, act_layer=act,
                                 input_norm=head_input_norm)
        self.head_from_text = bool(init_head_from_text and text is not None and self.head.init_from_text(text, text_pos))
        self.head_kind, self.head_layers, self.num_frames = head, head_layers, num_frames
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.build_info = dict(build_info or {})

    # ------------------------------------------------------------------ properties

    @property
    def embed_dim(self) -> int:
        return self.head.dim

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"non-square CLIP input {tuple(size)} is not supported")
            size = size[0]
        return int(size)

    @property
    def context_length(self) -> int:
        owner = self.clip.text if hasattr(self.clip, "text") else self.clip
        return int(owner.context_length)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log-temperature (the raw parameter; ``forward`` returns exp, clamped)."""
        return self.clip.logit_scale

    # ------------------------------------------------------------------ encoders

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame features after the temporal head, before pooling (what stage 2 caches).

        Args:
            frames: (B, T, 3, H, W), already CLIP-normalised.
            mask: (B, T) bool, True for real frames; None means all real. Padding frames are not
                run through the image tower (their features are zeros going into the head).
        Returns:
            (B, T, D), not normalised. Rows of padding frames are meaningless.
        """
        B, T = frames.shape[:2]
        flat = frames.flatten(0, 1)  # (B*T, 3, H, W)
        if mask is None:
            feats = self.clip.encode_image(flat)  # (B*T, D)
        else:
            real = mask.reshape(B * T).bool()
            if bool(real.all()):
                feats = self.clip.encode_image(flat)
            else:
                enc = self.clip.encode_image(flat[real])  # (N_real, D)
                feats = enc.new_zeros(B * T, enc.shape[-1])
                feats[real] = enc
        return self.head(feats.view(B, T, -1), mask)  # (B, T, D)

    def pool(self, seq: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP4Clip's pooling: normalise each frame, mean over real frames, normalise. (B, T, D) -> (B, D)."""
        seq = F.normalize(seq, dim=-1)
        if mask is None:
            return F.normalize(seq.mean(dim=1), dim=-1)
        w = mask.to(seq.dtype).unsqueeze(-1)  # (B, T, 1)
        mean = (seq * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)  # (B, D)
        return F.normalize(mean, dim=-1)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised video embeddings (B, D)."""
        return self.pool(self.encode_frames(frames, mask), mask)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised caption embeddings (B, D) from token ids (B, context_length)."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"video": (B, D), "text": (B, D), "logit_scale": ()}``; the scale is ``exp`` of CLIP's
        learned log-temperature, clamped at 100 as in CLIP."""
        return {
            "video": self.encode_video(frames, mask),
            "text": self.encode_text(tokens),
            "logit_scale": self.clip.logit_scale.exp().clamp(max=100.0).reshape(()),
        }


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(clip_params, new_params)``: the CLIP backbone (towers and logit scale) and the layers
    CLIP4Clip adds (the temporal head), for separate learning rates. Unwraps DDP-style ``.module``."""
    model = getattr(model, "module", model)
    clip_params, new_params = [], []
    for name, p in model.named_parameters():
        (clip_params if name.startswith("clip.") else new_params).append(p)
    return clip_params, new_params


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> int:
    """Keep the parameters whose names start with one of ``prefixes`` fixed (``requires_grad``
    off); returns how many values were frozen. A prefix matching no parameter is an error naming
    the model's top-level parameter groups, so a typo cannot silently train everything."""
    named = list(getattr(model, "module", model).named_parameters())

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    for prefix in prefixes:
        if not any(under(n, prefix) for n, _ in named):
            groups = sorted({".".join(n.split(".")[:2]) for n, _ in named})
            raise ValueError(f"pretrain.freeze: {prefix!r} matches no parameter of this model; "
                             f"its parameter groups are: {', '.join(groups)}")
    frozen = [p for n, p in named if any(under(n, q) for q in prefixes)]
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)
