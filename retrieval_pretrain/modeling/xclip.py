"""X-CLIP as a stage-1 video-text model (``clip.kind=xclip``): transformers' ``XCLIPModel``, used as is.

Ni et al., "Expanding Language-Image Pretrained Models for General Video Recognition" (ECCV 2022).
All three of X-CLIP's parts run, through the library's own modules:

* cross-frame communication: in every block of ``XCLIPModel.vision_model`` each frame's class token
  becomes a message token; the video's T messages attend to each other and join their frame's
  tokens for that block's attention;
* the multi-frame integration transformer (``XCLIPModel.mit``): frame positions, a transformer and
  a residual over the T projected frame embeddings, then the mean - the video embedding, exactly
  what ``XCLIPModel.get_video_features`` returns;
* the video-specific prompt generator (``XCLIPModel.prompts_generator``): each caption's embedding
  cross-attends to the video's patch tokens (averaged over frames) and is shifted by the result.

The last part makes X-CLIP's similarity *pairwise*: a caption's embedding depends on the video it
is compared with, so the score of a (video, text) pair is not a dot product of two independent
embeddings. The model therefore offers the pairwise capability (``model.PairwiseScorer``):
``encode_video_state`` / ``encode_text_state`` encode each side once, ``pair_scores`` scores every
pair of two batches (the prompt generator runs per pair), and ``forward`` returns the batch's
logits ``(B_video, B_text)`` for the loss. ``encode_video`` / ``encode_text`` still give X-CLIP's
prompt-free embeddings (``get_video_features`` / ``get_text_features``) for dot-product uses.

Frame count and padding. X-CLIP's message attention groups rows by ``vision_config.num_frames``
and the MIT's position table has exactly that many rows, so every video is fed as exactly T
frames. A video with fewer real frames (mask False at the end: a clip shorter than T frames, or
``fps`` sampling of a short clip) is spread uniformly over the T positions - position t shows
real frame ``floor((t + 0.5) * L / T)`` of its L real frames, the test-time sampling X-CLIP's
own (mmaction) pipeline uses for short videos. The contents of padding frames are never read, so
no zero or other filler frame ever reaches the tower; a fully real clip is fed unchanged.

This module defines the network only; ``retrieval_pretrain.modeling.backbones`` loads X-CLIP weights and
``retrieval_pretrain.modeling.model_folder`` reads and writes model folders.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from transformers import XCLIPModel

from retrieval_pretrain.modeling.spec import ModelSpec

# Parameter-name parts of the modules X-CLIP adds to CLIP (the VideoX recipe trains them at 10x
# CLIP's learning rate): message tokens, the MIT, and the prompt generator with its visual input.
NEW_MODULE_KEYS = ("message_", ".mit.", ".prompts_")


def spread_real_frames(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How a video's L real frames fill its T positions (see the module docstring).

    Args:
        mask: (B, T) bool, True for real frames (in temporal order).
    Returns:
        ``(source, slots, shown)``, each (B, T) long:
        ``source[b, t]``: the input position whose frame clip position t shows;
        ``slots[b]``: the input's real positions in order, then its padding positions;
        ``shown[b]``: the clip positions showing each real frame for the first time (in order),
        then the clip positions that repeat one. ``out[b, slots[b, i]] = seq[b, shown[b, i]]``
        puts each real frame's feature at its own position (``encode_frames``).
    A fully real mask gives the identity for all three.
    """
    B, T = mask.shape
    slots = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)  # (B, T)
    n_real = mask.sum(dim=1).clamp(min=1)  # (B,)
    t = torch.arange(T, device=mask.device)
    k = ((2 * t + 1)[None, :] * n_real[:, None]) // (2 * T)  # (B, T) real frame shown at t, non-decreasing
    source = slots.gather(1, k)  # (B, T)
    first = torch.ones_like(mask)
    first[:, 1:] = k[:, 1:] != k[:, :-1]  # (B, T) first showing of its real frame
    shown = torch.argsort((~first).to(torch.int32), dim=1, stable=True)  # (B, T)
    return source, slots, shown


