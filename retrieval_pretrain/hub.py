"""Building CLIP backbones and the stage-1 video-text model; reading and writing model folders.

Backbones come from open_clip, used as is: a built-in name with a pretrained tag (``ViT-B-32`` +
``openai``, downloaded through open_clip's own code) or a local checkpoint file, or - with
``clip.custom`` - an architecture dict built from scratch (the tiny test/demo model).

A model folder (``save_pretrained`` / ``from_pretrained``) holds exactly two files:

* ``config.json``: everything needed to rebuild the network without any download - the resolved
  open_clip architecture dict (``clip.arch``), the temporal head, frames, image size and
  normalisation, the tokenizer and ``max_words`` - plus the caller's ``extra`` (e.g. sampling).
* ``model.safetensors``: all weights, CLIP towers and head (the fine-tuned video tower).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.tokenizer import SimpleTokenizer
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from retrieval_pretrain.model import VideoTextModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "vcap-video-text-model"
FORMAT_VERSION = 1
# Keys of config.json that define the network; ``extra`` may repeat them but never change them.
_ARCH_KEYS = ("format", "format_version", "clip", "head", "head_layers", "head_input_norm", "num_frames", "embed_dim",
              "image_size", "image_mean", "image_std", "tokenizer", "context_length", "max_words")


class WeightsUnavailableError(RuntimeError):
    """Pretrained CLIP weights could not be obtained (no internet, unknown tag, missing file)."""


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or corrupt."""


def _guidance(model: str, pretrained: str | None, reason: str) -> str:
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


def _is_download_failure(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) is open_clip failing to fetch weights."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if "Failed to download" in str(err) or isinstance(err, (OSError, ConnectionError, TimeoutError)):
            return True
        err = err.__cause__ or err.__context__
    return False


# ----------------------------------------------------------------------------- backbones


def resolve_arch(clip_cfg: Any) -> dict[str, Any]:
    """The open_clip architecture dict that ``clip_cfg`` builds (no I/O, no download).

    ``custom`` as given, or the built-in config of ``model``; ``quick_gelu`` is switched on where
    the pretrained tag was trained with it (OpenAI weights), as ``create_model`` only warns.
    """
    if clip_cfg.custom:
        return copy.deepcopy(dict(clip_cfg.custom))
    arch = open_clip.get_model_config(clip_cfg.model)
    if arch is None:
        raise ValueError(f"unknown open_clip model '{clip_cfg.model}' (open_clip.list_models() lists them; "
                         "or set clip.custom to an architecture dict)")
    tag_cfg = get_pretrained_cfg(clip_cfg.model, clip_cfg.pretrained) if clip_cfg.pretrained else {}
    if tag_cfg.get("quick_gelu") and not arch.get("quick_gelu"):
        arch["quick_gelu"] = True
    return arch


