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
|                 |                  | ``prompt`` (frozen CLIP, text prompts,| ``build_prompt``         |
|                 |                  | cached frame features; Ju et al.)     |                          |

The text side is CLIP's text tower inside the backbone. The training loop only ever calls
``loss_fn(model(frames, mask, tokens), tokens)`` and the optimizer over the trainable parameters.
A model whose scores are pairwise (``model.PairwiseScorer``: X-CLIP, tightTransf) returns the batch's
``logits`` and the losses take those instead of the two embeddings.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Callable

import torch
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn

from retrieval_pretrain.modeling.backbones import BACKBONE_KINDS, build_clip, build_xclip, resolve_arch, text_tower
from retrieval_pretrain.modeling.clip_tokenizer import check_max_words
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.heads import TemporalHead
from retrieval_pretrain.modeling.loss import info_nce, info_nce_scores, kl_matching, kl_matching_scores
from retrieval_pretrain.modeling.model import VideoTextModel
from retrieval_pretrain.modeling.prompt import TextPrompt
from retrieval_pretrain.modeling.st_mix import enable_st_mix
from retrieval_pretrain.modeling.tight_transf import CrossEncoder, TightTransfModel
from retrieval_pretrain.modeling.xclip import XClipVideoTextModel

LOSSES = ("infonce", "kl")
MODES = ("full", "prompt")


def _text_parts(clip: nn.Module) -> tuple[nn.Module | None, torch.Tensor | None]:
    """CLIP's text transformer and its position table (``CLIP`` keeps them flat, ``CustomTextCLIP``
    under ``.text``); ``(None, None)`` for text towers without them (e.g. Hugging Face ones)."""
    owner = text_tower(clip)
    transformer = getattr(owner, "transformer", None)
    pos = getattr(owner, "positional_embedding", None)
    if not isinstance(transformer, Transformer) or not isinstance(pos, torch.Tensor):
        return None, None
    return transformer, pos


def build_backbone(cfg: Any) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], dict[str, Any]]:
    """``(clip, image_mean, image_std, tokenizer_spec)`` for ``cfg.clip`` (``clip.kind``): an
    open_clip CLIP, or a transformers ``XCLIPModel`` for ``video.num_frames`` frames."""
    if cfg.clip.kind == "open_clip":
        return build_clip(cfg.clip)
    if cfg.clip.kind == "xclip":
        return build_xclip(cfg.clip, cfg.video.num_frames)
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
    head = TemporalHead(dim, kind, layers, num_frames, heads=heads, act_layer=act, input_norm=input_norm)
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


def build_prompt(cfg: Any, clip: nn.Module, max_words: int) -> TextPrompt:
    """Prompt tuning's learnt vectors for ``clip``'s text tower (``pretrain.prompt``), refusing
    captions that would leave no room for them. (The towers it cannot prompt - X-CLIP, tightTransf,
    st_mix - are refused before training builds anything: ``config.check_training_choices``.)"""
    p = cfg.pretrain.prompt
    owner = text_tower(clip)
    check_prompt_fits(max_words, p.prefix, p.suffix, int(owner.context_length), "pretrain.")
    return TextPrompt(owner.token_embedding.weight.shape[1], p.prefix, p.suffix)


def check_prompt_fits(max_words: int, prefix: int, suffix: int, context: int, where: str = "") -> None:
    """``ConfigError`` unless a caption of ``max_words`` tokens and the prompts fit ``context`` positions."""
    if max_words + prefix + suffix > context:
        raise ConfigError(f"pretrain.mode=prompt: {where}max_words={max_words} + {where}prompt.prefix={prefix} + "
                          f"{where}prompt.suffix={suffix} exceed the text tower's {context} positions; shorten "
                          f"max_words or the prompts")


def _xclip_info(cfg: Any, xclip: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """What an X-CLIP model folder records of how it was built: the resolved ``XCLIPConfig``
    dict as ``clip.arch``, so the folder rebuilds without a download."""
    return {
        "clip": {"kind": "xclip", "model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                 "custom": copy.deepcopy(cfg.clip.custom), "arch": xclip.config.to_dict(),
                 "temporal_attention": "none"},
        "tokenizer": spec,
        "max_words": cfg.pretrain.max_words,
        "image_interpolation": "bicubic",  # XCLIPProcessor: bicubic resize of the short side, centre crop
        "image_resize_mode": "shortest",
    }


def build_video_text_model(cfg: Any) -> VideoTextModel | TightTransfModel | XClipVideoTextModel:
    """The stage-1 model for a config with ``.clip``, ``.pretrain`` (head, head_layers, max_words)
    and ``.video.num_frames``; CLIP weights as ``build_backbone`` gets them. For ``clip.kind=xclip``
    the whole model is X-CLIP's (its MIT is the temporal head; ``pretrain.head*`` do not apply);
    ``pretrain.head=tightTransf`` gives CLIP4Clip's cross-encoder model (pairwise scores)."""
    clip, mean, std, spec = build_backbone(cfg)
    check_max_words(cfg.pretrain.max_words, spec["context_length"])  # fail now, not in a worker
    if cfg.clip.kind == "xclip":
        return XClipVideoTextModel(clip, image_mean=mean, image_std=std, build_info=_xclip_info(cfg, clip, spec))
    layout = enable_st_mix(clip.visual) if cfg.clip.temporal_attention == "st_mix" else None
    pre = getattr(clip.visual, "preprocess_cfg", {}) or {}
    info = {
        "clip": {"model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                 "custom": copy.deepcopy(cfg.clip.custom), "arch": resolve_arch(cfg.clip),
                 "temporal_attention": cfg.clip.temporal_attention},
        "tokenizer": spec,
        "max_words": cfg.pretrain.max_words,
        "image_interpolation": pre.get("interpolation", "bicubic"),
        "image_resize_mode": pre.get("resize_mode", "shortest"),
    }
    if cfg.pretrain.head == "tightTransf":
        return build_tight_transf(clip, cfg.pretrain.head_layers, cfg.video.num_frames, cfg.pretrain.max_words,
                                  input_norm=cfg.pretrain.head_input_norm, image_mean=mean, image_std=std,
                                  build_info=info, frame_layout=layout)
    prompt = build_prompt(cfg, clip, cfg.pretrain.max_words) if cfg.pretrain.mode == "prompt" else None
    head, from_text = build_temporal_head(cfg.pretrain.head, cfg.pretrain.head_layers, cfg.video.num_frames, clip,
                                          input_norm=cfg.pretrain.head_input_norm)
    return VideoTextModel(clip, head, image_mean=mean, image_std=std, build_info=info, head_from_text=from_text,
                          frame_layout=layout, prompt=prompt)


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
