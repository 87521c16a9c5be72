"""Stage 1 is built from parts, each chosen by a typed config field and built by one ``build_*``
function here (no registry: a new system is a new choice in one of these functions, not a new
branch in the training loop).

| part            | config field     | choices today                         | built by                 |
|-----------------|------------------|---------------------------------------|--------------------------|
| backbone        | ``clip.kind``    | ``open_clip`` (image + text towers);  | ``build_backbone``       |
|                 |                  | ``xclip`` (X-CLIP, its own MIT head)  | ``backbones.build_xclip``|
|                 | ``clip.temporal_attention`` | ``none``, ``st_mix`` (Open-VCLIP) | ``st_mix.enable_st_mix`` |
| temporal head   | ``pretrain.head``| ``meanP``, ``seqTransf``, ``seqLSTM`` | ``build_temporal_head``  |
|                 |                  | ``tightTransf`` (pairwise, CLIP4Clip) | ``build_tight_transf``   |
| loss            | ``pretrain.loss``| ``infonce``, ``kl`` (ActionCLIP)      | ``build_loss``           |
| training mode   | ``pretrain.mode``| ``full`` (+ ``pretrain.freeze``);     | ``build_training_mode``  |
|                 |                  | ``prompt`` (frozen CLIP, text prompts,| ``build_model`` (prompt) |
|                 |                  | cached frame features; Ju et al.)     |                          |

The whole network is described by a ``spec.ModelSpec`` (what the model folder's config.json holds)
and built by ONE function, ``build_model(spec, backbone)``: for training, over the backbone
``build_backbone`` gives, with the spec ``spec_from_config(cfg, backbone)`` makes
(``build_video_text_model(cfg)`` does both); for loading a folder, over a random backbone of
``spec.clip.arch`` whose weights ``model_folder.from_pretrained`` then loads.

The text side is CLIP's text tower inside the backbone. The training loop only ever calls
``loss_fn(model(frames, mask, tokens), tokens)`` and the optimizer over the trainable parameters.
A model whose scores are pairwise (``model.PairwiseScorer``: X-CLIP, tightTransf) returns the batch's
``logits`` and the losses take those instead of the two embeddings.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from typing import Any, Callable, NamedTuple

import torch
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.backbones import (
    BACKBONE_KINDS,
    build_clip,
    build_xclip,
    clip_from_arch,
    resolve_arch,
    text_tower,
    xclip_from_config,
)
from retrieval_pretrain.modeling.clip_tokenizer import check_max_words
from retrieval_pretrain.modeling.heads import TemporalHead, build_head
from retrieval_pretrain.modeling.loss import info_nce, info_nce_scores, kl_matching, kl_matching_scores
from retrieval_pretrain.modeling.model import VideoTextModel
from retrieval_pretrain.modeling.prompt import TextPrompt
from retrieval_pretrain.modeling.spec import ClipSpec, ModelSpec, PromptSpec, TokenizerSpec
from retrieval_pretrain.modeling.st_mix import enable_st_mix
from retrieval_pretrain.modeling.tight_transf import CrossEncoder, TightTransfModel
from retrieval_pretrain.modeling.xclip import XClipVideoTextModel

LOSSES = ("infonce", "kl")
MODES = ("full", "prompt")
# A stage-1 model: CLIP4Clip's (tightTransf's is one too) or X-CLIP's.
StageOneModel = VideoTextModel | XClipVideoTextModel


def _text_parts(clip: nn.Module) -> tuple[nn.Module | None, torch.Tensor | None]:
    """CLIP's text transformer and its position table (``CLIP`` keeps them flat, ``CustomTextCLIP``
    under ``.text``); ``(None, None)`` for text towers without them (e.g. Hugging Face ones)."""
    owner = text_tower(clip)
    transformer = getattr(owner, "transformer", None)
    pos = getattr(owner, "positional_embedding", None)
    if not isinstance(transformer, Transformer) or not isinstance(pos, torch.Tensor):
        return None, None
    return transformer, pos


class Backbone(NamedTuple):
    """A backbone with its weights, as ``build_backbone`` gives it: the module, the image
    normalisation it was trained with, and its tokenizer (``backbones.tokenizer_spec``)."""

    module: nn.Module
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    tokenizer: dict[str, Any]


def build_backbone(cfg: Any) -> Backbone:
    """The backbone of ``cfg.clip`` (``clip.kind``), its weights loaded as configured: an open_clip
    CLIP, or a transformers ``XCLIPModel`` for ``video.num_frames`` frames."""
    if cfg.clip.kind == "open_clip":
        return Backbone(*build_clip(cfg.clip))
    if cfg.clip.kind == "xclip":
        return Backbone(*build_xclip(cfg.clip, cfg.video.num_frames))
    raise ConfigError(f"clip.kind: unknown backbone {cfg.clip.kind!r}; choose one of {', '.join(BACKBONE_KINDS)}")


def _block_style(clip: nn.Module) -> tuple[int, int | None, type[nn.Module]]:
    """``(dim, heads, act)`` for new transformer blocks over ``clip``'s joint embeddings: the width
    of its image tower's output, and the text tower's heads and activation where the text width
    matches (so a copy of its blocks is exact); else the defaults (``dim // 64`` heads, GELU)."""
    dim = getattr(clip.visual, "output_dim", None)
    if dim is None:
        raise ValueError("the CLIP image tower does not say its output width (visual.output_dim)")
    text, _ = _text_parts(clip)
    text_block = text.resblocks[0] if text is not None and len(text.resblocks) else None
    if isinstance(text_block, ResidualAttentionBlock) and text.width == dim:
        return dim, text_block.attn.num_heads, type(text_block.mlp.gelu)  # match the blocks we copy
    return dim, None, nn.GELU


def build_temporal_head(kind: str, layers: int, num_frames: int, clip: nn.Module, input_norm: bool = False,
                        init_from_text: bool = True) -> tuple[TemporalHead, bool]:
    """The temporal head over ``clip``'s frame features, and whether it started as a copy of CLIP's
    text transformer (CLIP4Clip's initialisation trick, where the widths agree). Its blocks use the
    text tower's heads and activation when they match, so the copy is exact."""
    dim, heads, act = _block_style(clip)
    text, text_pos = _text_parts(clip)
    head = build_head(dim, kind, layers, num_frames, heads=heads, act_layer=act, input_norm=input_norm)
    from_text = bool(init_from_text and text is not None and head.init_from_text(text, text_pos))
    return head, from_text


def build_tight_transf(clip: nn.Module, layers: int, num_frames: int, max_words: int, input_norm: bool = False,
                       init_from_text: bool = True, **model_kwargs: Any) -> TightTransfModel:
    """CLIP4Clip's tightTransf model over ``clip``: a ``layers``-block cross encoder, started as a
    copy of CLIP's first text blocks and positions where the widths agree (recorded as
    ``head_from_text``); captions of at most ``max_words`` tokens. ``model_kwargs`` go to the model
    (normalisation, build info, frame layout)."""
    dim, heads, act = _block_style(clip)
    cross = CrossEncoder(dim, layers, num_frames, heads=heads, act_layer=act, input_norm=input_norm)
    text, text_pos = _text_parts(clip)
    from_text = bool(init_from_text and text is not None and cross.init_from_text(text, text_pos))
    return TightTransfModel(clip, cross, max_words, head_from_text=from_text, **model_kwargs)


def check_prompt_fits(max_words: int, prefix: int, suffix: int, context: int, where: str = "") -> None:
    """``ConfigError`` unless a caption of ``max_words`` tokens and the prompts fit ``context`` positions."""
    if max_words + prefix + suffix > context:
        raise ConfigError(f"pretrain.mode=prompt: {where}max_words={max_words} + {where}prompt.prefix={prefix} + "
                          f"{where}prompt.suffix={suffix} exceed the text tower's {context} positions; shorten "
                          f"max_words or the prompts")


def spec_from_config(cfg: Any, backbone: Backbone) -> ModelSpec:
    """What the model ``cfg`` trains is (``clip``, ``pretrain``, ``video``): the spec ``build_model``
    builds over ``backbone`` and the model folder records. Its head starts as a copy of CLIP's text
    blocks where they fit (``head_init_from_text``: the built model records whether it did).
    ``ConfigError`` when captions (and prompts) do not fit the text tower."""
    c, p, clip = cfg.clip, cfg.pretrain, backbone.module
    tok = backbone.tokenizer
    tokenizer = TokenizerSpec(int(tok["context_length"]), tok["type"], dict(tok.get("kwargs") or {}))
    check_max_words(p.max_words, tokenizer.context_length)  # fail now, not in a worker
    common = dict(num_frames=cfg.video.num_frames, image_mean=tuple(backbone.image_mean),
                  image_std=tuple(backbone.image_std), tokenizer=tokenizer, max_words=p.max_words,
                  eval_sampling=cfg.video.eval_sampling)
    if c.kind == "xclip":  # the resolved XCLIPConfig dict, so the folder rebuilds without a download
        arch = clip.config.to_dict()
        vision = arch["vision_config"]
        return ModelSpec(ClipSpec(arch, "xclip", c.model, c.pretrained, copy.deepcopy(c.custom), "none"),
                         head="mit", head_layers=int(vision["mit_num_hidden_layers"]), head_input_norm=False,
                         head_heads=int(vision["mit_num_attention_heads"]), head_init_from_text=False,
                         embed_dim=int(arch["projection_dim"]), image_size=_square(vision["image_size"]),
                         context_length=tokenizer.context_length,
                         image_interpolation="bicubic", image_resize_mode="shortest",  # as XCLIPProcessor
                         **common)
    dim, heads, _ = _block_style(clip)
    context = int(text_tower(clip).context_length)
    prompt = None
    if p.mode == "prompt" and p.head != "tightTransf":  # (tightTransf is refused by check_training_choices)
        check_prompt_fits(p.max_words, p.prompt.prefix, p.prompt.suffix, context, "pretrain.")
        prompt = PromptSpec(p.prompt.prefix, p.prompt.suffix)
    pre = getattr(clip.visual, "preprocess_cfg", {}) or {}
    return ModelSpec(ClipSpec(resolve_arch(c), "open_clip", c.model, c.pretrained, copy.deepcopy(c.custom),
                              c.temporal_attention),
                     head=p.head, head_layers=p.head_layers, head_input_norm=p.head_input_norm,
                     head_heads=heads or max(1, dim // 64), head_init_from_text=True, embed_dim=dim,
                     image_size=_square(clip.visual.image_size), context_length=context,
                     image_interpolation=pre.get("interpolation", "bicubic"),
                     image_resize_mode=pre.get("resize_mode", "shortest"), prompt=prompt, **common)


def _square(size: Any) -> int:
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ConfigError(f"non-square CLIP input {tuple(size)} is not supported")
        size = size[0]
    return int(size)


def build_video_text_model(cfg: Any) -> StageOneModel:
    """The stage-1 model to train for a config with ``.clip``, ``.pretrain`` (head, head_layers,
    max_words, mode) and ``.video``: ``build_model`` over the CLIP ``build_backbone`` gives (its
    weights loaded as configured), described by ``spec_from_config``. For ``clip.kind=xclip`` the
    whole model is X-CLIP's (its MIT is the temporal head; ``pretrain.head*`` do not apply);
    ``pretrain.head=tightTransf`` gives CLIP4Clip's cross-encoder model (pairwise scores)."""
    backbone = build_backbone(cfg)
    return build_model(spec_from_config(cfg, backbone), backbone.module)


def build_model(spec: ModelSpec, backbone: nn.Module | None = None) -> StageOneModel:
    """The stage-1 network ``spec`` describes: the one builder, for training and for loading.

    ``backbone``: when training, the CLIP ``build_backbone`` gave (its weights loaded); the temporal
    head (or tightTransf's cross encoder) then starts as a copy of CLIP's text blocks where they fit
    and ``spec.head_init_from_text``, and the model's ``spec`` records whether it did. None when
    loading a model folder: the backbone of ``spec.clip.arch`` with random weights (never
    downloads), nothing copied - the weights come next, from ``model.safetensors``.

    The model keeps its spec (``model.spec``). ``ValueError`` naming the key when the built network
    is not what ``spec`` says (a hand-edited config.json: another width, head or frame count)."""
    loading = backbone is None
    if loading:
        backbone = xclip_from_config(spec.clip.arch) if spec.is_xclip else clip_from_arch(spec.clip.arch)
    if spec.is_xclip:
        model: StageOneModel = XClipVideoTextModel(backbone, image_mean=spec.image_mean, image_std=spec.image_std)
    else:
        model = _clip4clip_model(spec, backbone, init_from_text=spec.head_init_from_text and not loading)
    if loading and not spec.is_xclip:
        model.head_from_text = spec.head_init_from_text  # how it started, recorded (weights come next)
    check_spec_fits(model, spec)
    model.spec = replace(spec, head_init_from_text=bool(getattr(model, "head_from_text", False)),
                         head_heads=measured_spec(model)["head_heads"])  # filled in where a folder lacks it
    return model


def _clip4clip_model(spec: ModelSpec, clip: nn.Module, init_from_text: bool) -> VideoTextModel:
    """An open_clip model with its temporal head (or tightTransf's cross encoder), st_mix and
    prompts as ``spec`` says."""
    layout = enable_st_mix(clip.visual) if spec.clip.temporal_attention == "st_mix" else None
    kwargs = dict(image_mean=spec.image_mean, image_std=spec.image_std, frame_layout=layout)
    if spec.head == "tightTransf":
        return build_tight_transf(clip, spec.head_layers, spec.num_frames, spec.max_words,
                                  input_norm=spec.head_input_norm, init_from_text=init_from_text, **kwargs)
    prompt = None
    if spec.prompt is not None:  # pretrain.mode=prompt: the learnt vectors (trained, or loaded next)
        owner = text_tower(clip)
        # Drawn before the head: the random stream of a seed gives the same prompts and head as ever.
        prompt = TextPrompt(owner.token_embedding.weight.shape[1], spec.prompt.prefix, spec.prompt.suffix)
    head, from_text = build_temporal_head(spec.head, spec.head_layers, spec.num_frames, clip,
                                          input_norm=spec.head_input_norm, init_from_text=init_from_text)
    return VideoTextModel(clip, head, head_from_text=from_text, prompt=prompt, **kwargs)


def measured_spec(model: StageOneModel) -> dict[str, Any]:
    """The fields of a spec that the network itself fixes, read from ``model``."""
    if isinstance(model, XClipVideoTextModel):
        head = {"head": model.head_kind, "head_layers": model.head_layers, "head_input_norm": False,
                "head_heads": model.head_heads}
    elif isinstance(model, TightTransfModel):
        head = {"head": model.head_kind, "head_layers": model.cross.layers, "head_input_norm": model.cross.input_norm,
                "head_heads": model.cross.heads}
    else:
        head = {"head": model.head_kind, "head_layers": model.head_layers, "head_input_norm": model.head.input_norm,
                "head_heads": model.head.heads}
    prompt = getattr(model, "prompt", None)
    return {**head, "num_frames": model.num_frames, "embed_dim": model.embed_dim, "image_size": model.image_size,
            "context_length": model.context_length, "image_mean": model.image_mean, "image_std": model.image_std,
            "prompt": None if prompt is None else PromptSpec(int(prompt.prefix.shape[0]), int(prompt.suffix.shape[0]))}


def check_spec_fits(model: StageOneModel, spec: ModelSpec) -> None:
    """``ValueError`` naming the first key where ``spec`` contradicts the network ``model`` is
    (``head_heads`` None: not recorded, nothing to compare)."""
    for key, value in measured_spec(model).items():
        said = getattr(spec, key)
        if said != value and not (key == "head_heads" and said is None):
            raise ValueError(f"'{key}' is {_shown(said)}, but the network it describes has {_shown(value)}")


def _shown(value: Any) -> str:
    if isinstance(value, PromptSpec):
        return repr(value.to_json())
    return repr(list(value) if isinstance(value, tuple) else value)


def build_loss(cfg: Any) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """The stage-1 loss of the model's output and the batch's caption tokens (``pretrain.loss``):
    ``infonce`` is CLIP's symmetric InfoNCE over the (global) batch at the model's temperature;
    ``kl`` is ActionCLIP's, where videos whose texts are identical are all positives of each other
    (equal to ``infonce`` when every text of the batch differs). Over the output's ``logits`` when
    the model gives them (pairwise models), else over ``video`` x ``text`` embeddings."""
    if cfg.pretrain.loss == "infonce":
        return lambda out, tokens: (info_nce_scores(out["logits"]) if "logits" in out
                                    else info_nce(out["video"], out["text"], out["logit_scale"]))
    if cfg.pretrain.loss == "kl":
        return lambda out, tokens: (kl_matching_scores(out["logits"], tokens) if "logits" in out
                                    else kl_matching(out["video"], out["text"], out["logit_scale"], tokens))
    raise ConfigError(f"pretrain.loss: unknown loss {cfg.pretrain.loss!r}; choose one of {', '.join(LOSSES)}")


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(clip_params, new_params)``: the CLIP backbone (towers and logit scale) and the layers
    added to it, for separate learning rates: CLIP4Clip's temporal head, or what the model's
    ``new_parameter(name)`` names (X-CLIP: message tokens, MIT, prompt generator). Unwraps
    DDP-style ``.module``."""
    model = getattr(model, "module", model)
    is_new = getattr(model, "new_parameter", None) or (lambda name: not name.startswith("clip."))
    clip_params, new_params = [], []
    for name, p in model.named_parameters():
        (new_params if is_new(name) else clip_params).append(p)
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
            raise ConfigError(f"pretrain.freeze: {prefix!r} matches no parameter of this model; "
                              f"its parameter groups are: {', '.join(groups)}")
    frozen = [p for n, p in named if any(under(n, q) for q in prefixes)]
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def build_training_mode(cfg: Any, model: nn.Module) -> nn.Module:
    """Set which parameters train (``pretrain.mode``): ``full`` fine-tunes everything except the
    ``pretrain.freeze`` prefixes; ``prompt`` freezes all of CLIP (towers, token embedding, logit
    scale), so only the prompt vectors, the head and what ``pretrain.freeze`` leaves of them train.
    Returns the model; ``ConfigError`` when nothing is left to train."""
    if cfg.pretrain.mode not in MODES:
        raise ConfigError(f"pretrain.mode: unknown training mode {cfg.pretrain.mode!r}; choose one of "
                          f"{', '.join(MODES)}")
    frozen = []
    if cfg.pretrain.mode == "prompt":
        if getattr(model, "prompt", None) is None:
            raise ConfigError("pretrain.mode=prompt needs a model built with prompts (build_video_text_model)")
        freeze_parameters(model, ["clip"])
        frozen.append("all of CLIP")
        if cfg.clip.pretrained is None and not cfg.pretrain.init_from:
            print("warning: pretrain.mode=prompt freezes a randomly initialised CLIP (clip.pretrained is null): its "
                  "towers know nothing, so prompts and head have little to work with", file=sys.stderr)
    if cfg.pretrain.freeze:
        freeze_parameters(model, cfg.pretrain.freeze)
        frozen.extend(cfg.pretrain.freeze)
    total = sum(q.numel() for q in model.parameters())
    trained = sum(q.numel() for q in model.parameters() if q.requires_grad)
    if trained == 0:
        raise ConfigError(f"pretrain.mode={cfg.pretrain.mode} with pretrain.freeze={cfg.pretrain.freeze} leaves "
                          f"nothing to train")
    if frozen:
        print(f"stage 1 ({cfg.pretrain.mode}): training {trained:,} of {total:,} parameters; frozen: "
              f"{', '.join(frozen)}", file=sys.stderr)
    return model
