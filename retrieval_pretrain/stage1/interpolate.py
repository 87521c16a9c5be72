"""Open-VCLIP's weight interpolation (Weng et al., ICML 2023), after weight-space patching (Ilharco
et al., 2022): three ways of staying close to the CLIP a video model started from.

* **Patching** (``vcap interpolate``, ``interpolate_folders``): ``alpha * base + (1 - alpha) *
  finetuned`` for every tensor the two models share (same name and shape); what only the
  fine-tuned model has (the temporal head) is kept from it. The base is a stage-1 model folder,
  an open_clip checkpoint file of the fine-tuned model's CLIP architecture, or a pretrained tag of
  its open_clip model (``openai``). Its CLIP tensors must match the fine-tuned model's one for one.
  The output folder is swapped in whole, so it must be new, empty, or an interpolated model folder
  holding nothing else (``INTERPOLATED``, ``ownership.write_owned_folder``): a run folder, a trained
  or caption model folder, a folder of other files is refused untouched.
* **Interpolation-regularised training** (``pretrain.interpolation``, ``InterpolationRegulariser``):
  each step also takes the loss at ``ratio * base + (1 - ratio) * theta`` with ``ratio ~ U(low,
  high)`` and adds ``weight`` times its gradient. As in the paper's implementation
  (``tools/train_net.py`` of wengzejia1/Open-VCLIP), that gradient is taken *with respect to the
  interpolated point* and added as it is - not chained through the interpolation, which would
  scale it by ``1 - ratio``. The weights are swapped back afterwards (the very tensors, no
  arithmetic), so the optimizer steps from theta.
* **Weight averaging** (``pretrain.swa``, ``WeightAverage``): the mean of the weights at the end of
  each epoch from ``start_epoch`` on becomes the final model.

Only the backbone (CLIP's own tensors: ``parts.param_groups``'s CLIP side) is pulled towards the
base while training; new layers have no CLIP counterpart.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from open_clip.factory import load_state_dict
from open_clip.pretrained import get_pretrained_cfg

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.ownership import FolderKind, claim_folder, holds_only, write_owned_folder
from retrieval_pretrain.modeling.backbones import build_clip, clip_from_arch
from retrieval_pretrain.modeling.model_folder import CONFIG_NAME, WEIGHTS_NAME, from_pretrained, save_pretrained
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.modeling.spec import InterpolationRecord
from retrieval_pretrain.stage1.config import ClipConfig

Weights = dict[str, torch.Tensor]


def _legacy_interpolated(folder: Path) -> bool:
    """An interpolated model folder an earlier release wrote: exactly a model folder's two files, its
    config.json recording the interpolation (a trained model's records none)."""
    try:
        info = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return (isinstance(info, dict) and isinstance(info.get("interpolation"), dict)
            and holds_only(folder, {CONFIG_NAME, WEIGHTS_NAME}))


INTERPOLATED = FolderKind("interpolated model folder", "vcap interpolate", _legacy_interpolated,
                          names=frozenset({CONFIG_NAME, WEIGHTS_NAME}))


def _is_new(model: torch.nn.Module) -> Callable[[str], bool]:
    """Which tensor names belong to layers added to CLIP (the rule of ``parts.param_groups``)."""
    return getattr(model, "new_parameter", None) or (lambda name: not name.startswith("clip."))


def _mix(base: torch.Tensor, theta: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * base + (1 - alpha) * theta``, written so that alpha 0 gives ``theta`` and alpha 1
    gives ``base`` bit for bit (``torch.lerp`` is exact at one end only)."""
    return base * alpha + theta * (1.0 - alpha)


# ----------------------------------------------------------------------------- the base weights


def _checkpoint_weights(path: str, arch: dict[str, Any], what: str) -> Weights:
    """An open_clip checkpoint file (state dict or .safetensors) loaded into the architecture
    ``arch`` the way open_clip loads it (key conversions included); a clear error naming what
    differs when it is another architecture."""
    clip = clip_from_arch(arch)
    ours = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    try:
        theirs = load_state_dict(path)
    except Exception as e:  # not a checkpoint, a pickle with code, a truncated file
        raise ConfigError(f"{what}={path}: cannot read this checkpoint file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300] if str(e) else 'unreadable'})") from None
    found = {k: tuple(v.shape) for k, v in theirs.items() if isinstance(v, torch.Tensor)}
    refused = ConfigError(f"{what}={path}: another architecture than the fine-tuned model's CLIP "
                          f"({_differences(ours, found)})")
    if any(found[k] != ours[k] for k in set(ours) & set(found)):
        raise refused  # before open_clip would resize a position table to fit
    try:
        open_clip.load_checkpoint(clip, path, strict=True)
    except (RuntimeError, AssertionError, KeyError, ValueError):
        raise refused from None
    return {f"clip.{k}": v for k, v in clip.state_dict().items()}


def _differences(ours: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]]) -> str:
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    parts = [f"{len(missing)} tensors missing, e.g. {missing[:3]}" if missing else "",
             f"{len(extra)} unexpected, e.g. {extra[:3]}" if extra else "",
             "; ".join(f"{k} is {list(theirs[k])}, not {list(ours[k])}" for k in shapes[:3])]
    return "; ".join(p for p in parts if p) or "the tensors do not load"


def load_base(source: str | Path, model: StageOneModel, what: str = "--base") -> Weights:
    """The base weights for ``model`` (a stage-1 model), under ``model``'s tensor names:

    * a stage-1 model folder: all its tensors;
    * a checkpoint file: an open_clip CLIP of ``model``'s recorded architecture (``clip.arch``);
    * an open_clip pretrained tag of ``model``'s CLIP (``openai``): loaded as ``vcap pretrain``
      loads it (downloaded or from the cache).

    The base's CLIP tensors must be ``model``'s one for one (names and shapes); ``ConfigError``
    naming ``what`` and the differences otherwise. Tensors of new layers need not match."""
    source = str(source)
    clip = model.spec.clip
    kind = clip.kind
    if os.path.isdir(source):
        base = {k: v.detach() for k, v in from_pretrained(source)[0].state_dict().items()}
    elif kind != "open_clip":
        raise ConfigError(f"{what}={source}: not a stage-1 model folder (for a clip.kind={kind} model the base must "
                          "be one)")
    elif os.path.isfile(source):
        base = _checkpoint_weights(source, clip.arch, what)
    elif clip.model and not clip.custom and get_pretrained_cfg(clip.model, source):
        tagged, *_ = build_clip(ClipConfig(model=clip.model, pretrained=source))
        base = {f"clip.{k}": v for k, v in tagged.state_dict().items()}
    else:
        raise ConfigError(f"{what}={source}: neither a stage-1 model folder, nor a checkpoint file, nor a pretrained "
                          f"tag of the model's CLIP ({clip.model or 'custom architecture'}); relative "
                          f"paths are read from {os.getcwd()}")
    check_same_backbone(base, model, f"{what}={source}")
    return base


def check_same_backbone(base: Weights, model: torch.nn.Module, where: str) -> None:
    """``ConfigError`` unless ``base`` holds exactly ``model``'s CLIP tensors, with their shapes."""
    is_new = _is_new(model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not is_new(k)}
    theirs = {k: tuple(v.shape) for k, v in base.items() if not is_new(k)}
    if ours != theirs:
        raise ConfigError(f"{where}: its CLIP is another architecture than the fine-tuned model's "
                          f"({_differences(ours, theirs)})")


# ----------------------------------------------------------------------------- patching (vcap interpolate)


def interpolate_state(finetuned: Weights, base: Weights, alpha: float) -> tuple[Weights, list[str], list[str]]:
    """``(state, interpolated names, kept names)``: ``alpha * base + (1 - alpha) * finetuned`` for
    every floating tensor both hold with the same shape; every other tensor of ``finetuned`` as it
    is (layers only it has, integer buffers)."""
    state, mixed, kept = {}, [], []
    for name, theta in finetuned.items():
        other = base.get(name)
        if other is not None and other.shape == theta.shape and theta.is_floating_point():
            state[name] = _mix(other.to(theta.device, theta.dtype), theta, alpha)
            mixed.append(name)
        else:
            state[name] = theta
            kept.append(name)
    return state, mixed, kept


def check_alpha(alpha: float, what: str = "--alpha") -> float:
    """``alpha`` if it is a number in [0, 1]; ``ConfigError`` otherwise."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"{what} {alpha!r}: must be a number in [0, 1] (0 keeps the fine-tuned weights, 1 takes "
                          "the base's)")
    return float(alpha)


def interpolate_folders(base: str | Path, finetuned: str | Path, alpha: float, output: str | Path) -> dict[str, Any]:
    """Write the stage-1 model folder ``output``: the fine-tuned model ``finetuned`` (a stage-1
    folder) with its shared tensors interpolated towards ``base`` (see ``load_base``), its
    config.json kept and ``interpolation: {base, finetuned, alpha}`` recorded. Returns a summary."""
    alpha = check_alpha(alpha)
    output, finetuned = Path(output), Path(finetuned)
    for name, path in (("--finetuned", finetuned), ("--base", Path(base))):
        if path.exists() and output.resolve() == path.resolve():
            raise ConfigError(f"--output {output} is the {name} model itself; give a new folder")
    claim_folder(output, INTERPOLATED, write=False)  # before any model is read; checked again when written
    model, spec = from_pretrained(finetuned)
    weights = load_base(base, model)
    state, mixed, kept = interpolate_state(model.state_dict(), weights, alpha)
    model.load_state_dict(state, strict=True)
    record = replace(spec, interpolation=InterpolationRecord(str(base), str(finetuned), alpha))
    # save_pretrained swaps its folder in place of the (empty) temporary one; the ownership record joins it there
    write_owned_folder(output, INTERPOLATED, lambda tmp: save_pretrained(model, tmp, record))
    return {"output": str(output), "base": str(base), "finetuned": str(finetuned), "alpha": alpha,
            "interpolated_tensors": len(mixed), "kept_tensors": len(kept)}


# ----------------------------------------------------------------------------- training with interpolation


class InterpolationRegulariser:
    """Open-VCLIP's interpolated weight optimisation for one training run.

    ``backward`` draws ``ratio ~ U(low, high)`` from its own generator (its state is saved with
    every checkpoint: ``state_dict``), sets every trainable CLIP parameter that ``base`` holds to
    ``ratio * base + (1 - ratio) * theta``, runs ``loss_of()`` and backpropagates ``weight`` times it
    - the gradient at the interpolated point accumulates into ``.grad`` beside the ordinary one -
    then puts the original tensors back. It runs first, outside gradient synchronisation (the
    ordinary backward then all-reduces the sum) and inside ``torch.random.fork_rng``, so the
    ordinary pass draws the random numbers it draws without it (dropout masks are shared).
    Not for sharded models (FSDP, DeepSpeed ZeRO-3), whose parameters are not whole tensors."""

    def __init__(self, model: torch.nn.Module, base: Weights, low: float, high: float, weight: float,
                 seed: int) -> None:
        model = getattr(model, "module", model)
        is_new = _is_new(model)
        self.pairs = [(p, base[n].to(p.device, p.dtype).clone()) for n, p in model.named_parameters()
                      if p.requires_grad and not is_new(n) and n in base and base[n].shape == p.shape]
        self.low, self.high, self.weight = float(low), float(high), float(weight)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_loss = float("nan")

    def draw(self) -> float:
        """The next interpolation ratio, uniform in ``[low, high]``."""
        return self.low + (self.high - self.low) * float(torch.rand((), generator=self.generator))

    def backward(self, accelerator: Any, model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Add ``weight`` times the gradient of ``loss_of()`` at the interpolated weights to the
        parameters' ``.grad``; returns that loss (detached). The parameters are theta again after."""
        ratio = self.draw()
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        sync = accelerator.no_sync(model) if accelerator.num_processes > 1 else nullcontext()
        originals = [p.data for p, _ in self.pairs]
        with sync, torch.random.fork_rng(devices=devices):
            try:
                with torch.no_grad():
                    for p, b in self.pairs:
                        p.data = _mix(b, p.data, ratio)
                loss = loss_of()
                accelerator.backward(loss * self.weight)
            finally:
                for (p, _), theta in zip(self.pairs, originals):
                    p.data = theta
        self.last_loss = float(loss.detach())
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the ratio generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


# ----------------------------------------------------------------------------- weight averaging


class WeightAverage:
    """The running sum (float64, on the CPU) of a model's floating tensors at the end of each epoch
    from ``start_epoch`` (counted from 0, as ``log.jsonl``) on; ``averaged`` is their mean. Its state
    goes into every checkpoint, so a resumed run averages the same weights."""

    def __init__(self, start_epoch: int) -> None:
        self.start_epoch = int(start_epoch)
        self.count = 0
        self.sums: Weights = {}

    def update(self, model: torch.nn.Module, epoch: int) -> None:
        """Add ``model``'s weights at the end of ``epoch`` (from ``start_epoch`` on)."""
        if epoch < self.start_epoch:
            return
        model = getattr(model, "module", model)
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if not value.is_floating_point():
                    continue
                value = value.detach().to("cpu", torch.float64)
                if name in self.sums:
                    self.sums[name] += value
                else:
                    self.sums[name] = value.clone()
        self.count += 1

    def averaged(self, model: torch.nn.Module) -> Weights:
        """``model``'s state dict with every averaged tensor replaced by the mean (in its dtype)."""
        model = getattr(model, "module", model)
        if not self.count:
            raise ValueError("no epoch has been averaged yet")
        return {name: (self.sums[name] / self.count).to(value.device, value.dtype) if name in self.sums else value
                for name, value in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"start_epoch": self.start_epoch, "count": self.count, "sums": self.sums}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_epoch, self.count, self.sums = int(state["start_epoch"]), int(state["count"]), dict(state["sums"])
