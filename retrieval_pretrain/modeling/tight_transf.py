"""CLIP4Clip's ``tightTransf`` similarity (``pretrain.head=tightTransf``): a cross-modal transformer
scores each (text, video) pair.

Luo et al., "CLIP4Clip" (2021), the "tight" similarity type (``_cross_similarity``): a caption's
token features and a video's frame features are concatenated, marked by type embeddings (text vs
video), the frames also by frame-position embeddings, and run through a small transformer
(CLIP4Clip: 4 layers, ``cross_num_hidden_layers``) whose first output token is pooled (LayerNorm,
dense, QuickGELU) and mapped to one logit by a linear layer. The loss is the usual symmetric
cross-entropy over the batch's B x B matrix of these logits.

Choices here, where CLIP4Clip's code leaves room:

* **Text side: every token, projected.** The caption's tokens are CLIP's text-tower outputs after
  ``ln_final`` and ``text_projection`` - the joint embedding space the frame features live in, so
  both modalities enter the cross transformer at one width with no new projection, and the row of
  the end token is exactly CLIP's caption embedding. (CLIP4Clip's released code feeds only that
  end-token row, a one-token "sequence"; the per-token outputs give the cross attention the words.)
  The text tower is causal, so padding after the end token never changes a real token; in the
  cross transformer padding tokens (and padding frames) are masked out as keys.
* **Positions.** Text tokens carry CLIP's own token positions from the text tower; frames get a
  frame-position table, so the frame order is visible. Sequences are ``[tokens..., frames...]``
  and the pooled first token is the caption's start token.
* **Initialisation.** As CLIP4Clip (and this toolkit's ``seqTransf``), the cross transformer's
  blocks start as copies of the first blocks of CLIP's text transformer - and the frame-position
  table as its first positions - where the widths agree (ViT-B/32: 512 = 512); otherwise random.
  The type embeddings, the pooler and the score layer always start random.
* **Temperature.** CLIP4Clip applies none to tightTransf logits; here too the loss takes the
  cross-encoder's logit as is. ``pair_scores`` (the ``PairwiseScorer`` contract: temperature x
  score = logit) divides it by CLIP's temperature, which tightTransf training never changes, so
  ``vcap eval-retrieval --dsl`` re-weights the logits the loss saw.

tightTransf has no per-video embedding. ``encode_frames`` (stage 2's features) gives the image
tower's frame features, and ``encode_video`` / ``encode_text`` give the ``meanP`` embeddings (mean of
normalised frames; CLIP's caption embedding), so ``vcap index`` / ``vcap classify`` still work as
with a meanP model - the fallback, not the cross-encoder's scores.

Padding: the model needs every caption through its end token within ``text_length`` tokens
(``pretrain.max_words``, what the tokenizer guarantees). Each block of pairs is cut to its longest
caption, which changes no score (masked keys) and saves the cross transformer the padding.

This module defines networks only; ``retrieval_pretrain.modeling.parts`` builds them from a config.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import LayerNorm, ResidualAttentionBlock, Transformer
from torch import nn

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.heads import build_head, copy_text_blocks
from retrieval_pretrain.modeling.model import VideoTextModel
from retrieval_pretrain.modeling.spec import ModelSpec


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on ``x`` (P, N, D) with key mask ``keep``
    (P, 1, 1, N) bool, True for keys to attend to - equal to ``block(x, attn_mask=...)`` with the
    mask spelt out as (P * heads, N, N), without building that mask: at evaluation time P is
    thousands of pairs, and the (P * heads, N, N) float mask nn.MultiheadAttention needs would
    outweigh the activations. Uses the block's own weights (so they stay interchangeable with
    CLIP's text blocks)."""
    attn = block.attn
    P, N, D = x.shape
    H = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (P, N, 3D)
    q, k, v = qkv.view(P, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (P, H, N, D/H)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (P, H, N, D/H)
    x = x + block.ls_1(attn.out_proj(o.transpose(1, 2).reshape(P, N, D)))  # (P, N, D)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class CrossEncoder(nn.Module):
    """CLIP4Clip's cross transformer: ``(tokens, frames) -> one logit`` per pair.

    Args:
        dim: feature width D of both inputs (CLIP's joint embedding width).
        layers: transformer blocks (CLIP4Clip: 4).
        num_frames: size of the frame-position table (the most frames a video may have).
        heads: attention heads; default ``max(1, dim // 64)``.
        act_layer: MLP and pooler activation (CLIP's text tower uses QuickGELU for OpenAI weights).
        input_norm: False (CLIP4Clip): the features enter as the towers give them; type and frame
            embeddings start at std 0.02 / 0.01. True: both inputs are first layer-normalised (no
            learned scale) and the embeddings start at std 0.5, so type and order are visible from
            the first step whatever the features' scale (towers trained from scratch; see
            ``heads.TemporalHead``).
    """

    def __init__(self, dim: int, layers: int = 4, num_frames: int = 12, heads: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, input_norm: bool = False):
        super().__init__()
        self.dim, self.layers, self.num_frames, self.input_norm = dim, layers, num_frames, input_norm
        self.heads = heads or max(1, dim // 64)
        if dim % self.heads:
            raise ConfigError(f"pretrain.head=tightTransf: width {dim} is not divisible by {self.heads} heads")
        self.type_embeddings = nn.Parameter(torch.empty(2, dim).normal_(std=0.5 if input_norm else 0.02))  # text, video
        pos_std = 0.5 if input_norm else 0.01
        self.frame_position_embeddings = nn.Parameter(torch.empty(num_frames, dim).normal_(std=pos_std))
        self.transformer = Transformer(dim, layers, self.heads, act_layer=act_layer, batch_first=True)
        self.ln_pool = LayerNorm(dim)
        self.pool_dense = nn.Linear(dim, dim)
        self.pool_act = act_layer()
        self.score = nn.Linear(dim, 1)

    @torch.no_grad()
    def init_from_text(self, text_transformer: Transformer, text_pos: torch.Tensor) -> bool:
        """Copy the first blocks (and, without ``input_norm``, positions) of CLIP's text transformer
        (CLIP4Clip's initialisation of its cross encoder). False, leaving the random init, where
        the shapes do not fit."""
        if text_pos.shape[0] < self.num_frames or text_pos.shape[1] != self.dim:
            return False
        if not copy_text_blocks(self.transformer, text_transformer):
            return False
        if not self.input_norm:
            self.frame_position_embeddings.copy_(text_pos[: self.num_frames])
        return True

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, frames: torch.Tensor,
                frame_mask: torch.Tensor) -> torch.Tensor:
        """Logits of P pairs.

        Args:
            text: (P, S, D) token features; text_mask: (P, S) bool, True for real tokens (the
                first, pooled, token must be real).
            frames: (P, T, D) frame features; frame_mask: (P, T) bool, True for real frames.
        Returns:
            (P,) one logit per pair.
        """
        T = frames.shape[1]
        if T > self.num_frames:
            raise ValueError(f"{T} frames given but the tightTransf head has {self.num_frames} frame positions")
        if self.input_norm:
            text = F.layer_norm(text, (self.dim,))
            frames = F.layer_norm(frames, (self.dim,))
        types = self.type_embeddings.to(text.dtype)
        x = torch.cat([text + types[0], frames + self.frame_position_embeddings[:T].to(frames.dtype) + types[1]],
                      dim=1)  # (P, S + T, D)
        keep = torch.cat([text_mask, frame_mask], dim=1)[:, None, None, :]  # (P, 1, 1, S + T)
        for block in self.transformer.resblocks:
            x = block_forward(block, x, keep)
        pooled = self.pool_act(self.pool_dense(self.ln_pool(x[:, 0])))  # (P, D) the start token
        return self.score(pooled).squeeze(-1)  # (P,)


def _text_owner(clip: nn.Module) -> nn.Module:
    """The module holding CLIP's text tower (``CLIP`` keeps it flat, ``CustomTextCLIP`` under ``.text``)."""
    return clip.text if hasattr(clip, "text") else clip


def check_text_tower(clip: nn.Module) -> None:
    """``ConfigError`` unless CLIP's text tower is one whose per-token outputs tightTransf can read:
    open_clip's causal transformer with argmax (end-token) pooling and no class embedding."""
    owner = _text_owner(clip)
    fits = (all(isinstance(getattr(owner, n, None), nn.Module) for n in ("token_embedding", "transformer", "ln_final"))
            and isinstance(getattr(owner, "positional_embedding", None), torch.Tensor)
            and getattr(owner, "attn_mask", None) is not None and getattr(owner, "cls_emb", None) is None
            and getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax")) == "argmax")
    if not fits:
        raise ConfigError("pretrain.head=tightTransf needs open_clip's causal CLIP text tower (argmax pooling, no "
                          "class embedding) to read per-token features; this backbone's text tower is another kind")


def text_token_features(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower up to, not including, the pooling: every token's output after ``ln_final``
    and ``text_projection``. (B, L) ids -> (B, L, D); row ``argmax(ids)`` (the end token) is exactly
    ``clip.encode_text``. ``L`` may be shorter than the context length (the tower is causal)."""
    owner = _text_owner(clip)
    L = tokens.shape[1]
    cast = owner.transformer.get_cast_dtype()
    x = owner.token_embedding(tokens).to(cast) + owner.positional_embedding[:L].to(cast)  # (B, L, W)
    x = owner.ln_final(owner.transformer(x, attn_mask=owner.attn_mask[:L, :L]))  # (B, L, W)
    proj = owner.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (B, L, D)


class TightTransfModel(VideoTextModel):
    """CLIP4Clip with the tightTransf similarity: a ``VideoTextModel`` (image tower per frame, the
    parameter-free meanP head, CLIP's text tower) plus the cross encoder that scores pairs
    (``model.PairwiseScorer``). Parameters are ``clip.*`` (CLIP, at ``pretrain.clip_lr``) and
    ``cross.*`` (new, at ``pretrain.lr``).

    Args:
        clip: an open_clip ``CLIP`` with a causal text tower (``check_text_tower``).
        cross: the ``CrossEncoder`` (its width is CLIP's joint embedding width).
        text_length: caption tokens kept in a text state (``pretrain.max_words``): every caption's
            end token must lie within them.
        image_mean / image_std / spec / head_from_text / frame_layout: as ``VideoTextModel``
            (``head_from_text``: whether the cross encoder started from CLIP's text blocks).
    """

    pairwise = True  # scores come from the cross encoder on each (video, text) pair

    def __init__(self, clip: nn.Module, cross: CrossEncoder, text_length: int,
                 image_mean: Sequence[float] = OPENAI_DATASET_MEAN, image_std: Sequence[float] = OPENAI_DATASET_STD,
                 spec: ModelSpec | None = None, head_from_text: bool = False, frame_layout: Any = None):
        check_text_tower(clip)
        super().__init__(clip, build_head(cross.dim, "meanP", layers=cross.layers, num_frames=cross.num_frames),
                         image_mean=image_mean, image_std=image_std, spec=spec,
                         head_from_text=head_from_text, frame_layout=frame_layout)
        self.cross = cross
        self.text_length = int(text_length)

    @property
    def head_kind(self) -> str:
        return "tightTransf"

    # ------------------------------------------------------------------ states

    def encode_video_state(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What scoring needs of each video: ``{"frames": (B, T, D) the image tower's frame features
        (padding rows zero), "mask": (B, T) 1.0 for real frames, 0.0 for padding}`` (a float, so a
        state survives ``.float()``), and ``"video"`` (B, D), the meanP embedding (what an index
        stores as the video's embedding and ``search --video`` compares)."""
        feats = self.encode_frames(frames, mask)  # (B, T, D): the meanP head passes them through
        real = torch.ones(feats.shape[:2], device=feats.device) if mask is None else mask.to(feats.device)
        return {"video": self.pool(feats, mask), "frames": feats, "mask": real.to(feats.dtype)}

    def encode_text_state(self, tokens: torch.Tensor) -> torch.Tensor:
        """What scoring needs of each caption, one tensor: (B, text_length, D + 1), the projected
        token features in ``[..., :D]`` and the token mask in ``[..., D]`` (1.0 through the end
        token, 0.0 after it)."""
        end = tokens.argmax(dim=-1)  # (B,) the end token (49407) is the largest id
        if bool((end >= self.text_length).any()):
            raise ValueError(f"a caption's end token lies past the model's {self.text_length} caption tokens "
                             "(pretrain.max_words); tokenize with the model's tokenizer")
        S = min(self.text_length, tokens.shape[1])
        feats = text_token_features(self.clip, tokens[:, :S])  # (B, S, D)
        real = torch.arange(S, device=tokens.device)[None, :] <= end[:, None]  # (B, S)
        return torch.cat([feats, real[..., None].to(feats.dtype)], dim=-1)  # (B, S, D + 1)

    # ------------------------------------------------------------------ pairs

    def pair_logits(self, video_state: dict[str, torch.Tensor], text_state: torch.Tensor) -> torch.Tensor:
        """The cross encoder's logit of every (video, text) pair: (B_video, B_text), what the loss takes."""
        frames, fmask = video_state["frames"], video_state["mask"] > 0.5  # (Bv, T, D), (Bv, T)
        tmask = text_state[..., -1] > 0.5  # (Bt, S)
        S = int(tmask.any(dim=0).nonzero().max()) + 1 if bool(tmask.any()) else 1  # the block's longest caption
        text, tmask = text_state[:, :S, :-1], tmask[:, :S]  # (Bt, S, D), (Bt, S)
        Bv, T, D = frames.shape
        Bt = text.shape[0]
        logits = self.cross(text.unsqueeze(0).expand(Bv, -1, -1, -1).reshape(Bv * Bt, S, D),
                            tmask.unsqueeze(0).expand(Bv, -1, -1).reshape(Bv * Bt, S),
                            frames.unsqueeze(1).expand(-1, Bt, -1, -1).reshape(Bv * Bt, T, D),
                            fmask.unsqueeze(1).expand(-1, Bt, -1).reshape(Bv * Bt, T))  # (Bv * Bt,)
        return logits.view(Bv, Bt)

    def temperature(self) -> torch.Tensor:
        """CLIP's temperature, ``exp`` of the log-temperature clamped at 100 (a scalar)."""
        return self.clip.logit_scale.exp().clamp(max=100.0).reshape(())

    def pair_scores(self, video_state: dict[str, torch.Tensor], text_state: torch.Tensor) -> torch.Tensor:
        """(B_video, B_text) ``pair_logits`` divided by the temperature: temperature x score is the
        logit itself (the contract of ``PairwiseScorer``; dual softmax re-weights the logits)."""
        return self.pair_logits(video_state, text_state) / self.temperature().detach()

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": (B, B) the cross encoder's, video rows x text columns, "video": (B, D) and
        "text": (B, D) the meanP embeddings, "logit_scale": ()}`` (the scale is CLIP's, recorded;
        the logits do not use it, as CLIP4Clip's tightTransf)."""
        state = self.encode_video_state(frames, mask)
        text = self.encode_text_state(tokens)  # (B, S, D + 1)
        end = tokens.argmax(dim=-1)  # (B,)
        return {"logits": self.pair_logits(state, text),
                "video": self.pool(state["frames"], mask),
                "text": F.normalize(text[torch.arange(text.shape[0], device=text.device), end, :-1], dim=-1),
                "logit_scale": self.temperature()}
