"""What a trained stage-1 model is, typed: ``ModelSpec`` IS the ``config.json`` of a stage-1 model
folder (``model_folder.save_pretrained`` writes ``spec.to_json()``, ``from_pretrained`` reads it
back with ``ModelSpec.from_json``).

It holds everything needed to rebuild the network without a download (``clip.arch``: the resolved
open_clip architecture dict, or for ``clip.kind=xclip`` the resolved ``XCLIPConfig`` dict; the
temporal head; frames; image size and normalisation; the tokenizer and ``max_words``; the prompt
lengths of a prompt-tuned model), how the model samples frames at inference (``eval_sampling``)
and where it came from (``trained_on``, ``swa``, ``interpolation``). ``parts.build_model`` builds
the network a spec describes; every consumer reads its typed fields (``spec.num_frames``,
``spec.eval_sampling`` ...), never the raw JSON.

The JSON is the one earlier releases wrote (``format_version`` 1, the same keys), so their model
folders load unchanged. The reader is strict about what it knows - types, required keys, finite
numbers, whole-number counts - and a bad value is a ``ModelFolderError`` naming the file and the
key. Keys it does not know are kept as they are (``other``) and written back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_pretrain.foundation.errors import ModelFolderError

SAMPLINGS = ("uniform", "fps", "tsn")  # how frames are drawn (reading.video.sample_indices' methods)

FORMAT = "vcap-video-text-model"
FORMAT_VERSION = 1
BACKBONE_KINDS = ("open_clip", "xclip")
TEMPORAL_ATTENTION = ("none", "st_mix")


class _Reader:
    """Checked reads of one JSON object (``where``: its path inside config.json, for messages)."""

    def __init__(self, data: Any, source: str, where: str = ""):
        self.source, self.where = source, where
        if not isinstance(data, dict):
            raise ModelFolderError(f"{source}: '{where.rstrip('.')}' must be a JSON object, got {_kind(data)}")
        self.data = data

    def fail(self, key: str, problem: str) -> None:
        raise ModelFolderError(f"{self.source}: '{self.where}{key}' {problem}")

    def get(self, key: str, required: bool, default: Any = None) -> Any:
        if key not in self.data:
            if required:
                raise ModelFolderError(f"{self.source}: missing key '{self.where}{key}' (a stage-1 model config "
                                       "written by save_pretrained has it)")
            return default
        return self.data[key]

    def text(self, key: str, required: bool = True, default: str | None = None, choices: tuple[str, ...] = (),
             nullable: bool = False) -> Any:
        """A non-empty string (one of ``choices`` if given); None too where ``nullable``."""
        value = self.get(key, required, default)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, key: str, required: bool = True, default: bool = False) -> bool:
        value = self.get(key, required, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_kind(value)}")
        return value

    def count(self, key: str, required: bool = True, default: int | None = None, low: int = 0) -> Any:
        """A whole number >= ``low`` (JSON true/false and 2.0 are not whole numbers here)."""
        value = self.get(key, required, default)
        if value is None and default is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(key, f"must be a whole number >= {low}, got {_kind(value)}")
        return value

    def number(self, key: str, required: bool = True, default: float | None = None) -> float:
        value = self.get(key, required, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {_kind(value)}")
        return float(value)

    def numbers(self, key: str, length: int, positive: bool = False) -> tuple[float, ...]:
        value = self.get(key, True)
        ok = isinstance(value, list) and len(value) == length and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
            for v in value)
        if not ok:
            self.fail(key, f"must be a list of {length} finite{' positive' if positive else ''} numbers, "
                           f"got {_kind(value)}")
        return tuple(float(v) for v in value)

    def mapping(self, key: str, required: bool = True, nullable: bool = False) -> Any:
        """A JSON object (a copy); None too where ``nullable``."""
        value = self.get(key, required)
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            self.fail(key, f"must be a JSON object, got {_kind(value)}")
        return copy.deepcopy(value)

    def inner(self, key: str) -> "_Reader":
        return _Reader(self.get(key, True), self.source, f"{self.where}{key}.")


def _kind(value: Any) -> str:
    """A value as a message shows it (long ones cut)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class ClipSpec:
    """The backbone: ``kind`` (open_clip | xclip), where its weights came from when training started
    (``model`` name, ``pretrained`` tag or file, ``custom`` architecture), the resolved ``arch``
    dict it is rebuilt from, and ``temporal_attention`` (none | st_mix)."""

    arch: dict[str, Any]
    kind: str = "open_clip"
    model: str | None = None
    pretrained: str | None = None
    custom: dict[str, Any] | None = None
    temporal_attention: str = "none"

    @classmethod
    def from_json(cls, r: _Reader) -> "ClipSpec":
        return cls(arch=r.mapping("arch"), kind=r.text("kind", False, "open_clip", BACKBONE_KINDS),
                   model=r.text("model", False, nullable=True), pretrained=r.text("pretrained", False, nullable=True),
                   custom=r.mapping("custom", False, nullable=True),
                   temporal_attention=r.text("temporal_attention", False, "none", TEMPORAL_ATTENTION))

    def to_json(self) -> dict[str, Any]:
        kind = {"kind": self.kind} if self.kind != "open_clip" else {}  # open_clip folders never wrote it
        return {**kind, "model": self.model, "pretrained": self.pretrained, "custom": copy.deepcopy(self.custom),
                "arch": copy.deepcopy(self.arch), "temporal_attention": self.temporal_attention}


