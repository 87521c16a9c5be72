"""Typed configuration for stage 1: the sections every `vcap` command reads (``RetrievalConfig``;
``caption.config.Config`` extends it). The loader and the field constraints are
``retrieval_pretrain.foundation.typed_config``'s, re-exported here.

A config file maps one-to-one onto these nested dataclasses; an unknown key is an error listing the
valid ones. Overrides use dotted keys (``pretrain.lr=1e-4``) and YAML values
(``data.split_files.train=a.txt``, ``video.num_frames=8``, ``run.mixed_precision=bf16``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.machine import check_fits_memory, default_workers
from retrieval_pretrain.foundation.typed_config import (  # noqa: F401  (re-exported: the loader is used through this module)
    at_least,
    choice,
    config_to_dict,
    fraction,
    load_config,
    parse_overrides,
    positive,
)
from retrieval_pretrain.reading.data_config import DataConfig, VideoConfig
from retrieval_pretrain.reading.formats import check_format


@dataclass
class ClipConfig:
    """The CLIP backbone. ``kind`` picks the library it comes from
    (``retrieval_pretrain.modeling.parts.build_backbone``):

    * ``open_clip``: an open_clip name + pretrained tag or local checkpoint file, or - with
      ``custom`` set - an open_clip architecture dict (``embed_dim``, ``vision_cfg``,
      ``text_cfg``) built from scratch (the tiny test/demo model).
    * ``xclip``: X-CLIP (transformers ``XCLIPModel``): ``model`` is a Hugging Face name
      (``microsoft/xclip-base-patch32``) or a local folder; ``pretrained: null`` builds its
      architecture with random weights, any other value loads its weights. With ``custom`` set,
      ``XCLIPConfig`` arguments (``projection_dim``, ``text_config``, ``vision_config``, ...)
      built from scratch (``pretrained`` null). X-CLIP brings its own temporal head (the MIT),
      so ``pretrain.head*`` do not apply; ``video.num_frames`` must be its frame count.
    """

    kind: str = choice("open_clip", "open_clip", "xclip")
    # st_mix: each frame's tokens also attend to the previous and next frame's (Open-VCLIP); no new weights
    temporal_attention: str = choice("none", "none", "st_mix")
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    custom: dict[str, Any] | None = None


@dataclass
class InterpolationConfig:
    """Open-VCLIP's interpolated weight optimisation (``retrieval_pretrain.stage1.interpolate``): with
    ``enabled``, each step also takes the loss at ``ratio * base + (1 - ratio) * weights``, ``ratio``
    drawn from U(``low``, ``high``), and adds ``weight`` (lambda) times its gradient (taken at that
    point, as the paper's code). ``base``: a stage-1 model folder, an open_clip checkpoint file of
    the same CLIP, or a pretrained tag of it; empty: the CLIP weights this run started from."""

    enabled: bool = False
    low: float = fraction(0.0)
    high: float = fraction(0.6)
    weight: float = at_least(0.5, 0.0)
    base: str = ""

    def check(self, where: str) -> None:
        if self.low > self.high:
            raise ConfigError(f"{where}.low={self.low} is above {where}.high={self.high}")


@dataclass
class DistillConfig:
    """Momentum distillation (CLIP2TV after ALBEF; ``retrieval_pretrain.modeling.distill``): with
    ``enabled``, an EMA teacher of the whole model (``momentum`` per optimizer step), FIFO queues
    of its last ``queue_size`` video and caption embeddings as extra negatives, and soft targets
    ``alpha * teacher softmax + (1 - alpha) * ground truth``. The defaults are ALBEF's for large
    data; a small dataset needs a queue well under its number of training videos."""

    enabled: bool = False
    momentum: float = fraction(0.995, below_one=True)
    queue_size: int = at_least(65536, 0)
    alpha: float = fraction(0.4)


@dataclass
class SwaConfig:
    """Weight averaging (Open-VCLIP): with ``enabled``, the final model (``RUN/model``) is the mean
    of the weights at the end of each epoch from ``start_epoch`` (counted from 0, as log.jsonl) on;
    the last epoch's own weights go to ``RUN/model_last``."""

    enabled: bool = False
    start_epoch: int = at_least(1, 0)


@dataclass
class PromptConfig:
    """Prompt tuning (Ju et al., ``pretrain.mode=prompt``; ``retrieval_pretrain.modeling.prompt``): ``prefix``
    learnt vectors before and ``suffix`` after every caption's (or label prompt's) words in CLIP's
    text tower, initialised with std 0.01. The paper's 16 + 16 need a caption of at most
    ``context_length - 32`` tokens (``pretrain.max_words``; CLIP's context is 77)."""

    prefix: int = at_least(16, 0)
    suffix: int = at_least(16, 0)


@dataclass
class PretrainConfig:
    """Stage 1: the temporal head and contrastive training (CLIP4Clip's recipe). ``head``,
    ``loss`` and ``mode`` pick stage 1's parts (``retrieval_pretrain.modeling.parts``).

    ``mode``: ``full`` fine-tunes CLIP (except the ``freeze`` prefixes); ``prompt`` is Ju et al.'s
    prompt tuning: CLIP frozen whole, ``prompt`` vectors and the head trained, from frame features
    the frozen image tower computes once per training video (``video.cache_frames`` frames of each,
    when 0: 32, or ``video.num_frames`` if more) instead of decoding every step.

    ``head``: CLIP4Clip's similarity heads - ``meanP``, ``seqLSTM``, ``seqTransf`` (a video
    embedding, scored by a dot product) or ``tightTransf`` (a ``head_layers``-block cross-modal
    transformer over caption tokens and frames scores every pair: ``retrieval_pretrain.modeling.tight_transf``;
    retrieval evaluation then costs one cross-encoder pass per (text, video) pair)."""

    head: str = choice("seqTransf", "meanP", "seqTransf", "seqLSTM", "tightTransf")
    head_layers: int = at_least(4, 1)
    # layer-normalise the features entering seqTransf / tightTransf (towers trained from scratch)
    head_input_norm: bool = False
    loss: str = choice("infonce", "infonce", "kl")
    # full: fine-tune (all but pretrain.freeze); prompt: every CLIP weight frozen, learnt prompt vectors in
    # the text tower + the temporal head, trained from image-tower features computed once per video
    mode: str = choice("full", "full", "prompt")
    max_words: int = at_least(32, 2)
    batch_size: int = at_least(128, 1)
    epochs: int = at_least(5, 1)  # 0 would write the untrained model as if trained
    lr: float = positive(1e-4)
    clip_lr: float = at_least(1e-7, 0.0)
    weight_decay: float = at_least(0.2, 0.0)
    warmup_ratio: float = fraction(0.1)
    grad_accum: int = at_least(1, 1)
    max_grad_norm: float = at_least(1.0, 0.0)
    eval_batch_size: int = at_least(64, 1)
    save_every: int = at_least(500, 0)
    allow_eval_overlap: bool = False
    # Parameter-name prefixes (as ``model.named_parameters()``, e.g. ``clip.token_embedding``,
    # ``clip.visual``) kept fixed while training: smaller optimizer state, faster steps.
    freeze: list[str] = field(default_factory=list)
    # A stage-1 model folder whose weights (every tensor, strictly) start this run instead of the
    # backbone's: fine-tune a caption-trained model on labels (ActionCLIP from a video-text model).
    # Or a Hub id, org/name[@revision] (retrieval_pretrain.foundation.hub).
    init_from: str = ""
    # How many of the newest checkpoints RUN/checkpoints keeps (older ones are removed).
    keep_checkpoints: int = at_least(2, 1)
    interpolation: InterpolationConfig = field(default_factory=InterpolationConfig)
    swa: SwaConfig = field(default_factory=SwaConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def check(self, where: str) -> None:
        if self.swa.enabled and self.swa.start_epoch >= self.epochs:
            raise ConfigError(f"{where}.swa.start_epoch={self.swa.start_epoch}: the run has {self.epochs} epochs "
                              f"(0 to {self.epochs - 1}), so no epoch would be averaged")


@dataclass
class RunConfig:
    """Settings shared by every long job."""

    seed: int = 42
    # auto: bf16 where the hardware computes in bf16 natively (a CPU with AVX512-BF16 or AMX, a GPU
    # with bf16), fp32 elsewhere (accelerate_setup.resolve_precision)
    mixed_precision: str = choice("no", "no", "fp16", "bf16", "auto")
    # stage 1: frames laid out channels-last (NHWC) for the image tower - oneDNN's faster convolutions
    # on CPUs (BENCHMARKS.md, "Demo speed"); the same model, other rounding
    channels_last: bool = False
    num_workers: int = at_least(default_workers(4), 0)  # default: 4, at most the CPUs this process may use
    log_every: int = at_least(10, 1)
    # auto, cpu, cuda (training: pick GPUs with CUDA_VISIBLE_DEVICES or accelerate launch); inference also cuda:N, mps
    device: str = field(default="auto", metadata={"pattern": (r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda, cuda:N or mps")})


@dataclass
class RetrievalConfig:
    """Everything stage 1 reads. The full ``vcap`` config (``caption.config.Config``) extends it."""

    data: DataConfig = field(default_factory=DataConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def check(self, where: str) -> None:
        """Checks when the config is read (a subclass's ``check`` calls this one): ``data.format``
        is a name in the table of formats (``retrieval_pretrain.reading.formats``), which the
        data section cannot check itself (the table imports the readers, which import it)."""
        check_format(self.data.format)


def check_training_choices(cfg: RetrievalConfig) -> None:
    """Choices of different sections that cannot train together (``vcap pretrain`` checks them
    before anything is built: a backbone download, a pass over the videos). Not part of reading a
    config: evaluation, recognition and captioning never use them, so a training YAML still serves."""
    if cfg.video.train_sampling == "fps" and (cfg.video.cache_frames or cfg.pretrain.mode == "prompt"):
        raise ConfigError("video.train_sampling=fps needs each file's own frame rate, so it cannot sample frames "
                          "kept in memory (video.cache_frames > 0, or pretrain.mode=prompt's features); use tsn "
                          "or uniform")
    if cfg.pretrain.mode != "prompt":
        return
    why = {"xclip": ("clip.kind", "X-CLIP prompts its text with each video itself"),
           "tightTransf": ("pretrain.head", "tightTransf reads the caption's token states, not one prompted feature"),
           "st_mix": ("clip.temporal_attention", "st_mix makes a frame's features depend on its neighbours, so "
                      "they cannot be computed once")}
    for value in (cfg.clip.kind, cfg.pretrain.head, cfg.clip.temporal_attention):
        if value in why:
            raise ConfigError(f"pretrain.mode=prompt does not work with {why[value][0]}={value}: {why[value][1]}")
    if cfg.pretrain.interpolation.enabled and not cfg.pretrain.interpolation.base:
        raise ConfigError("pretrain.interpolation with pretrain.mode=prompt: CLIP is frozen, so interpolating "
                          "towards the weights the run started from changes nothing; give "
                          "pretrain.interpolation.base a model folder to interpolate the prompts and head "
                          "towards, or leave interpolation off")


def check_batch_memory(num_frames: int, image_size: int, batch_size: int, batch_key: str,
                       frames_key: str | None = None) -> None:
    """``ConfigError`` before any work when one batch of decoded frames (videos x frames x 3 x size^2
    float32) would take more than half of this machine's memory. ``frames_key``: the setting that
    chose ``num_frames`` (None: a trained model's own, which only ``batch_key`` can offset)."""
    need = batch_size * num_frames * 3 * image_size * image_size * 4
    videos = f"a batch of {batch_size} video{'s' if batch_size != 1 else ''} x {num_frames} frames at {image_size} px"
    if frames_key:
        check_fits_memory(need, f"{frames_key}={num_frames}: {videos} (float32)",
                          settings={frames_key: num_frames, batch_key: batch_size})
    else:
        check_fits_memory(need, f"{batch_key}={batch_size}: {videos} (float32, the model's frame count)",
                          settings={batch_key: batch_size})


def configured_image_size(clip: ClipConfig) -> int:
    """The frame size the configured CLIP reads, known before it is built: a custom architecture's
    ``image_size``; otherwise 224, the smallest a pretrained CLIP reads (so estimates are lower bounds)."""
    custom = clip.custom or {}
    vision = custom.get("vision_cfg") or custom.get("vision_config") or {}
    size = vision.get("image_size", 224) if isinstance(vision, dict) else 224
    size = max(size) if isinstance(size, (list, tuple)) and size else size
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 224