def clip_from_arch(arch: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised open_clip model of architecture ``arch`` (never downloads)."""
    arch = copy.deepcopy(arch)
    if "multimodal_cfg" in arch:
        raise ValueError("CoCa-style models (multimodal_cfg) are not supported as a stage-1 backbone")
    custom_text = arch.pop("custom_text", False) or "hf_model_name" in arch.get("text_cfg", {})
    if "timm_model_name" in arch.get("vision_cfg", {}):
        arch["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in arch.get("text_cfg", {}):
        arch["text_cfg"]["hf_model_pretrained"] = False
    return (CustomTextCLIP if custom_text else CLIP)(**arch)


def _tokenizer_spec(arch: dict[str, Any]) -> dict[str, Any]:
    text_cfg = arch.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") is not None or "hf_model_name" in text_cfg:
        raise ValueError("text towers with Hugging Face tokenizers are not supported; use a CLIP with "
                         "open_clip's BPE tokenizer (OpenAI/LAION CLIP ViTs)")
    ctx = int(text_cfg.get("context_length", 77))
    vocab = int(text_cfg.get("vocab_size", 49408))
    if vocab < 49408:
        raise ValueError(f"text_cfg.vocab_size={vocab} is smaller than the CLIP BPE vocabulary (49408)")
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
    spec = _tokenizer_spec(arch)
    if clip_cfg.custom:
        clip = clip_from_arch(arch)
        if pretrained:
            if not os.path.isfile(pretrained):
                raise WeightsUnavailableError(_guidance(
                    "custom", pretrained, "a custom architecture takes a local checkpoint file, and this one "
                    "does not exist"))
            open_clip.load_checkpoint(clip, pretrained, strict=True)
        return clip, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD), spec

    if pretrained and not get_pretrained_cfg(clip_cfg.model, pretrained) and not os.path.isfile(pretrained):
        tags = ", ".join(list_pretrained_tags_by_model(clip_cfg.model)) or "none"
        raise WeightsUnavailableError(_guidance(
            clip_cfg.model, pretrained, f"it is neither a known tag of this model (tags: {tags}) nor an "
            "existing file"))
    try:
        clip = open_clip.create_model(clip_cfg.model, pretrained=pretrained,
                                      force_quick_gelu=bool(arch.get("quick_gelu")),
                                      pretrained_text=False)  # no silent tower downloads
    except Exception as e:
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


# ----------------------------------------------------------------------------- tokenizer


def _check_max_words(max_words: int, context_length: int) -> None:
    if not 2 <= max_words <= context_length:
        raise ValueError(f"pretrain.max_words={max_words} must be between 2 and the text tower's context "
                         f"length {context_length}")


class ClipTokenizer:
    """Captions -> LongTensor (B, context_length) for CLIP's text tower, at most ``max_words`` BPE
    tokens each (start and end tokens included; a longer caption is cut and still ends with the
    end token, whose position the text tower pools at). Positions past ``max_words`` are zero
    padding; the causal text tower never lets them reach the end token, so the embedding equals
    that of the ``max_words``-long sequence. Picklable (DataLoader workers)."""

    def __init__(self, spec: dict[str, Any], max_words: int):
        self.context_length = int(spec["context_length"])
        _check_max_words(max_words, self.context_length)
        self.max_words = int(max_words)
        self.spec = dict(spec)
        self._tok = SimpleTokenizer(context_length=self.max_words, **spec.get("kwargs", {}))

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        ids = self._tok(texts, context_length=self.max_words)  # (B, max_words)
        out = ids.new_zeros(ids.shape[0], self.context_length)  # (B, context_length)
        out[:, : self.max_words] = ids
        return out


def build_tokenizer(cfg: Any) -> Callable[[list[str]], torch.Tensor]:
    """The caption tokenizer for a config with ``.clip`` and ``.pretrain.max_words``."""
    return ClipTokenizer(_tokenizer_spec(resolve_arch(cfg.clip)), cfg.pretrain.max_words)


def build_tokenizer_from_info(info: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
    """The caption tokenizer of a model folder (``info`` as returned by ``from_pretrained``)."""
    return ClipTokenizer(info["tokenizer"], info["max_words"])


# ----------------------------------------------------------------------------- the model


def build_model(cfg: Any) -> VideoTextModel:
    """The stage-1 model for a config with ``.clip``, ``.pretrain`` (head, head_layers, max_words)
    and ``.video.num_frames``; CLIP weights as ``build_clip`` gets them."""
    clip, mean, std, spec = build_clip(cfg.clip)
    _check_max_words(cfg.pretrain.max_words, spec["context_length"])  # fail now, not in a worker
    pre = getattr(clip.visual, "preprocess_cfg", {}) or {}
    info = {
        "clip": {"model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                 "custom": copy.deepcopy(cfg.clip.custom), "arch": resolve_arch(cfg.clip)},
        "tokenizer": spec,
        "max_words": cfg.pretrain.max_words,
        "image_interpolation": pre.get("interpolation", "bicubic"),
        "image_resize_mode": pre.get("resize_mode", "shortest"),
    }
    return VideoTextModel(clip, cfg.pretrain.head, cfg.pretrain.head_layers, cfg.video.num_frames,
                          image_mean=mean, image_std=std, build_info=info,
                          head_input_norm=cfg.pretrain.head_input_norm)


def model_config(model: VideoTextModel) -> dict[str, Any]:
    """What ``config.json`` holds for ``model`` (without the caller's extra keys)."""
    b = model.build_info
    if "clip" not in b or "tokenizer" not in b:
        raise ValueError("this model was not built by retrieval_pretrain.hub (no build_info); use build_model")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clip": b["clip"],
        "head": model.head_kind,
        "head_layers": model.head_layers,
        "head_input_norm": model.head.input_norm,
        "head_heads": model.head.heads,
        "head_init_from_text": b.get("head_init_from_text", model.head_from_text),
        "num_frames": model.num_frames,
        "embed_dim": model.embed_dim,
        "image_size": model.image_size,
        "image_mean": list(model.image_mean),
        "image_std": list(model.image_std),
        "image_interpolation": b.get("image_interpolation", "bicubic"),
        "image_resize_mode": b.get("image_resize_mode", "shortest"),
        "tokenizer": b["tokenizer"],
        "context_length": model.context_length,
        "max_words": b["max_words"],
        "open_clip_version": open_clip.__version__,
    }


def save_pretrained(model: VideoTextModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/config.json`` + ``folder/model.safetensors`` atomically.

    Both files are written into a temporary folder beside ``folder``, which then replaces
    ``folder`` by renames: a reader sees the old complete folder or the new one, never a mix.
    ``extra`` keys are added to config.json; they may not change an architecture key.
    """
    model = getattr(model, "module", model)
    folder = Path(folder)
    config = model_config(model)
    for key, value in (extra or {}).items():
        if key in _ARCH_KEYS and key in config and json.loads(json.dumps(value)) != config[key]:
            raise ValueError(f"extra['{key}']={value!r} contradicts the model ({config[key]!r})")
        config[key] = value
    text = json.dumps(config, indent=2) + "\n"  # fails before any file is touched if not JSON-able
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.chmod(tmp, 0o755)
        # save_model drops duplicate views of shared storage, which safetensors refuses.
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(text)
        moved = False
        if folder.exists():
            os.replace(folder, old)
            moved = True
        try:
            os.replace(tmp, folder)
        except BaseException:
            if moved:
                os.replace(old, folder)
            raise
        if moved:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is not a stage-1 model folder: {', '.join(missing)} missing "
                               f"(save_pretrained writes {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        info = json.loads((folder / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: not a stage-1 video-text model config "
                               f"(format {info.get('format') if isinstance(info, dict) else None!r}, "
                               f"expected {FORMAT!r})")
    lacking = [k for k in ("clip", "head", "head_layers", "num_frames", "image_mean", "image_std",
                           "tokenizer", "max_words") if k not in info]
    if lacking or "arch" not in info["clip"]:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: missing keys {', '.join(lacking or ['clip.arch'])}")
    return info


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> tuple[VideoTextModel, dict[str, Any]]:
    """Load a model folder: ``(model in eval mode on device, config.json as a dict)``.

    The architecture is rebuilt from ``config.json`` alone (never downloads) and every weight is
    loaded strictly from ``model.safetensors``. ``ModelFolderError`` names the folder or file when
    something is missing or corrupt.
    """
    folder = Path(folder)
    info = _read_config(folder)
    try:
        clip = clip_from_arch(info["clip"]["arch"])
        build_info = {k: info[k] for k in ("clip", "tokenizer", "max_words", "image_interpolation",
                                           "image_resize_mode", "head_init_from_text") if k in info}
        model = VideoTextModel(clip, info["head"], info["head_layers"], info["num_frames"],
                               image_mean=info["image_mean"], image_std=info["image_std"],
                               build_info=build_info, init_head_from_text=False,
                               head_input_norm=bool(info.get("head_input_norm", False)))
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: cannot build the architecture it describes ({e})") from e
    weights = folder / WEIGHTS_NAME
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights}: cannot load the weights ({type(e).__name__}: {e})") from e
    return model.to(device).eval(), info


def model_fingerprint(folder: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of ``folder/model.safetensors``: ties feature caches to
    the exact tower weights."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder}: {WEIGHTS_NAME} missing")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