_TOKENIZER_KWARGS = {  # SimpleTokenizer's keyword arguments a config may record, and what each must be
    "clean": lambda v: isinstance(v, str), "reduction_mask": lambda v: isinstance(v, str),
    "additional_special_tokens": lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


@dataclass(frozen=True)
class TokenizerSpec:
    """What ``clip_tokenizer.ClipTokenizer`` takes: open_clip's BPE tokenizer, the text tower's
    ``context_length`` and extra tokenizer arguments."""

    context_length: int
    type: str = "open_clip.SimpleTokenizer"
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, r: _Reader) -> "TokenizerSpec":
        kwargs = r.mapping("kwargs", False, nullable=True) or {}
        for key, value in kwargs.items():  # what open_clip's SimpleTokenizer takes besides the context length
            want = _TOKENIZER_KWARGS.get(key)
            if want is None:
                r.fail(f"kwargs.{key}", f"is not an argument of open_clip's SimpleTokenizer (it takes "
                                        f"{', '.join(sorted(_TOKENIZER_KWARGS))})")
            if not want(value):
                r.fail(f"kwargs.{key}", f"has the wrong type ({_kind(value)})")
        return cls(context_length=r.count("context_length", low=1),
                   type=r.text("type", choices=("open_clip.SimpleTokenizer",)), kwargs=kwargs)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "context_length": self.context_length, "kwargs": copy.deepcopy(self.kwargs)}


@dataclass(frozen=True)
class PromptSpec:
    """The learnt prompt vectors of a prompt-tuned model (``pretrain.mode=prompt``): how many before
    and after every caption."""

    prefix: int
    suffix: int

    @classmethod
    def from_json(cls, value: Any, source: str) -> "PromptSpec":
        ok = isinstance(value, dict) and set(value) == {"prefix", "suffix"} and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values())
        if not ok:
            raise ModelFolderError(f"{source}: 'prompt' must be {{\"prefix\": n, \"suffix\": n}} with whole numbers "
                                   f">= 0, got {_kind(value)}")
        return cls(value["prefix"], value["suffix"])

    def to_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "suffix": self.suffix}


@dataclass(frozen=True)
class SwaRecord:
    """``pretrain.swa``: the model is the average of the end-of-epoch weights from ``start_epoch``."""

    start_epoch: int
    epochs_averaged: int

    @classmethod
    def from_json(cls, r: _Reader) -> "SwaRecord":
        return cls(r.count("start_epoch"), r.count("epochs_averaged"))

    def to_json(self) -> dict[str, Any]:
        return {"start_epoch": self.start_epoch, "epochs_averaged": self.epochs_averaged}


@dataclass(frozen=True)
class InterpolationRecord:
    """``vcap interpolate``: ``alpha * base + (1 - alpha) * finetuned``."""

    base: str
    finetuned: str
    alpha: float

    @classmethod
    def from_json(cls, r: _Reader) -> "InterpolationRecord":
        alpha = r.number("alpha")
        if not 0.0 <= alpha <= 1.0:
            r.fail("alpha", f"must lie in [0, 1], got {alpha!r}")
        return cls(r.text("base"), r.text("finetuned"), alpha)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "finetuned": self.finetuned, "alpha": self.alpha}


# Keys that define the network (what a caller may not change without another architecture).
ARCH_KEYS = ("format", "format_version", "clip", "head", "head_layers", "head_input_norm", "num_frames", "embed_dim",
             "image_size", "image_mean", "image_std", "tokenizer", "context_length", "max_words", "prompt")


