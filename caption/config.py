"""The full ``vcap`` configuration: stage 1's sections plus stage 2's (caption model, decoding).

One file can drive both stages (``data``/``video``/``clip``/``pretrain`` for stage 1,
``caption``/``decode`` for stage 2); every section has the paper's defaults, so a preset names
only what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retrieval_pretrain.config import RetrievalConfig, at_least, choice, fraction, load_config, positive
from retrieval_pretrain.errors import ConfigError


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

    hidden_size: int = at_least(512, 1)
    num_heads: int = at_least(8, 1)
    ffn_size: int = at_least(2048, 1)
    encoder_layers: int = at_least(1, 1)
    decoder_layers: int = at_least(3, 1)
    dropout: float = fraction(0.1, below_one=True)
    max_frames: int = at_least(32, 1)
    max_length: int = at_least(30, 3)  # BOS, a token, EOS
    vocab_size: int = at_least(8000, 5)  # 4 special ids + 1
    tokenizer: str | None = None
    batch_size: int = at_least(64, 1)
    epochs: int = at_least(20, 0)
    lr: float = positive(1e-4)
    weight_decay: float = at_least(0.01, 0.0)
    warmup_ratio: float = fraction(0.05)
    label_smoothing: float = fraction(0.1, below_one=True)
    max_grad_norm: float = at_least(1.0, 0.0)
    grad_accum: int = at_least(1, 1)
    eval_batch_size: int = at_least(64, 1)
    val_max_videos: int = at_least(0, 0)
    select_by: str = choice("CIDEr", "CIDEr", "loss", "last")
    save_every: int = at_least(1000, 0)

    def check(self, where: str) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{where}.hidden_size={self.hidden_size} is not a multiple of "
                              f"{where}.num_heads={self.num_heads}")


@dataclass
class DecodeConfig:
    """Caption decoding (transformers' generation): beam search with ``num_beams`` (1: greedy)."""

    num_beams: int = at_least(5, 1)
    max_new_tokens: int = at_least(28, 1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = at_least(0, 0)
    batch_size: int = at_least(32, 1)


@dataclass
class Config(RetrievalConfig):
    """Every section a ``vcap`` command may read."""

    caption: CaptionConfig = field(default_factory=CaptionConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a ``vcap`` YAML config with ``key=value`` overrides (unknown keys are errors)."""
    return load_config(Config, path, overrides)
