"""Stage-1 model folders: ``save_pretrained`` writes and ``from_pretrained`` reads them.

A model folder holds exactly two files:

* ``config.json``: the model's ``spec.ModelSpec`` (``spec.to_json()``) - everything needed to
  rebuild the network without any download (the resolved open_clip architecture dict as
  ``clip.arch``; for ``clip.kind=xclip`` the resolved ``XCLIPConfig`` dict), the temporal head,
  frames, image size and normalisation, the tokenizer and ``max_words``, the prompt lengths of a
  prompt-tuned model, how it samples frames (``eval_sampling``) and where it came from.
* ``model.safetensors``: all weights, CLIP towers and head (the fine-tuned video tower).

The folder is written whole through ``atomic.write_folder``; loading is strict: config.json is read
by the checked ``ModelSpec.from_json``, the network built by ``parts.build_model`` (the builder
training uses), and a missing or unexpected tensor is a ``ModelFolderError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import open_clip
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from retrieval_pretrain.foundation.atomic import write_folder
from retrieval_pretrain.foundation.errors import ConfigError, ModelFolderError, check_finite
from retrieval_pretrain.foundation.hub import resolve_model_folder
from retrieval_pretrain.modeling.parts import StageOneModel, build_model, check_spec_fits
from retrieval_pretrain.modeling.spec import FORMAT, FORMAT_VERSION, ModelSpec  # noqa: F401  (re-exported)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: StageOneModel, folder: str | Path, spec: ModelSpec | None = None) -> Path:
    """Write ``folder/config.json`` (``spec``, default ``model.spec``, stamped with the library
    version that builds its backbone) + ``folder/model.safetensors``, swapped in whole
    (``atomic.write_folder``: a reader sees the old complete folder or the new one, never a mix).
    ``ValueError`` when the model has no spec or ``spec`` contradicts the network (e.g. another
    ``num_frames``). Records (``eval_sampling``, ``trained_on``, ...) are set on the spec first:
    ``save_pretrained(model, folder, replace(model.spec, trained_on=...))``."""
    model = getattr(model, "module", model)
    spec = spec or getattr(model, "spec", None)
    if spec is None:
        raise ValueError("this model was not built by retrieval_pretrain.modeling.parts (no spec); build it with "
                         "build_video_text_model or build_model")
    check_spec_fits(model, spec)
    versions = ({"transformers_version": transformers.__version__} if spec.is_xclip
                else {"open_clip_version": open_clip.__version__})
    text = json.dumps(replace(spec, **versions).to_json(), indent=2) + "\n"  # fails before a file is touched

    def fill(tmp: Path) -> None:
        # save_model drops duplicate views of shared storage, which safetensors refuses.
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(text)

    return write_folder(folder, fill)


def read_spec(folder: str | Path) -> ModelSpec:
    """The checked spec of the model folder ``folder`` (a path, or a Hub id ``org/name[@revision]``:
    ``foundation.hub``; nothing built); ``ModelFolderError`` naming the folder or config.json (and
    the key) when it is missing or malformed."""
    folder = resolve_model_folder(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is not a stage-1 model folder: {', '.join(missing)} missing "
                               f"(save_pretrained writes {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        data = json.loads((folder / CONFIG_NAME).read_text())
    except (ValueError, RecursionError, OSError) as e:  # JSON, UTF-8, nesting, a folder in its place
        raise ModelFolderError(f"{folder / CONFIG_NAME}: not valid JSON ({type(e).__name__}: {e})") from None
    return ModelSpec.from_json(data, folder / CONFIG_NAME)


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> tuple[StageOneModel, ModelSpec]:
    """Load a model folder: ``(model in eval mode on device, its spec)`` (the spec is ``model.spec``).

    The architecture is rebuilt from ``config.json`` alone (never downloads) by ``parts.build_model``
    and every weight is loaded strictly from ``model.safetensors``. ``ModelFolderError`` names the
    folder or file (and the config key) when something is missing, malformed or corrupt.
    """
    folder = resolve_model_folder(folder)  # a Hub id: its cached snapshot (foundation.hub)
    spec = read_spec(folder)
    try:
        model = build_model(spec)
    except (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError) as e:
        raise ModelFolderError(f"{folder / CONFIG_NAME}: cannot build the architecture it describes ({e})") from e
    weights = folder / WEIGHTS_NAME
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights}: cannot load the weights ({type(e).__name__}: {e})") from e
    check_finite(model.state_dict().items(), str(weights))
    return model.to(device).eval(), model.spec


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


def init_weights_from(model: StageOneModel, folder: str | Path) -> None:
    """Copy every weight of the stage-1 model folder ``folder`` into ``model`` (strictly: the two
    must have the same architecture); ``ConfigError`` naming what differs otherwise."""
    source, _ = from_pretrained(folder)
    theirs, ours = source.state_dict(), model.state_dict()
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape]
    if missing or extra or shapes:
        raise ConfigError(f"pretrain.init_from={folder}: another architecture than this config's "
                          f"({len(missing)} tensors missing, e.g. {missing[:3]}; {len(extra)} unexpected, e.g. "
                          f"{extra[:3]}; {len(shapes)} of other shapes, e.g. {sorted(shapes)[:3]})")
    model.load_state_dict(theirs, strict=True)
