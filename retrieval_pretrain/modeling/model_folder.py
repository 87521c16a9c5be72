"""Stage-1 model folders: ``save_pretrained`` writes and ``from_pretrained`` reads them.

A model folder holds exactly two files:

* ``config.json``: everything needed to rebuild the network without any download - the resolved
  open_clip architecture dict (``clip.arch``; for ``clip.kind=xclip`` the resolved ``XCLIPConfig``
  dict), the temporal head, frames, image size and normalisation, the tokenizer and ``max_words``,
  the prompt lengths of a prompt-tuned model (``prompt``: ``{prefix, suffix}``) - plus the caller's
  ``extra`` (e.g. sampling).
* ``model.safetensors``: all weights, CLIP towers and head (the fine-tuned video tower).

The folder is written whole through ``atomic.write_folder``; loading is strict (a missing or
unexpected tensor is a ``ModelFolderError`` naming the file).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import open_clip
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from retrieval_pretrain.foundation.atomic import write_folder
from retrieval_pretrain.modeling.backbones import clip_from_arch, text_tower, xclip_from_config
from retrieval_pretrain.foundation.errors import ModelFolderError, check_finite
from retrieval_pretrain.modeling.model import VideoTextModel
from retrieval_pretrain.modeling.parts import build_temporal_head, build_tight_transf
from retrieval_pretrain.modeling.prompt import TextPrompt
from retrieval_pretrain.modeling.st_mix import enable_st_mix
from retrieval_pretrain.modeling.tight_transf import TightTransfModel
from retrieval_pretrain.modeling.xclip import XClipVideoTextModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "vcap-video-text-model"
FORMAT_VERSION = 1
# Keys of config.json that define the network; ``extra`` may repeat them but never change them.
_ARCH_KEYS = ("format", "format_version", "clip", "head", "head_layers", "head_input_norm", "num_frames", "embed_dim",
              "image_size", "image_mean", "image_std", "tokenizer", "context_length", "max_words", "prompt")


def _head_config(model: VideoTextModel | XClipVideoTextModel) -> dict[str, Any]:
    """The temporal head's part of ``config.json`` (X-CLIP's is its MIT, built from ``clip.arch``;
    tightTransf's is its cross encoder)."""
    if isinstance(model, XClipVideoTextModel):
        return {"head": model.head_kind, "head_layers": model.head_layers, "head_input_norm": False,
                "head_heads": model.head_heads, "head_init_from_text": False}
    if isinstance(model, TightTransfModel):
        return {"head": model.head_kind, "head_layers": model.cross.layers, "head_input_norm": model.cross.input_norm,
                "head_heads": model.cross.heads, "head_init_from_text": model.head_from_text}
    return {"head": model.head_kind, "head_layers": model.head_layers, "head_input_norm": model.head.input_norm,
            "head_heads": model.head.heads, "head_init_from_text": model.head_from_text}


def _prompt_config(model: Any) -> dict[str, Any]:
    """``{"prompt": {prefix, suffix}}`` for a prompt-tuned model, else nothing."""
    prompt = getattr(model, "prompt", None)
    if prompt is None:
        return {}
    return {"prompt": {"prefix": int(prompt.prefix.shape[0]), "suffix": int(prompt.suffix.shape[0])}}


def model_config(model: VideoTextModel | XClipVideoTextModel) -> dict[str, Any]:
    """What ``config.json`` holds for ``model`` (without the caller's extra keys)."""
    b = model.build_info
    if "clip" not in b or "tokenizer" not in b:
        raise ValueError("this model was not built by retrieval_pretrain.modeling.parts (no build_info); "
                         "use build_video_text_model")
    versions = ({"transformers_version": transformers.__version__} if isinstance(model, XClipVideoTextModel)
                else {"open_clip_version": open_clip.__version__})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clip": b["clip"],
        **_head_config(model),
        "num_frames": model.num_frames,
        "embed_dim": model.embed_dim,
        "image_size": model.image_size,
        "image_mean": list(model.image_mean),
        "image_std": list(model.image_std),
        "image_interpolation": b["image_interpolation"],
        "image_resize_mode": b["image_resize_mode"],
        "tokenizer": b["tokenizer"],
        "context_length": model.context_length,
        "max_words": b["max_words"],
        **_prompt_config(model),
        **versions,
    }


