"""Stage-1 backbones, used as is: open_clip CLIPs (``clip.kind=open_clip``) and transformers'
X-CLIP (``clip.kind=xclip``).

open_clip: a built-in name with a pretrained tag (``ViT-B-32`` + ``openai``, downloaded through
open_clip's own code, or found in its cache), a local checkpoint file, or - with ``clip.custom`` -
an architecture dict built from scratch (the tiny test/demo model).

X-CLIP: a Hugging Face name (``microsoft/xclip-base-patch32``) or a local folder written by
``XCLIPModel.save_pretrained``, loaded with ``from_pretrained`` (strictly: a missing or unexpected
tensor is an error), or - with ``clip.custom`` - ``XCLIPConfig`` arguments built from scratch.

Building a backbone from an architecture dict never downloads: that is how a model folder is rebuilt.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import re
import sys
import warnings
from typing import Any

import open_clip
import torch
from huggingface_hub.errors import StrictDataclassError
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from transformers import PretrainedConfig, XCLIPConfig, XCLIPModel, XCLIPTextConfig, XCLIPVisionConfig

from retrieval_pretrain.foundation.errors import ConfigError, WeightsUnavailableError
from retrieval_pretrain.foundation.pickles import pickled_code

BACKBONE_KINDS = ("open_clip", "xclip")


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
    """The architecture dict that ``clip_cfg`` builds.

    open_clip (no I/O, no download): ``custom`` as given, or the built-in config of ``model``;
    ``quick_gelu`` is switched on where the pretrained tag was trained with it (OpenAI weights),
    as ``create_model`` only warns. X-CLIP: ``resolve_xclip_config`` (reads ``model``'s
    config.json, from the Hugging Face cache or a folder, unless ``custom`` is set).
    """
    if getattr(clip_cfg, "kind", "open_clip") == "xclip":
        return resolve_xclip_config(clip_cfg)
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
    called = code.group(1) if code else next(iter(pickled_code(path)), None)
    if called:
        reason = (f"it is a pickle that would call {called} when loaded; refused without running it. "
                  "Only plain state dicts of tensors (or .safetensors) are loaded")
        print(f"warning: {path} holds pickled code ({called}); it was not run. Treat the file as untrusted: "
              "only a plain state dict of tensors (or .safetensors) is loaded", file=sys.stderr)
    elif isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        reason = ("not a checkpoint torch loads safely: a truncated file, another kind of file, or a pickle of other "
                  "objects than tensors (refused unrun)")
    else:
        lines = [x.strip() for x in text.splitlines() if x.strip()][:2]
        reason = f"{type(err).__name__}: {' '.join(lines)[:400] or 'unreadable'}"
    return WeightsUnavailableError(f"clip.pretrained={path}: cannot load this checkpoint file: {reason}")


def text_tower(clip: torch.nn.Module) -> torch.nn.Module:
    """The module holding an open_clip model's text tower (``CLIP`` keeps its parts flat,
    ``CustomTextCLIP`` under ``.text``)."""
    return clip.text if hasattr(clip, "text") else clip


def tokenizer_spec(arch: dict[str, Any]) -> dict[str, Any]:
    """What ``ClipTokenizer`` takes for a backbone's architecture dict (open_clip's, or an X-CLIP
    config dict, whose text model reads CLIP's BPE ids: same vocabulary, end token 49407)."""
    if "text_config" in arch and "vision_config" in arch:  # X-CLIP (transformers XCLIPConfig)
        text = arch.get("text_config") or {}
        vocab = int(text.get("vocab_size", 49408))
        if vocab < 49408:
            raise ConfigError(f"clip.custom.text_config.vocab_size={vocab} is smaller than the CLIP BPE vocabulary "
                              "(49408)")
        return {"type": "open_clip.SimpleTokenizer", "context_length": int(text.get("max_position_embeddings", 77)),
                "kwargs": {}}
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
                with warnings.catch_warnings():  # torch's note on pickle protocols: our error says what matters
                    warnings.filterwarnings("ignore", message="Detected pickle protocol")
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
                      f"resizing ({pre.get('resize_mode')}); retrieval_pretrain.reading.transforms does bicubic, "
                      "shortest side + centre crop", stacklevel=2)
    return clip, mean, std, spec


