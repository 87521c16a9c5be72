"""The full ``vcap`` configuration: stage 1's sections plus stage 2's (caption model, decoding).

One file can drive both stages (``data``/``video``/``clip``/``pretrain`` for stage 1,
``caption``/``decode`` for stage 2); every section has the paper's defaults, so a preset names
only what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retrieval_pretrain.config import RetrievalConfig, choice, load_config


@dataclass
class CaptionConfig:
    """Stage 2: the 1-layer encoder + 3-layer decoder caption model and its training.

    Model: ``hidden_size``/``num_heads``/``ffn_size``/``encoder_layers``/``decoder_layers``/
    ``dropout``; ``max_frames`` frame positions; ``max_length`` caption tokens (with BOS/EOS).
    Tokenizer: a sentencepiece model of ``vocab_size`` trained on the training captions, unless
    ``tokenizer`` names an existing ``.model`` file. Training: AdamW with warm-up then linear
    decay, label-smoothed cross-entropy, every (video, caption) pair once per epoch; validation
    loss and CIDEr each epoch on at most ``val_max_videos`` videos (0: all); the epoch kept is the
    best by ``select_by``: ``CIDEr`` (the papers' choice), ``loss`` (val loss: steadier on a small
    val split) or ``last``.
    """

    hidden_size: int = 512
    num_heads: int = 8
    ffn_size: int = 2048
    encoder_layers: int = 1
    decoder_layers: int = 3
    dropout: float = 0.1
    max_frames: int = 32
    max_length: int = 30
    vocab_size: int = 8000
    tokenizer: str | None = None
    batch_size: int = 64
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    eval_batch_size: int = 64
    val_max_videos: int = 0
    select_by: str = choice("CIDEr", "CIDEr", "loss", "last")
    save_every: int = 1000


@dataclass
class DecodeConfig:
    """Caption decoding (transformers' generation): beam search with ``num_beams`` (1: greedy)."""

    num_beams: int = 5
    max_new_tokens: int = 28
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 32


@dataclass
class Config(RetrievalConfig):
    """Every section a ``vcap`` command may read."""

    caption: CaptionConfig = field(default_factory=CaptionConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a ``vcap`` YAML config with ``key=value`` overrides (unknown keys are errors)."""
    return load_config(Config, path, overrides)