def text_attention_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) 1 up to and including each caption's end token, 0 after it: the mask Hugging Face's
    CLIP tokenizer gives. Not ``tokens != 0``: the toolkit's BPE pads with 0, but 0 is also the
    id of "!" inside a word (``"great!~"``), which that test would hide. The end token (49407) is
    the largest id, so its position is the argmax, as X-CLIP's text model pools."""
    eos = tokens.argmax(dim=-1, keepdim=True)  # (B, 1)
    return (torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= eos).long()


class XClipVideoTextModel(nn.Module):
    """X-CLIP wrapped to the stage-1 model contract (``model.VideoTextModel``'s methods) plus the
    pairwise capability (``model.PairwiseScorer``).

    Args:
        xclip: a transformers ``XCLIPModel`` (pretrained or randomly initialised); kept as
            ``self.clip``, so its parameters are named ``clip.*`` (e.g. ``clip.text_model`` for
            ``pretrain.freeze``).
        image_mean / image_std: the normalisation X-CLIP was trained with (CLIP's OpenAI values, as
            ``XCLIPProcessor``); carried for preprocessing, never used in ``forward``.
        spec: the ``spec.ModelSpec`` describing the model (``parts.build_model`` sets it), for the model folder.
    """

    pairwise = True  # scores depend on the (video, text) pair: see model.PairwiseScorer

    def __init__(self, xclip: XCLIPModel, image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
                 image_std: Sequence[float] = OPENAI_DATASET_STD, spec: ModelSpec | None = None):
        super().__init__()
        self.clip = xclip
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.spec = spec

    # ------------------------------------------------------------------ properties

    @property
    def head_kind(self) -> str:
        return "mit"  # X-CLIP's multi-frame integration transformer is its temporal head

    @property
    def head_layers(self) -> int:
        return int(self.clip.config.vision_config.mit_num_hidden_layers)

    @property
    def head_heads(self) -> int:
        return int(self.clip.config.vision_config.mit_num_attention_heads)

    @property
    def num_frames(self) -> int:
        return int(self.clip.config.vision_config.num_frames)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    @property
    def image_size(self) -> int:
        size = self.clip.config.vision_config.image_size
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"non-square X-CLIP input {tuple(size)} is not supported")
            size = size[0]
        return int(size)

    @property
    def context_length(self) -> int:
        return int(self.clip.config.text_config.max_position_embeddings)

    @property
    def logit_scale(self) -> nn.Parameter:
        """X-CLIP's learned log-temperature (the raw parameter; ``forward`` returns exp, clamped)."""
        return self.clip.logit_scale

    def new_parameter(self, name: str) -> bool:
        """Whether the parameter ``name`` belongs to a module X-CLIP adds to CLIP (trained at
        ``pretrain.lr``; CLIP's own at ``pretrain.clip_lr``)."""
        return any(key in f".{name}" for key in NEW_MODULE_KEYS)

    # ------------------------------------------------------------------ video side

    def _encode_clip(self, frames: torch.Tensor, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The vision side once: per-frame MIT output (B, T, D) in clip order, the prompt
        generator's visual input (B, N_patches, D), and the (slots, shown) of a spread clip."""
        B, T = frames.shape[:2]
        if T != self.num_frames:
            raise ValueError(f"X-CLIP takes exactly {self.num_frames} frames per video "
                             f"(vision_config.num_frames), got {T}")
        spread = None
        if mask is not None and not bool(mask.all()):
            source, slots, shown = spread_real_frames(mask.bool())
            frames = frames[torch.arange(B, device=frames.device)[:, None], source]  # (B, T, 3, H, W)
            spread = (slots, shown)
        x = self.clip
        vision = x.vision_model(pixel_values=frames.flatten(0, 1))  # cross-frame communication inside
        cls = x.visual_projection(vision.pooler_output).view(B, T, -1)  # (B, T, D)
        seq = x.mit(cls).last_hidden_state  # (B, T, D): positions, transformer, residual
        patches = x.prompts_visual_layernorm(vision.last_hidden_state[:, 1:]) @ x.prompts_visual_projection
        patches = patches.view(B, T, -1, seq.shape[-1]).mean(dim=1)  # (B, N_patches, D)
        return seq, patches, spread

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame features for stage 2: the MIT's output for each frame, (B, T, D), not normalised.

        Taken *after* the MIT, as the toolkit's other towers give their temporal head's output:
        each row has seen the cross-frame messages, the visual projection and the MIT (frame
        position and the other frames), and the mean of the rows is exactly X-CLIP's video
        embedding (``get_video_features``), so the features stage 2 caches and the embedding
        retrieval scores come from one computation.

        Args:
            frames: (B, T, 3, H, W), CLIP-normalised; T must be ``num_frames``.
            mask: (B, T) bool, True for real frames; None means all real. Padding frames' contents
                are never read: the real frames are spread over the T positions.
        Returns:
            (B, T, D). The rows of real frames hold those frames' features (the first position
            showing each); padding rows hold the repeated positions', so every row is meaningful
            and ``pool`` is their plain mean.
        """
        seq, _, spread = self._encode_clip(frames, mask)
        if spread is None:
            return seq
        slots, shown = spread
        D = seq.shape[-1]
        out = torch.empty_like(seq)
        return out.scatter_(1, slots[..., None].expand(-1, -1, D), seq.gather(1, shown[..., None].expand(-1, -1, D)))

    def pool(self, seq: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """X-CLIP's video embedding, L2-normalised: the mean of all T rows of ``encode_frames``
        (the MIT's mean pooling; with a spread clip every row is a real frame's). (B, T, D) -> (B, D)."""
        return F.normalize(seq.mean(dim=1), dim=-1)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised video embeddings (B, D): ``get_video_features``, normalised."""
        return self.pool(self.encode_frames(frames, mask))

    def encode_video_state(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What ``pair_scores`` needs of each video: ``{"video": (B, D) normalised embedding,
        "patches": (B, N_patches, D) the prompt generator's visual input}``."""
        seq, patches, _ = self._encode_clip(frames, mask)
        return {"video": F.normalize(seq.mean(dim=1), dim=-1), "patches": patches}

    # ------------------------------------------------------------------ text side and pairs

    def encode_text_state(self, tokens: torch.Tensor) -> torch.Tensor:
        """X-CLIP's projected caption features before any prompt (``get_text_features``), not
        normalised: the prompt generator's input. (B, context_length) ids -> (B, D)."""
        return self.clip.get_text_features(input_ids=tokens, attention_mask=text_attention_mask(tokens)).pooler_output

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised prompt-free caption embeddings (B, D)."""
        return F.normalize(self.encode_text_state(tokens), dim=-1)

    def pair_scores(self, video_state: dict[str, torch.Tensor], text_state: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every (video, text) pair, the text prompted by that video:
        (B_video, B_text), unscaled (``forward`` multiplies by the temperature)."""
        video, patches = video_state["video"], video_state["patches"]  # (Bv, D), (Bv, N, D)
        text = text_state.unsqueeze(0).expand(video.shape[0], -1, -1)  # (Bv, Bt, D)
        text = F.normalize(text + self.clip.prompts_generator(text, patches), dim=-1)  # (Bv, Bt, D)
        return torch.einsum("bd,bkd->bk", video, text)  # (Bv, Bt)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": (B, B) video rows x text columns, "video": (B, D), "text": (B, D) prompt-free,
        "logit_scale": ()}``; the loss reads ``logits`` (X-CLIP's ``logits_per_video``; the scale
        is ``exp`` of the learned log-temperature, clamped at 100 as in CLIP)."""
        state = self.encode_video_state(frames, mask)
        text = self.encode_text_state(tokens)  # (B, D)
        scale = self.clip.logit_scale.exp().clamp(max=100.0).reshape(())
        return {"logits": scale * self.pair_scores(state, text), "video": state["video"],
                "text": F.normalize(text, dim=-1), "logit_scale": scale}
