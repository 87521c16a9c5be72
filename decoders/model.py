"""The stage-2 caption model of CLIP4Caption on transformers' BART machinery.

Tang et al., "CLIP4Caption: CLIP for Video Caption", ACM MM 2021: per-frame features from the
stage-1 (CLIP4Clip) video tower go through a linear projection plus frame-position embeddings, a
**1-layer transformer encoder**, and a **3-layer transformer decoder** (causal self-attention and
cross-attention to the encoded frames) whose output layer is tied to the token embeddings.

Instead of writing attention, caching and beam search again, the model *is* a
``BartForConditionalGeneration`` with one extra module in front of the encoder:

    frame_features (B, T, F) -> frame_proj: Linear(F, D) -> BART encoder [learned frame positions,
      LayerNorm, dropout, 1 post-LN layer] -> BART decoder [token + learned positions, 3 layers]
      -> lm_head (tied to the shared token embeddings) + final_logits_bias -> logits (B, L, V)

Choices, and why:

* **Positions**: BART's learned position tables (one for frames, one for tokens), as in UniVL's
  visual embeddings that CLIP4Caption's encoder copies; ``max_position_embeddings`` covers both
  ``max_frames`` and ``max_length``. More frames than that is an error, not a crash.
* **No LayerNorm after the projection**: BART's encoder already normalises
  ``projection + position`` (``layernorm_embedding``) before dropout, which is exactly UniVL's
  ``LayerNorm(Linear(video) + position)``; a second norm would add nothing.
* **Frame features are layer-normalised, then projected to a learned scale**: a non-affine
  ``LayerNorm(feature_dim)`` makes any feature scale unit (CLIP towers' unnormalised outputs have
  norms of ~10-100), and a ``LayerNorm(hidden_size)`` after the projection, with its gain starting at
  ``init_std``, puts projected frames at the scale of the encoder's frame positions and keeps them
  there (its gain learns at the rate the positions do). Without it the projected frames are
  10-100x larger than the positions, ``layernorm_embedding`` keeps mostly their direction, and the
  model is nearly blind to frame order: the decoder's cross-attention averages the frames, so
  "moves left" and "moves right" (the same frames reversed) look alike. Measured on the demo
  (BENCHMARKS.md): reversing the frames changed 4 of 40 captions of a model trained without it.
* Post-LN layers, GELU, no embedding scaling (``scale_embedding=False``), attention dropout equal to
  ``dropout``; BART's ``forced_eos_token_id`` is switched off (a caption ends when the model says so).
* Token ids: PAD 0, BOS 2 (the decoder start token), EOS 3 (the tokenizer's ids).
* ``generate_captions`` builds an explicit ``GenerationConfig`` per call from the ``DecodeConfig``
  it is given, so nothing from the model config leaks into decoding, and the folder holds
  ``config.json`` + ``model.safetensors`` only (``save_pretrained`` drops the
  ``generation_config.json`` transformers would add).

Settings: the model is described by ``decoders.config.CaptionModelSettings`` under the names users
type (``hidden_size``, ``num_heads``, ``max_length`` ...). ``caption_model_config`` is the one
translation into BART's names (``BART_NAMES``: ``d_model``, ``encoder_attention_heads`` ...,
``max_caption_length``); ``config.json`` holds BART's names, as it always has, and
``CaptionModelConfig.settings`` reads them back through the same table.

Losses are not here: ``decoders.loss.caption_loss`` computes label-smoothed cross-entropy from the
logits. ``forward(labels=...)`` still returns BART's plain cross-entropy over non-pad labels, for
convenience.

    model = CaptionModel(caption_model_config(CaptionModelSettings(vocab_size=8000), feature_dim=512))
    logits = model(frame_features=x, frame_mask=m, decoder_input_ids=ids).logits   # (B, L, V)
    tokens = model.generate_captions(x, m, DecodeConfig(num_beams=5))               # (B, L') no BOS
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

from decoders.config import CaptionModelSettings, DecodeConfig

# Each caption model setting (``CaptionModelSettings``) -> the ``CaptionModelConfig`` fields it sets;
# a setting not listed keeps its own name there. The one renaming between the names users type and
# BART's: written by ``caption_model_config``, read back by ``CaptionModelConfig.settings``.
BART_NAMES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("d_model",),
    "num_heads": ("encoder_attention_heads", "decoder_attention_heads"),
    "ffn_size": ("encoder_ffn_dim", "decoder_ffn_dim"),
    "dropout": ("dropout", "attention_dropout"),
    "max_length": ("max_caption_length",),  # transformers takes `max_length` for a generation setting
}


class CaptionModelConfig(BartConfig):
    """A ``BartConfig`` with the caption model's extra fields (all stored in ``config.json``); made
    by ``caption_model_config``, described by ``settings``.

    Extra fields:
        feature_dim: width F of the per-frame features from the stage-1 video tower.
        max_frames: the most frames a video may have (size of the frame-position table).
        max_caption_length: the setting ``max_length``: the most caption tokens, BOS and EOS included.
            (Not ``max_length``: transformers treats that name as a generation setting and drops it.)
        video_tower: free-form information about the stage-1 model the features came from.
        decode: the ``DecodeConfig`` validation used, as a mapping (``DecodeConfig.from_saved``).
    """

    model_type = "vcap-caption"

    feature_dim: int = 512
    max_frames: int = 32
    max_caption_length: int = 30
    video_tower: dict | None = None
    decode: dict | None = None
    # BART's defaults changed to the caption model's (see the module docstring).
    vocab_size: int = 8000
    max_position_embeddings: int = 32
    d_model: int | None = 512
    encoder_layers: int | None = 1
    decoder_layers: int | None = 3
    encoder_attention_heads: int | None = 8
    decoder_attention_heads: int | None = 8
    encoder_ffn_dim: int | None = 2048
    decoder_ffn_dim: int | None = 2048
    attention_dropout: float | int | None = 0.1
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 3
    decoder_start_token_id: int | None = 2
    forced_eos_token_id: int | list[int] | None = None


    @property
    def settings(self) -> CaptionModelSettings:
        """The model's settings under the names users type, read through ``BART_NAMES`` (a setting
        this config does not record - a folder written before the setting existed - has its default)."""
        default = CaptionModelSettings()
        return CaptionModelSettings(**{
            f.name: getattr(self, BART_NAMES.get(f.name, (f.name,))[0], getattr(default, f.name))
            for f in dataclasses.fields(CaptionModelSettings)})


def caption_model_config(settings: CaptionModelSettings, feature_dim: int, *, pad_token_id: int = 0,
                         bos_token_id: int = 2, eos_token_id: int = 3, init_std: float = 0.02,
                         video_tower: dict[str, Any] | None = None,
                         decode: DecodeConfig | None = None) -> CaptionModelConfig:
    """The caption model's configuration from its settings: the one translation into BART's names.

    Args:
        settings: the architecture (a section built on ``CaptionModelSettings``, such as a ``vcap``
            config's ``caption``, gives its model settings); a bad one is a ``ValueError``.
        feature_dim: frame feature width F.
        pad_token_id, bos_token_id, eos_token_id: special ids; BOS is the decoder start token.
        init_std: the std of the initial weights (BART's; 0.02).
        video_tower: what the stage-1 model the features came from is (stored as given).
        decode: the decoding validation used (stored as a mapping, ``DecodeConfig.from_saved``).
    """
    settings = settings.model_settings()
    settings.check("settings")
    bart = {name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            for name in BART_NAMES.get(f.name, (f.name,))}
    return CaptionModelConfig(
        **bart, feature_dim=feature_dim, max_position_embeddings=max(settings.max_frames, settings.max_length),
        activation_dropout=0.0, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        decoder_start_token_id=bos_token_id, forced_eos_token_id=None, init_std=init_std, video_tower=video_tower,
        decode=None if decode is None else decode.to_saved())


class CaptionModel(BartForConditionalGeneration):
    """Frame projection + BART (1-layer encoder, 3-layer decoder, tied output layer).

    ``save_pretrained(dir)`` / ``CaptionModel.from_pretrained(dir)`` read and write
    ``config.json`` + ``model.safetensors``.
    """

    config_class = CaptionModelConfig
    config: CaptionModelConfig

    def __init__(self, config: CaptionModelConfig):
        super().__init__(config)
        self.frame_norm = nn.LayerNorm(config.feature_dim, elementwise_affine=False)  # any feature scale -> unit
        self.frame_proj = nn.Linear(config.feature_dim, config.d_model)  # F -> D
        self.frame_scale = nn.LayerNorm(config.d_model)  # projected frames at a learned scale, see _init_weights
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "frame_scale", None):
            # Projected frames start at the frame positions' scale, init_std per dimension (see the
            # module docstring). Only called for weights that are not loaded from a file.
            with torch.no_grad():
                module.weight.fill_(self.config.init_std)
                module.bias.zero_()  # initialise the new module like the rest (normal(0, init_std), zero bias)

    def embed_frames(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Project frame features (B, T, F) to the encoder width (B, T, D); positions are added by
        the encoder."""
        if frame_features.ndim != 3 or frame_features.shape[-1] != self.config.feature_dim:
            raise ValueError(f"frame_features must be (B, T, {self.config.feature_dim}), got "
                             f"{tuple(frame_features.shape)}")
        if frame_features.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{frame_features.shape[1]} frames, but the model has frame positions for "
                             f"{self.config.max_position_embeddings} (max_frames={self.config.max_frames})")
        x = self.frame_norm(frame_features.to(self.frame_proj.weight.dtype))  # (B, T, F), unit scale per frame
        return self.frame_scale(self.frame_proj(x))  # (B, T, D), per-dimension std ~ frame_scale.weight

    def forward(self, frame_features: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.LongTensor | None = None, labels: torch.LongTensor | None = None,
                *, attention_mask: torch.Tensor | None = None, encoder_outputs: Any = None,
                inputs_embeds: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs: Any):
        """Teacher-forced logits for captions given frames (BART's ``Seq2SeqLMOutput``).

        Args:
            frame_features: (B, T, F) float. frame_mask: (B, T) bool/long, True/1 = real frame.
            decoder_input_ids: (B, L) starting with BOS. If None and ``labels`` are given, they are
                ``labels`` shifted right behind BOS (BART's convention).
            labels: (B, L) next tokens; PAD (and -100) positions are ignored by the returned
                ``loss`` (plain CE; training uses ``decoders.loss.caption_loss`` on ``logits``).
            The keyword-only arguments are BART's, used by ``generate`` (``encoder_outputs`` and
            ``attention_mask`` = frame mask). The KV cache travels in ``kwargs`` untouched, under
            whichever name the installed transformers uses (``past_key_values`` before 5.x's
            ``cache``), so this forward works with both.

        Returns:
            ``Seq2SeqLMOutput`` with ``logits`` (B, L, V) (and ``loss`` when ``labels`` are given).
        """
        if frame_features is not None:
            if inputs_embeds is not None or encoder_outputs is not None:
                raise ValueError("give frame_features, or inputs_embeds/encoder_outputs, not both")
            inputs_embeds = self.embed_frames(frame_features)  # (B, T, D)
            if frame_mask is None:
                frame_mask = torch.ones(frame_features.shape[:2], dtype=torch.long, device=frame_features.device)
        if frame_mask is not None:
            attention_mask = frame_mask.to(torch.long)  # (B, T)
        if labels is not None:
            labels = labels.masked_fill(labels == self.config.pad_token_id, -100)  # (B, L)
        return super().forward(
            attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds, labels=labels,
            use_cache=use_cache, **kwargs)

    def _generation_config(self, decode: DecodeConfig, use_cache: bool, scores: bool) -> GenerationConfig:
        c, beams = self.config, decode.num_beams
        return GenerationConfig(
            num_beams=beams, do_sample=False, max_new_tokens=decode.max_new_tokens, min_new_tokens=0,
            length_penalty=decode.length_penalty, no_repeat_ngram_size=decode.no_repeat_ngram_size,
            early_stopping=False, num_return_sequences=1, use_cache=use_cache, bos_token_id=c.bos_token_id,
            eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, decoder_start_token_id=c.decoder_start_token_id,
            return_dict_in_generate=True, output_scores=scores and beams > 1, output_logits=scores and beams == 1,
        )

    @torch.no_grad()
    def generate_captions(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None,
                          decode: DecodeConfig | None = None, *, return_scores: bool = False,
                          use_cache: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Decode captions with transformers' ``generate`` (greedy if ``decode.num_beams`` is 1, else
        beam search).

        Args:
            frame_features: (B, T, F). frame_mask: (B, T), True = real frame (None: all real).
            decode: ``num_beams``, ``max_new_tokens``, ``length_penalty``, ``no_repeat_ngram_size``
                (None: ``DecodeConfig()``'s; its ``batch_size`` is the caller's business).
            return_scores: also return each caption's score (B,).
            use_cache: KV cache (same tokens either way; off only for checks).

        Returns:
            tokens (B, L) long, without the start token: the caption, its EOS (unless it ran out of
            ``max_new_tokens``), then PAD. With ``return_scores``: ``(tokens, scores)``, where a
            score is the one beam search ranks by, also for greedy: the sum over the generated
            tokens, EOS included, of log p(token | prefix) (log-softmax of the logits, before
            no-repeat bans) divided by (number of generated tokens) ** ``decode.length_penalty``.

        ``max_new_tokens`` beyond the decoder's position table (``max_position_embeddings - 1``)
        is lowered to it, with a warning. Call ``model.eval()`` first (dropout is not switched off here).
        """
        decode = DecodeConfig() if decode is None else decode
        limit = self.config.max_position_embeddings - 1  # the decoder's position table holds BOS + limit tokens
        if decode.max_new_tokens > limit:
            warnings.warn(f"max_new_tokens={decode.max_new_tokens} is more than this model's decoder positions "
                          f"allow; decoding at most {limit} tokens (max_length={self.config.settings.max_length})",
                          stacklevel=3)
            decode = dataclasses.replace(decode, max_new_tokens=limit)
        embeds = self.embed_frames(frame_features)  # (B, T, D)
        if frame_mask is None:
            frame_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        out = self.generate(inputs_embeds=embeds, attention_mask=frame_mask.to(torch.long),
                            generation_config=self._generation_config(decode, use_cache, return_scores))
        tokens = self._after_first_eos_to_pad(out.sequences[:, 1:])  # (B, L) without BOS
        if not return_scores:
            return tokens
        if decode.num_beams > 1:
            return tokens, out.sequences_scores.float()  # (B,)
        # Greedy: the same score from the raw logits of each step.
        logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (B, L, V)
        return tokens, self._score(logp, tokens, decode.length_penalty)

    @torch.no_grad()
    def sample_captions(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None,
                        num_samples: int = 5, temperature: float = 1.0, max_new_tokens: int = 28) -> torch.Tensor:
        """``num_samples`` captions per video drawn token by token from softmax(logits / temperature)
        - plain multinomial sampling, no top-k / top-p truncation (SCST's policy).

        Returns tokens (B * num_samples, L) long, without the start token, EOS then PAD, grouped by
        video: rows ``i * num_samples ... (i + 1) * num_samples - 1`` belong to video ``i``. Draws
        from torch's global RNG (so a checkpoint that restores it resumes the same draws).
        """
        max_new_tokens = min(max_new_tokens, self.config.max_position_embeddings - 1)
        embeds = self.embed_frames(frame_features)  # (B, T, D)
        if frame_mask is None:
            frame_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        c = self.config
        gen = GenerationConfig(
            do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_beams=1,
            num_return_sequences=num_samples, max_new_tokens=max_new_tokens, min_new_tokens=0,
            use_cache=True, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
            decoder_start_token_id=c.decoder_start_token_id, return_dict_in_generate=True)
        out = self.generate(inputs_embeds=embeds, attention_mask=frame_mask.to(torch.long), generation_config=gen)
        return self._after_first_eos_to_pad(out.sequences[:, 1:])  # (B * k, L)

    @torch.no_grad()
    def sequence_scores(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None, tokens: torch.Tensor,
                        length_penalty: float = 1.0) -> torch.Tensor:
        """Teacher-forced score (B,) of given captions ``tokens`` (B, L) (no BOS; EOS then PAD, as
        ``generate_captions`` returns them), on the same scale as ``generate_captions``' scores."""
        bos = torch.full_like(tokens[:, :1], self.config.decoder_start_token_id)
        logits = self(frame_features=frame_features, frame_mask=frame_mask,
                      decoder_input_ids=torch.cat([bos, tokens[:, :-1]], dim=1)).logits  # (B, L, V)
        return self._score(logits.float().log_softmax(-1), tokens, length_penalty)

    def _score(self, logp: torch.Tensor, tokens: torch.Tensor, length_penalty: float) -> torch.Tensor:
        """sum log p over the generated tokens up to and including the first EOS, / length ** lp."""
        picked = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, L)
        keep = self._generated_mask(tokens)  # (B, L)
        length = keep.sum(1).float()  # (B,)
        return (picked * keep).sum(1) / length.pow(length_penalty)

    def _generated_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) True for every token up to and including the first EOS (all if there is none)."""
        is_eos = tokens == self.config.eos_token_id
        eos_before = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # an EOS strictly earlier
        return ~eos_before

    def _after_first_eos_to_pad(self, tokens: torch.Tensor) -> torch.Tensor:
        # Beam search fills finished rows with EOS when pad_token_id is 0 (transformers uses
        # ``pad_token_id or eos``), greedy with PAD: make both PAD.
        return tokens.masked_fill(~self._generated_mask(tokens), self.config.pad_token_id)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """``config.json`` + ``model.safetensors`` (decoding settings are given per call, so no
        ``generation_config.json``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        (Path(save_directory) / "generation_config.json").unlink(missing_ok=True)