def save_pretrained(model: VideoTextModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/config.json`` + ``folder/model.safetensors``, swapped in whole
    (``atomic.write_folder``: a reader sees the old complete folder or the new one, never a mix).
    ``extra`` keys are added to config.json; they may not change an architecture key."""
    model = getattr(model, "module", model)
    config = model_config(model)
    for key, value in (extra or {}).items():
        if key in _ARCH_KEYS and key in config and json.loads(json.dumps(value)) != config[key]:
            raise ValueError(f"extra['{key}']={value!r} contradicts the model ({config[key]!r})")
        config[key] = value
    text = json.dumps(config, indent=2) + "\n"  # fails before any file is touched if not JSON-able

    def fill(tmp: Path) -> None:
        # save_model drops duplicate views of shared storage, which safetensors refuses.
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(text)

    return write_folder(folder, fill)


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is not a stage-1 model folder: {', '.join(missing)} missing "
                               f"(save_pretrained writes {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        info = json.loads((folder / CONFIG_NAME).read_text())
    except (ValueError, RecursionError, OSError) as e:  # JSON, UTF-8, nesting, a folder in its place
        raise ModelFolderError(f"{folder / CONFIG_NAME}: not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: not a stage-1 video-text model config "
                               f"(format {info.get('format') if isinstance(info, dict) else None!r}, "
                               f"expected {FORMAT!r})")
    lacking = [k for k in ("clip", "head", "head_layers", "head_input_norm", "head_init_from_text", "num_frames",
                           "image_mean", "image_std", "image_interpolation", "image_resize_mode", "tokenizer",
                           "max_words") if k not in info]
    if lacking or "arch" not in info["clip"]:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: missing keys {', '.join(lacking or ['clip.arch'])}")
    return info


def _prompt_lengths(info: dict[str, Any], context: int) -> tuple[int, int]:
    """``(prefix, suffix)`` of a prompt-tuned folder, checked before anything is allocated: whole
    numbers >= 0 whose sum with ``max_words`` fits the text tower (what training checked)."""
    p = info["prompt"]
    ok = isinstance(p, dict) and set(p) == {"prefix", "suffix"} and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p.values())
    if not ok:
        raise ValueError(f"'prompt' must be {{\"prefix\": n, \"suffix\": n}} with whole numbers >= 0, got {p!r}")
    if info["max_words"] + p["prefix"] + p["suffix"] > context:
        raise ValueError(f"max_words={info['max_words']} + prompt prefix {p['prefix']} + suffix {p['suffix']} "
                         f"exceed the text tower's {context} positions")
    return p["prefix"], p["suffix"]


def _build_from_info(info: dict[str, Any]) -> VideoTextModel | TightTransfModel | XClipVideoTextModel:
    """The (randomly initialised) network ``config.json`` describes; never downloads."""
    build_info = {k: info[k] for k in ("clip", "tokenizer", "max_words", "image_interpolation",
                                       "image_resize_mode") if k in info}
    if info["clip"].get("kind", "open_clip") == "xclip":
        return XClipVideoTextModel(xclip_from_config(info["clip"]["arch"]), image_mean=info["image_mean"],
                                   image_std=info["image_std"], build_info=build_info)
    clip = clip_from_arch(info["clip"]["arch"])
    layout = enable_st_mix(clip.visual) if info["clip"].get("temporal_attention") == "st_mix" else None
    if info["head"] == "tightTransf":
        model = build_tight_transf(clip, info["head_layers"], info["num_frames"], info["max_words"],
                                   input_norm=bool(info["head_input_norm"]), init_from_text=False,
                                   image_mean=info["image_mean"], image_std=info["image_std"], build_info=build_info,
                                   frame_layout=layout)
        model.head_from_text = bool(info["head_init_from_text"])  # how it started, recorded (weights come next)
        return model
    head, _ = build_temporal_head(info["head"], info["head_layers"], info["num_frames"], clip,
                                  input_norm=bool(info["head_input_norm"]), init_from_text=False)
    prompt = None
    if "prompt" in info:  # pretrain.mode=prompt: the learnt vectors come with the weights
        owner = text_tower(clip)
        prefix, suffix = _prompt_lengths(info, int(owner.context_length))
        prompt = TextPrompt(owner.token_embedding.weight.shape[1], prefix, suffix)
    return VideoTextModel(clip, head, image_mean=info["image_mean"], image_std=info["image_std"],
                          build_info=build_info, head_from_text=bool(info["head_init_from_text"]),
                          frame_layout=layout, prompt=prompt)


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[VideoTextModel | XClipVideoTextModel, dict[str, Any]]:
    """Load a model folder: ``(model in eval mode on device, config.json as a dict)``.

    The architecture is rebuilt from ``config.json`` alone (never downloads) and every weight is
    loaded strictly from ``model.safetensors``. ``ModelFolderError`` names the folder or file when
    something is missing or corrupt.
    """
    folder = Path(folder)
    info = _read_config(folder)
    try:
        model = _build_from_info(info)
    except (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError) as e:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: cannot build the architecture it describes ({e})") from e
    weights = folder / WEIGHTS_NAME
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights}: cannot load the weights ({type(e).__name__}: {e})") from e
    check_finite(model.state_dict().items(), str(weights))
    return model.to(device).eval(), info


def warn_if_video_differs(configured: int, used: int, source: str | Path, configured_sampling: str | None = None,
                          used_sampling: str | None = None) -> None:
    """Inference samples frames as the model (or feature folder) was made; when the config asks for
    another count or sampling, say which is used instead of silently ignoring ``video.*``."""
    if configured != used:
        print(f"warning: video.num_frames={configured} in the config, but {source} was made with {used} frames "
              f"per video; using {used} (video.num_frames applies when training stage 1)", file=sys.stderr)
    if configured_sampling and used_sampling and configured_sampling != used_sampling:
        print(f"warning: video.eval_sampling={configured_sampling} in the config, but {source} was made with "
              f"{used_sampling} sampling; using {used_sampling} (it is recorded when stage 1 is trained)",
              file=sys.stderr)


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


def init_weights_from(model: Any, folder: str | Path) -> None:
    """Copy every weight of the stage-1 model folder ``folder`` into ``model`` (strictly: the two
    must have the same architecture); ``ConfigError`` naming what differs otherwise."""
    from retrieval_pretrain.foundation.errors import ConfigError

    source, _ = from_pretrained(folder)
    theirs, ours = source.state_dict(), model.state_dict()
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape]
    if missing or extra or shapes:
        raise ConfigError(f"pretrain.init_from={folder}: another architecture than this config's "
                          f"({len(missing)} tensors missing, e.g. {missing[:3]}; {len(extra)} unexpected, e.g. "
                          f"{extra[:3]}; {len(shapes)} of other shapes, e.g. {sorted(shapes)[:3]})")
    model.load_state_dict(theirs, strict=True)