@dataclass(frozen=True)
class ModelSpec:
    """A trained stage-1 model, as its folder's ``config.json`` describes it (module docstring).

    ``head``: meanP | seqTransf | seqLSTM | tightTransf | mit (X-CLIP's own); ``head_heads``: the
    head's attention heads (None when not known yet: a spec made before its model was built);
    ``head_init_from_text``: whether the head started as a copy of CLIP's text blocks. ``embed_dim``,
    ``image_size`` and ``context_length`` are the built network's (checked when it is built).
    ``other``: keys of the file this release does not know, kept verbatim."""

    clip: ClipSpec
    head: str
    head_layers: int
    head_input_norm: bool
    head_init_from_text: bool
    num_frames: int
    embed_dim: int
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    image_interpolation: str
    image_resize_mode: str
    tokenizer: TokenizerSpec
    context_length: int
    max_words: int
    head_heads: int | None = None
    prompt: PromptSpec | None = None
    eval_sampling: str = "uniform"  # folders written before it was recorded sampled uniformly
    trained_on: dict[str, Any] | None = None  # provenance: annotations, split, videos, steps (free form)
    swa: SwaRecord | None = None
    interpolation: InterpolationRecord | None = None
    open_clip_version: str | None = None
    transformers_version: str | None = None
    format_version: int = FORMAT_VERSION
    other: dict[str, Any] = field(default_factory=dict)

    @property
    def is_xclip(self) -> bool:
        return self.clip.kind == "xclip"

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_json(cls, data: Any, source: str | Path = "config.json") -> "ModelSpec":
        """The checked spec of a parsed ``config.json``; ``ModelFolderError`` naming ``source`` and
        the key for anything missing or malformed (nothing is built or allocated before)."""
        source = str(source)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ModelFolderError(f"{source}: not a stage-1 video-text model config (format {found!r}, expected "
                                   f"{FORMAT!r})" + ("" if isinstance(data, dict) else
                                                     f"; the file holds {type(data).__name__}, not a JSON object"))
        r = _Reader(data, source)
        version = r.count("format_version", False, FORMAT_VERSION, low=1)
        if version > FORMAT_VERSION:
            r.fail("format_version", f"is {version}: written by a newer release of vcap (this one reads "
                                     f"{FORMAT_VERSION}); upgrade vcap to load it")
        prompt = data.get("prompt")
        spec = cls(
            clip=ClipSpec.from_json(r.inner("clip")),
            head=r.text("head"), head_layers=r.count("head_layers"), head_input_norm=r.flag("head_input_norm"),
            head_init_from_text=r.flag("head_init_from_text"), num_frames=r.count("num_frames", low=1),
            embed_dim=r.count("embed_dim", low=1), image_size=r.count("image_size", low=1),
            image_mean=r.numbers("image_mean", 3), image_std=r.numbers("image_std", 3, positive=True),
            image_interpolation=r.text("image_interpolation"), image_resize_mode=r.text("image_resize_mode"),
            tokenizer=TokenizerSpec.from_json(r.inner("tokenizer")),
            context_length=r.count("context_length", low=1), max_words=r.count("max_words", low=2),
            head_heads=r.count("head_heads", False, None, low=1),
            prompt=PromptSpec.from_json(prompt, source) if "prompt" in data else None,
            eval_sampling=r.text("eval_sampling", False, "uniform", choices=SAMPLINGS),
            trained_on=r.mapping("trained_on", False, nullable=True),
            swa=SwaRecord.from_json(r.inner("swa")) if data.get("swa") is not None else None,
            interpolation=(InterpolationRecord.from_json(r.inner("interpolation"))
                           if data.get("interpolation") is not None else None),
            open_clip_version=r.text("open_clip_version", False, nullable=True),
            transformers_version=r.text("transformers_version", False, nullable=True),
            format_version=version,
            other={k: copy.deepcopy(v) for k, v in data.items() if k not in _KNOWN},
        )
        spec.check_text_fits(source)
        return spec

    def check_text_fits(self, source: str) -> None:
        """``ModelFolderError`` unless a caption of ``max_words`` tokens (and the prompts) fit the
        text tower's positions: what training checked, before anything is allocated."""
        if self.max_words > self.tokenizer.context_length:
            raise ModelFolderError(f"{source}: 'max_words'={self.max_words} exceeds the tokenizer's context length "
                                   f"{self.tokenizer.context_length}")
        if self.prompt is not None and self.max_words + self.prompt.prefix + self.prompt.suffix > self.context_length:
            raise ModelFolderError(f"{source}: 'prompt': max_words={self.max_words} + prompt prefix "
                                   f"{self.prompt.prefix} + suffix {self.prompt.suffix} exceed the text tower's "
                                   f"{self.context_length} positions")

    def to_json(self) -> dict[str, Any]:
        """``config.json``'s object: the keys and order earlier releases wrote, then the records."""
        out: dict[str, Any] = {
            "format": FORMAT, "format_version": self.format_version, "clip": self.clip.to_json(),
            "head": self.head, "head_layers": self.head_layers, "head_input_norm": self.head_input_norm,
            **({"head_heads": self.head_heads} if self.head_heads is not None else {}),
            "head_init_from_text": self.head_init_from_text, "num_frames": self.num_frames,
            "embed_dim": self.embed_dim, "image_size": self.image_size, "image_mean": list(self.image_mean),
            "image_std": list(self.image_std), "image_interpolation": self.image_interpolation,
            "image_resize_mode": self.image_resize_mode, "tokenizer": self.tokenizer.to_json(),
            "context_length": self.context_length, "max_words": self.max_words,
        }
        if self.prompt is not None:
            out["prompt"] = self.prompt.to_json()
        for key in ("open_clip_version", "transformers_version"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["eval_sampling"] = self.eval_sampling
        if self.trained_on is not None:
            out["trained_on"] = copy.deepcopy(self.trained_on)
        for key in ("swa", "interpolation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_json()
        out.update((k, copy.deepcopy(v)) for k, v in self.other.items() if k not in out)
        return out

    def arch_json(self) -> dict[str, Any]:
        """The part of ``to_json()`` that defines the network (``ARCH_KEYS``)."""
        return {k: v for k, v in self.to_json().items() if k in ARCH_KEYS}


_KNOWN = {"format", *(f for f in ModelSpec.__dataclass_fields__ if f != "other")}
