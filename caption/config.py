"""The full ``vcap`` configuration: stage 1's sections plus stage 2's (caption model, decoding).

One file can drive both stages (``data``/``video``/``clip``/``pretrain`` for stage 1,
``caption``/``decode`` for stage 2); every section has the paper's defaults, so a preset names
only what it changes. The caption model's settings and the decoding are the model's own classes
(``decoders.config``): ``caption`` is built on ``CaptionModelSettings`` field for field, and
``decode`` *is* the ``DecodeConfig`` that ``CaptionModel.generate_captions`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from decoders.config import CaptionModelSettings, DecodeConfig
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.stage1.config import RetrievalConfig, at_least, choice, fraction, load_config, positive


@dataclass
class ScstConfig:
    """Self-critical sequence training (``caption.objective=scst``; Rennie et al., CVPR 2017).

    Each step draws ``samples`` captions per video from the model (multinomial at ``temperature``,
    no truncation; 0.5 by default, not Rennie et al.'s 1: a model trained with label smoothing is
    under-confident by design, and on the demo its samples at 1 are mostly broken words - mean
    sample CIDEr 0.2 against 4.0 for its greedy captions - so SCST at 1 lowered greedy CIDEr
    4.00 -> 3.41 in 20 steps where 0.5 raised it to 4.18; BENCHMARKS.md), scores them with the reward (``caption.reward``), and takes the policy
    gradient of ``-(reward - baseline) * log p(caption)``. ``baseline``: ``mean`` - the mean reward
    of the video's *other* samples (Luo 2020, "a better variant of SCST"; no extra decoding) - or
    ``greedy`` - the reward of the model's greedy caption (Rennie et al.; one more decode per
    video). ``max_new_tokens``: the longest sample; 0 means ``decode.max_new_tokens`` (a shorter
    limit cuts samples before their EOS, so SCST would learn never to end a caption). ``caption.batch_size`` counts videos in SCST
    (each with ``samples`` captions), and every training video is visited once per epoch.
    """

    samples: int = at_least(5, 1, 256)
    temperature: float = at_least(0.5, 0.01, 100.0)
    baseline: str = choice("mean", "mean", "greedy")
    max_new_tokens: int = at_least(0, 0)

    def check(self, where: str) -> None:
        if self.baseline == "mean" and self.samples < 2:
            raise ConfigError(f"{where}.baseline=mean needs {where}.samples >= 2 (the mean of the other samples)")


@dataclass
class RewardConfig:
    """SCST's reward per sampled caption: ``cider_weight`` x CIDEr-D against the video's training
    references (document frequencies of the training references, as SCST for COCO does) plus
    ``clip_weight`` x the cosine similarity of the caption and the video under the stage-1 model
    the features came from (its text tower on the caption, its pooled video embedding from the
    cached features; the V2T-similarity reward of CLIP4Caption's follow-ups)."""

    cider_weight: float = at_least(1.0, 0.0)
    clip_weight: float = at_least(0.0, 0.0)

    def check(self, where: str) -> None:
        if self.cider_weight == 0 and self.clip_weight == 0:
            raise ConfigError(f"{where}: cider_weight and clip_weight are both 0: SCST would have no reward")


@dataclass
class CaptionConfig(CaptionModelSettings):
    """Stage 2: the 1-layer encoder + 3-layer decoder caption model and its training.

    Model: the fields of ``decoders.config.CaptionModelSettings``, under the same names (first in
    this section): ``hidden_size``/``num_heads``/``ffn_size``/``encoder_layers``/``decoder_layers``/
    ``dropout``; ``max_frames`` frame positions; ``max_length`` caption tokens (with BOS/EOS);
    ``vocab_size``; ``model_settings()`` hands them to the model. Tokenizer: a sentencepiece model
    of at most ``vocab_size`` pieces trained on the training captions, unless ``tokenizer`` names
    an existing ``.model`` file. Training: AdamW with warm-up then linear
    decay, label-smoothed cross-entropy, every (video, caption) pair once per epoch; validation
    loss and CIDEr each epoch on at most ``val_max_videos`` videos (0: all); the epoch kept is the
    best by ``select_by``: ``CIDEr`` (the papers' choice), ``loss`` (val loss: steadier on a small
    val split) or ``last``. ``objective``: ``xe`` (teacher-forced cross-entropy) or ``scst``
    (self-critical training, usually ``--init-from`` an ``xe`` model; see ``ScstConfig``).
    """

    tokenizer: str | None = None
    batch_size: int = at_least(64, 1)
    epochs: int = at_least(20, 1)
    lr: float = positive(1e-4)
    weight_decay: float = at_least(0.01, 0.0)
    warmup_ratio: float = fraction(0.05)
    label_smoothing: float = fraction(0.1, below_one=True)
    max_grad_norm: float = at_least(1.0, 0.0)
    grad_accum: int = at_least(1, 1)
    eval_batch_size: int = at_least(64, 1)
    val_max_videos: int = at_least(0, 0)
    objective: str = choice("xe", "xe", "scst")
    scst: ScstConfig = field(default_factory=ScstConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    select_by: str = choice("CIDEr", "CIDEr", "loss", "last")
    save_every: int = at_least(1000, 0)

    def check(self, where: str) -> None:
        try:
            super().check(where)  # the model settings (``CaptionModelSettings.check``)
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass
class Config(RetrievalConfig):
    """Every section a ``vcap`` command may read."""

    caption: CaptionConfig = field(default_factory=CaptionConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a ``vcap`` YAML config with ``key=value`` overrides (unknown keys are errors)."""
    return load_config(Config, path, overrides)