# ----------------------------------------------------------------------------- X-CLIP (transformers)


def _xclip_guidance(model: str, reason: str) -> str:
    """How to supply an X-CLIP model that could not be had."""
    return (
        f"cannot get X-CLIP '{model}' (clip.kind=xclip, clip.model): {reason}\n"
        "Ways to supply it:\n"
        f"  1. On a machine with internet, run once: python -c \"from transformers import XCLIPModel; "
        f"XCLIPModel.from_pretrained('{model}')\" - this fills the Hugging Face cache ($HF_HOME, default "
        "~/.cache/huggingface); copy that folder to this machine and set HF_HUB_OFFLINE=1 so lookups do not "
        "wait on the network.\n"
        f"  2. There, save it to a folder (XCLIPModel.from_pretrained('{model}').save_pretrained('xclip')), copy "
        "the folder here and set clip.model=/path/to/xclip (config.json + model.safetensors).\n"
        "  3. For a model trained from scratch, set clip.custom to XCLIPConfig arguments ({projection_dim, "
        "text_config: {...}, vision_config: {...}, prompt_layers, ...}) and clip.pretrained=null."
    )


def _check_xclip_keys(custom: dict[str, Any]) -> None:
    """``clip.custom`` for X-CLIP may only name ``XCLIPConfig`` fields (and those of its text and
    vision configs): ``XCLIPConfig`` itself keeps an unknown key as a silent attribute."""

    common = {f.name for f in dataclasses.fields(PretrainedConfig)}  # generic fields every config has
    for where, cls, given in (("clip.custom", XCLIPConfig, custom),
                              ("clip.custom.text_config", XCLIPTextConfig, custom.get("text_config") or {}),
                              ("clip.custom.vision_config", XCLIPVisionConfig, custom.get("vision_config") or {})):
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: expected a mapping of X-CLIP config fields, got {given!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            own = ", ".join(n for n in names if n not in common)
            raise ConfigError(f"{where}: unknown X-CLIP config keys {', '.join(unknown)}; valid keys: {own}")


def _xclip_source(model: str) -> str:
    """``model`` if it is a Hugging Face name or an X-CLIP folder; a clear error otherwise."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise WeightsUnavailableError(_xclip_guidance(model, "the folder has no config.json (a folder written by "
                                                                 "XCLIPModel.save_pretrained is needed)"))
    elif _looks_like_a_path(model) or model.startswith("."):
        raise WeightsUnavailableError(_xclip_guidance(model, f"no such folder (relative paths are read from "
                                                             f"{os.getcwd()})"))
    return model


def resolve_xclip_config(clip_cfg: Any, num_frames: int | None = None) -> dict[str, Any]:
    """The resolved ``XCLIPConfig`` dict (every field filled in) that ``clip_cfg`` builds.

    ``custom``: its keys checked, ``vision_config.num_frames`` taken from ``num_frames`` when not
    given; otherwise the config.json of ``model`` (a Hugging Face name, from the cache or the Hub,
    or a local folder). ``WeightsUnavailableError`` with the ways to supply it when it cannot be read.
    """

    if clip_cfg.custom:
        custom = copy.deepcopy(dict(clip_cfg.custom))
        _check_xclip_keys(custom)
        if num_frames is not None:
            custom.setdefault("vision_config", {})
            custom["vision_config"] = {"num_frames": num_frames, **custom["vision_config"]}
        try:
            return XCLIPConfig(**custom).to_dict()
        except (TypeError, ValueError, StrictDataclassError) as e:  # a field of the wrong type
            raise ConfigError(f"clip.custom: not a valid X-CLIP config: {str(e).strip()}") from None
    source = _xclip_source(clip_cfg.model)
    try:
        found, _ = XCLIPConfig.get_config_dict(source)
    except OSError as e:
        raise WeightsUnavailableError(_xclip_guidance(clip_cfg.model, str(e).splitlines()[0])) from None
    if found.get("model_type") != "xclip":
        raise ConfigError(f"clip.model={clip_cfg.model}: a '{found.get('model_type')}' model, not X-CLIP "
                          "(clip.kind=xclip needs an XCLIPModel)")
    return XCLIPConfig.from_dict(found).to_dict()


def xclip_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised ``XCLIPModel`` of the resolved config dict ``config`` (never downloads)."""

    return XCLIPModel(XCLIPConfig.from_dict(copy.deepcopy(config)))


def _check_xclip_fits(config: dict[str, Any], num_frames: int, model: str | None) -> None:
    vision = config["vision_config"]
    if int(vision["num_frames"]) != num_frames:
        where = f"X-CLIP '{model}' was built" if model else "clip.custom.vision_config.num_frames says it is built"
        raise ConfigError(f"video.num_frames={num_frames}, but {where} for {vision['num_frames']} frames per video "
                          "(its message tokens and MIT position table fix the count); set video.num_frames="
                          f"{vision['num_frames']}" + ("" if model else " or leave vision_config.num_frames out"))
    if int(vision["mit_hidden_size"]) != int(config["projection_dim"]):
        raise ConfigError(f"clip.custom: vision_config.mit_hidden_size={vision['mit_hidden_size']} must equal "
                          f"projection_dim={config['projection_dim']} (the MIT runs on projected frame embeddings)")


def build_xclip(clip_cfg: Any, num_frames: int) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...],
                                                         dict[str, Any]]:
    """``(xclip_model, image_mean, image_std, tokenizer_spec)`` for a ``ClipConfig`` of kind ``xclip``.

    * ``custom`` set: ``XCLIPModel(XCLIPConfig(**custom))``, random init (``pretrained`` must be null).
    * otherwise ``model`` names the model (Hugging Face name or local folder): ``pretrained`` null
      builds its architecture with random weights; any other value loads its weights with
      ``XCLIPModel.from_pretrained`` - strictly, a missing or unexpected tensor is an error.

    ``video.num_frames`` (``num_frames``) must be the model's frame count. Image normalisation is
    CLIP's OpenAI mean/std, as ``XCLIPProcessor`` uses. Raises ``WeightsUnavailableError`` with the
    ways to supply the model when it cannot be had.
    """

    if clip_cfg.temporal_attention != "none":
        raise ConfigError(f"clip.temporal_attention={clip_cfg.temporal_attention} does not apply to clip.kind=xclip "
                          "(X-CLIP's frames communicate through its own message tokens); set it to none")
    if clip_cfg.custom and clip_cfg.pretrained:
        raise ConfigError(f"clip.pretrained={clip_cfg.pretrained}: with clip.custom an X-CLIP starts from random "
                          "weights; set clip.pretrained=null (to load weights, set clip.model to the Hugging Face "
                          "name or folder and leave clip.custom unset)")
    config = resolve_xclip_config(clip_cfg, num_frames)
    _check_xclip_fits(config, num_frames, None if clip_cfg.custom else clip_cfg.model)
    spec = tokenizer_spec(config)
    if clip_cfg.custom or not clip_cfg.pretrained:
        return xclip_from_config(config), tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD), spec
    try:
        model, loading = XCLIPModel.from_pretrained(_xclip_source(clip_cfg.model), dtype=torch.float32,
                                                    output_loading_info=True)
    except OSError as e:
        raise WeightsUnavailableError(_xclip_guidance(clip_cfg.model, str(e).splitlines()[0])) from None
    bad = {kind: [k for k in loading.get(kind, []) if not str(k).endswith("position_ids")]  # old saved buffers
           for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')}, e.g. {list(v)[:3]}" for k, v in bad.items() if v)
        raise WeightsUnavailableError(f"clip.model={clip_cfg.model}: its weights do not fit its X-CLIP config "
                                      f"({detail}); refusing a partly random model")
    return model.float(), tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD), spec
