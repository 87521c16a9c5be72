"""CLIP backbones from open_clip, used as is.

A built-in name with a pretrained tag (``ViT-B-32`` + ``openai``, downloaded through open_clip's
own code, or found in its cache), a local checkpoint file, or - with ``clip.custom`` - an
architecture dict built from scratch (the tiny test/demo model). Building a backbone from an
architecture dict never downloads: that is how a model folder is rebuilt.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import sys
import warnings
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

from retrieval_pretrain.errors import ConfigError, WeightsUnavailableError

BACKBONE_KINDS = ("open_clip",)


def _guidance(model: str, pretrained: str | None, reason: str) -> str:
    """How to supply the weights of a known open_clip tag that could not be fetched."""
    return (
        f"cannot get the weights of CLIP '{model}' with pretrained='{pretrained}': {reason}\n"
        "Ways to supply them:\n"
        f"  1. On a machine with internet, run once: python -c \"import open_clip; "
        f"open_clip.create_model('{model}', pretrained='{pretrained}')\" - this fills the Hugging Face "
        "cache ($HF_HOME, default ~/.cache/huggingface) or open_clip's URL cache (~/.cache/clip); copy "
        "that folder to this machine and set HF_HUB_OFFLINE=1 so lookups do not wait on the network.\n"
        "  2. Download the checkpoint file yourself (e.g. open_clip_pytorch_model.bin from the model's "
        "Hugging Face repository) and set clip.pretrained=/path/to/file (.bin/.pt/.pth state dict, "
        ".safetensors, or an OpenAI TorchScript .pt).\n"
        "  3. For a model trained from scratch, set clip.custom to an open_clip architecture dict "
        "({embed_dim, vision_cfg, text_cfg}) and clip.pretrained=null."
    )


def _file_guidance(model: str | None, path: str) -> str:
    """What to do when clip.pretrained names a checkpoint file that is not there."""
    where = f"CLIP '{model}'" if model else "the custom architecture in clip.custom"
    tags = ", ".join(list_pretrained_tags_by_model(model)) if model else ""
    return (
        f"cannot get the weights of {where}: the checkpoint file clip.pretrained={path} does not exist "
        f"(relative paths are read from {os.getcwd()}).\n"
        "Ways to supply them:\n"
        "  1. Fix the path (a .bin/.pt/.pth state dict, .safetensors, or an OpenAI TorchScript .pt).\n"
        + (f"  2. Use one of the model's pretrained tags instead (clip.pretrained=TAG; tags: {tags or 'none'}), "
           "downloaded by open_clip on first use.\n" if model else
           "  2. Point clip.pretrained at a checkpoint trained with exactly this architecture.\n")
        + "  3. Set clip.pretrained=null to start from random weights (training from scratch)."
    )


def _looks_like_a_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _is_download_failure(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) is open_clip failing to fetch weights."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if "Failed to download" in str(err) or isinstance(err, (OSError, ConnectionError, TimeoutError)):
            return True
        err = err.__cause__ or err.__context__
    return False


def resolve_arch(clip_cfg: Any) -> dict[str, Any]:
    """The open_clip architecture dict that ``clip_cfg`` builds (no I/O, no download).

    ``custom`` as given, or the built-in config of ``model``; ``quick_gelu`` is switched on where
    the pretrained tag was trained with it (OpenAI weights), as ``create_model`` only warns.
    """
    if clip_cfg.custom:
        return copy.deepcopy(dict(clip_cfg.custom))
    arch = open_clip.get_model_config(clip_cfg.model)
    if arch is None:
        raise ConfigError(f"clip.model: unknown open_clip model '{clip_cfg.model}' (open_clip.list_models() lists them; "
                         "or set clip.custom to an architecture dict)")
    tag_cfg = get_pretrained_cfg(clip_cfg.model, clip_cfg.pretrained) if clip_cfg.pretrained else {}
    if tag_cfg.get("quick_gelu") and not arch.get("quick_gelu"):
        arch["quick_gelu"] = True
    return arch


def clip_from_arch(arch: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised open_clip model of architecture ``arch`` (never downloads)."""
    arch = copy.deepcopy(arch)
    if "multimodal_cfg" in arch:
        raise ConfigError("CoCa-style models (multimodal_cfg) are not supported as a stage-1 backbone")
    custom_text = arch.pop("custom_text", False) or "hf_model_name" in arch.get("text_cfg", {})
    if "timm_model_name" in arch.get("vision_cfg", {}):
        arch["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in arch.get("text_cfg", {}):
        arch["text_cfg"]["hf_model_pretrained"] = False
    try:
        return (CustomTextCLIP if custom_text else CLIP)(**arch)
    except TypeError as e:  # an unknown or misspelt field ("layers:1" without a space is one YAML key)
        raise ConfigError(f"clip.custom: not an open_clip architecture: {e} (in YAML flow style, write "
                          "'{layers: 1, width: 64}' with a space after each colon)") from None


def _local_weights_error(path: str, err: BaseException) -> WeightsUnavailableError:
    """The checkpoint file ``path`` exists but cannot be loaded: say which file and why. A pickle
    that would run code (torch's weights-only loader names the callable it refused) gets a warning."""
    text = str(err)
    code = re.search(r"unsupported GLOBAL (\S+)", text)
    if code:
        reason = (f"it is a pickle that would call {code.group(1)} when loaded; refused without running it. "
                  "Only plain state dicts of tensors (or .safetensors) are loaded")
        print(f"warning: {path} holds pickled code ({code.group(1)}); it was not run. Treat the file as untrusted: "
              "only a plain state dict of tensors (or .safetensors) is loaded", file=sys.stderr)
    elif isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        reason = ("not a checkpoint torch loads safely: a truncated file, another kind of file, or a pickle of other "
                  "objects than tensors (refused unrun)")
    else:
        lines = [x.strip() for x in text.splitlines() if x.strip()][:2]
        reason = f"{type(err).__name__}: {' '.join(lines)[:400] or 'unreadable'}"
    return WeightsUnavailableError(f"clip.pretrained={path}: cannot load this checkpoint file: {reason}")


def tokenizer_spec(arch: dict[str, Any]) -> dict[str, Any]:
    text_cfg = arch.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") is not None or "hf_model_name" in text_cfg:
        raise ConfigError("text towers with Hugging Face tokenizers are not supported; use a CLIP with "
                         "open_clip's BPE tokenizer (OpenAI/LAION CLIP ViTs)")
    ctx = int(text_cfg.get("context_length", 77))
    vocab = int(text_cfg.get("vocab_size", 49408))
    if vocab < 49408:
        raise ConfigError(f"clip.custom.text_cfg.vocab_size={vocab} is smaller than the CLIP BPE vocabulary (49408)")
    return {"type": "open_clip.SimpleTokenizer", "context_length": ctx,
            "kwargs": dict(text_cfg.get("tokenizer_kwargs", {}))}


def build_clip(clip_cfg: Any) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...], dict[str, Any]]:
    """``(clip_model, image_mean, image_std, tokenizer_spec)`` for a ``ClipConfig``.

    * ``custom`` set: ``open_clip.model.CLIP(**custom)``, random init; ``pretrained`` must then be
      null or a local checkpoint file (loaded with ``open_clip.load_checkpoint``).
    * otherwise ``open_clip.create_model(model, pretrained=...)`` - a tag (downloaded or found in the
      cache), a local checkpoint file, or null for random init.

    Raises ``WeightsUnavailableError`` with the ways to supply weights when they cannot be had.
    ``tokenizer_spec`` is what ``ClipTokenizer`` takes.
    """
    pretrained = clip_cfg.pretrained or None
    arch = resolve_arch(clip_cfg)
    spec = tokenizer_spec(arch)
    if clip_cfg.custom:
        clip = clip_from_arch(arch)
        if pretrained:
            if not os.path.isfile(pretrained):
                raise WeightsUnavailableError(_file_guidance(None, pretrained))
            try:
                open_clip.load_checkpoint(clip, pretrained, strict=True)
            except Exception as e:  # not a checkpoint, a pickle with code, tensors of another architecture
                raise _local_weights_error(pretrained, e) from None
        return clip, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD), spec

    if pretrained and not get_pretrained_cfg(clip_cfg.model, pretrained) and not os.path.isfile(pretrained):
        if _looks_like_a_path(pretrained):
            raise WeightsUnavailableError(_file_guidance(clip_cfg.model, pretrained))
        tags = ", ".join(list_pretrained_tags_by_model(clip_cfg.model)) or "none"
        raise WeightsUnavailableError(_guidance(
            clip_cfg.model, pretrained, f"it is neither a known tag of this model (tags: {tags}) nor an "
            "existing file"))
    try:
        clip = open_clip.create_model(clip_cfg.model, pretrained=pretrained,
                                      force_quick_gelu=bool(arch.get("quick_gelu")),
                                      pretrained_text=False)  # no silent tower downloads
    except Exception as e:
        if pretrained and os.path.isfile(pretrained):
            raise _local_weights_error(pretrained, e) from None
        if pretrained and not os.path.isfile(pretrained) and _is_download_failure(e):
            raise WeightsUnavailableError(_guidance(clip_cfg.model, pretrained, str(e).splitlines()[0])) from e
        raise
    pre = getattr(clip.visual, "preprocess_cfg", {}) or {}
    mean = tuple(float(v) for v in pre.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in pre.get("std", OPENAI_DATASET_STD))
    if pre.get("interpolation", "bicubic") != "bicubic" or pre.get("resize_mode", "shortest") != "shortest":
        warnings.warn(f"CLIP '{clip_cfg.model}/{pretrained}' was trained with {pre.get('interpolation')} "
                      f"resizing ({pre.get('resize_mode')}); retrieval_pretrain.transforms does bicubic, "
                      "shortest side + centre crop", stacklevel=2)
    return clip, mean, std, spec
