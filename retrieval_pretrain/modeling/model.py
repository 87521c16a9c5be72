"""CLIP4Clip's video-text model: CLIP's image tower per frame, a temporal head, CLIP's text tower.

Luo et al., "CLIP4Clip: An Empirical Study of CLIP for End to End Video Clip Retrieval" (2021),
as the first stage of CLIP4Caption (Tang et al., ACM MM 2021).

Pooling follows CLIP4Clip's ``_loose_similarity``: each frame feature is L2-normalised, the
normalised features are averaged over the real frames (mask True), and the mean is normalised
again. Padding frames (mask False) are never encoded by the image tower, are excluded from
attention as keys, and are left out of the mean, so their contents can never change an embedding.

Two kinds of stage-1 model share one contract. An *embedding* model (this one) scores a (video,
text) pair by the dot product of two independent embeddings, so each video and caption is
embedded once and the batch's similarity is one matrix product. A *pairwise* model
(``PairwiseScorer``: X-CLIP, whose caption embedding is prompted by each video) scores each pair
with a function of both; its ``forward`` returns the batch's logits and retrieval evaluation
scores every (video, text) pair from states encoded once per video and per caption.

This module defines networks only; ``retrieval_pretrain.modeling.parts`` builds them from a config and
``retrieval_pretrain.modeling.model_folder`` reads and writes model folders.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from retrieval_pretrain.modeling.backbones import text_tower
from retrieval_pretrain.modeling.heads import TemporalHead
from retrieval_pretrain.modeling.spec import ModelSpec


@runtime_checkable
class PairwiseScorer(Protocol):
    """The pairwise-score capability of a stage-1 model (``pairwise = True``), beside the usual
    ``encode_frames`` / ``pool`` / ``encode_video`` / ``encode_text``:

    * ``encode_video_state(frames, mask) -> dict[str, Tensor]``: what scoring needs of each video,
      every tensor with the batch as its first dimension (so states can be cached per video and
      stacked again), including ``"video"``, the pooled normalised embedding (what ``vcap index``
      stores as the index's embedding and ``vcap search --video`` compares by cosine);
    * ``encode_text_state(tokens) -> Tensor``: what scoring needs of each caption, (B, ...);
    * ``pair_scores(video_state, text_state) -> Tensor``: (B_video, B_text) similarity of every
      pair of the two batches, on the scale of a cosine (the temperature is applied by ``forward``);
    * ``forward(frames, mask, tokens)`` returns ``"logits"`` (B, B), video rows and text columns
      with matching pairs on the diagonal, which the loss uses instead of ``"video"`` / ``"text"``.
    """

    pairwise: bool

    def encode_video_state(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]: ...

    def encode_text_state(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def pair_scores(self, video_state: dict[str, torch.Tensor], text_state: torch.Tensor) -> torch.Tensor: ...


def scores_pairwise(model: Any) -> bool:
    """Whether ``model`` (or the model inside an Accelerate/DDP wrapper) scores pairs itself
    (``PairwiseScorer``) rather than by a dot product of its embeddings."""
    return bool(getattr(getattr(model, "module", model), "pairwise", False))


class VideoTextModel(nn.Module):
    """CLIP4Clip: frames -> CLIP image tower -> temporal head -> pooled video embedding; captions ->
    CLIP text tower. Embeddings are L2-normalised; ``forward`` also returns CLIP's temperature.

    The parts are built outside (``retrieval_pretrain.modeling.parts``) and handed in.

    Args:
        clip: an open_clip ``CLIP`` / ``CustomTextCLIP`` (real weights or randomly initialised):
            its image tower encodes frames, its text tower captions, its ``logit_scale`` is the
            temperature.
        head: the temporal head (``heads.TemporalHead``).
        image_mean / image_std: the normalisation CLIP was trained with (carried for preprocessing;
            never used in ``forward``, which takes normalised frames).
        spec: the ``spec.ModelSpec`` describing the whole model (``parts.build_model`` sets it), which
            ``model_folder.save_pretrained`` writes; never read here. None for a model built by hand.
        head_from_text: whether the head started as a copy of CLIP's text transformer (recorded).
        prompt: learnt prompt vectors around every caption in the text tower
            (``prompt.TextPrompt``, ``pretrain.mode=prompt``), or None for plain captions.
    """

    pairwise = False  # an embedding model: a pair's score is the dot product of its embeddings

    def __init__(self, clip: nn.Module, head: TemporalHead, image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
                 image_std: Sequence[float] = OPENAI_DATASET_STD, spec: ModelSpec | None = None,
                 head_from_text: bool = False, frame_layout: Any = None, prompt: nn.Module | None = None):
        super().__init__()
        self.clip = clip
        self.prompt = prompt
        self.frame_layout = frame_layout  # st_mix: tells the image tower which frames are neighbours
        self.head = head
        self.head_from_text = head_from_text
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.spec = spec

    # ------------------------------------------------------------------ properties

    @property
    def head_kind(self) -> str:
        return self.head.kind

    @property
    def head_layers(self) -> int:
        return self.head.layers

    @property
    def num_frames(self) -> int:
        return self.head.num_frames

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
        return int(text_tower(self.clip).context_length)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log-temperature (the raw parameter; ``forward`` returns exp, clamped)."""
        return self.clip.logit_scale

    # ------------------------------------------------------------------ encoders

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame features after the temporal head, before pooling (what stage 2 caches).

        Args:
            frames: (B, T, 3, H, W), already CLIP-normalised; or (B, T, D), the image tower's
                features of those frames, computed before (prompt mode's feature cache), which go
                straight to the head.
            mask: (B, T) bool, True for real frames; None means all real. Padding frames are not
                run through the image tower (their features are zeros going into the head).
        Returns:
            (B, T, D), not normalised. Rows of padding frames are meaningless.
        """
        if frames.dim() == 3:  # image-tower features already
            feats = frames if mask is None else frames * mask.unsqueeze(-1).to(frames.dtype)
            return self.head(feats, mask)
        B, T = frames.shape[:2]
        flat = frames.flatten(0, 1)  # (B*T, 3, H, W)
        real = torch.ones(B * T, dtype=torch.bool, device=frames.device) if mask is None else mask.reshape(B * T).bool()
        if bool(real.all()):
            feats = self._encode_image(flat, torch.full((B,), T))  # (B*T, D)
        else:
            enc = self._encode_image(flat[real], real.view(B, T).sum(dim=1).cpu())  # (N_real, D)
            feats = enc.new_zeros(B * T, enc.shape[-1])
            feats[real] = enc
        return self.head(feats.view(B, T, -1), mask)  # (B, T, D)

    def _encode_image(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The image tower on frames whose videos have ``lengths`` consecutive rows each."""
        if self.frame_layout is None:
            return self.clip.encode_image(frames)
        with self.frame_layout.videos(lengths.long()):
            return self.clip.encode_image(frames)

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
        """L2-normalised caption embeddings (B, D) from token ids (B, context_length), through the
        learnt prompts when the model has them."""
        feats = self.clip.encode_text(tokens) if self.prompt is None else self.prompt.encode(self.clip, tokens)
        return F.normalize(feats, dim=-1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"video": (B, D), "text": (B, D), "logit_scale": ()}``; the scale is ``exp`` of CLIP's
        learned log-temperature, clamped at 100 as in CLIP."""
        return {
            "video": self.encode_video(frames, mask),
            "text": self.encode_text(tokens),
            "logit_scale": self.clip.logit_scale.exp().clamp(max=100.0).reshape(()),
        }
