"""A stand-in for pretrained CLIP weights: a tiny image-text CLIP pretrained on still pictures of the
demo world, for the machines (CI, this project's own) that have no real pretrained CLIP.

Why: the toolkit's claims about *pretrained* CLIPs - zero-shot recognition, prompt tuning on a
frozen backbone, weight-space patching (Open-VCLIP) - need a CLIP that already ties images to words
before it sees a video. Real weights (``ViT-B-32`` + ``openai``) cannot be downloaded here, so this
module makes a small one that plays their part, and says so: it is *not* OpenAI's CLIP, only an
image CLIP pretrained the way CLIP is (contrastive image-caption pairs, open_clip's own model and
``open_clip.loss.ClipLoss``), on a world it can learn in minutes on a CPU.

What it learns from: one still frame per example, rendered with the demo's own functions
(``caption.demo.render``: backgrounds, object colours, the five shapes, anti-aliasing) at a random
position and size, for every (colour, shape) pair of an *extended* palette - the demo's 6 colours x 5
shapes plus colours (``EXTRA_COLOURS``) and shapes (``EXTRA_SHAPES``, drawn by masks defined here)
that the demo videos never use - with captions naming the colour and the shape ("a photo of a red
star", "a cyan ring on a slate background"; a quarter name only one of them, "a red shape", "a
star", as web captions often do). It never sees a video, so it knows colour and shape but nothing
about motion: the direction of a demo clip is in its frame order, which a still cannot show.

The architecture is ``tiny_demo.yaml``'s ``clip.custom`` (``STANDIN_ARCH``). The checkpoint is an
open_clip state dict (``.safetensors``, or ``.pt``), loaded by the toolkit like any other CLIP
checkpoint file: ``clip.custom=<the arch> clip.pretrained=standin.safetensors`` (strictly).

    python -m benchmarks.standin --output standin.safetensors      # about 5 minutes on 2 cores
    python -m benchmarks.standin --where --output standin_where.safetensors

``--where``: captions may also name the object's place and size ("a small red star on the left").
Without it the image features learn to ignore place and size - exactly what a motion changes - and
fine-tuning on the demo videos learns motion slowly (BENCHMARKS.md, "Issue 15's recipes on the
stand-in"); a real CLIP's features keep them coarsely, as the ``--where`` stand-in's do.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from caption.demo.captions import COLOURS, SHAPES
from caption.demo.render import BACKGROUNDS_NAMES, Trajectory, object_colour, render_background, render_frames

# Extra hues, well apart from the demo's six and from the background names ("brown", "black" and the
# greys are backgrounds, so they are no object colour: a caption would name both).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (250, 125, 185), "cyan": (30, 210, 225), "white": (245, 245, 240), "lime": (165, 240, 40),
}
EXTRA_SHAPES: list[str] = ["diamond", "heart", "hexagon", "ring"]
STANDIN_COLOURS: list[str] = COLOURS + list(EXTRA_COLOURS)
STANDIN_SHAPES: list[str] = SHAPES + EXTRA_SHAPES
_COLOUR_JITTER = 10  # as the demo's object colours (render._COLOUR_JITTER)

# Object sizes (fraction of the frame side). The demo videos show 0.34-0.48 (moving, still) and
# 0.18-0.62 (grow/shrink); below a quarter of 64 px a shape is a few pixels, and including those
# slowed shape learning (0.42 against 0.59 after 600 steps; BENCHMARKS.md, the stand-in CLIP).
SIZE_RANGE = (0.24, 0.62)
IMAGE_SIZE = 64


def _standin_arch() -> dict[str, Any]:
    """The demo's tiny CLIP architecture, read from ``tiny_demo.yaml`` (the one copy of it)."""
    from caption.config import load
    from caption.demo.run import CONFIG_PATH

    return dict(load(CONFIG_PATH).clip.custom)


# ----------------------------------------------------------------------------------------------
# The extra shapes and still pictures
# ----------------------------------------------------------------------------------------------


def _heart_inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # The quartic heart (u^2 + v^2 - 1)^3 <= u^2 v^3 (v up), whose box is about u in [-1.14, 1.14],
    # v in [-1, 1.24]; scaled to a 0.96-wide box and centred on it.
    s = 0.96 / 2.28
    u, v = x / s, -y / s + 0.12
    return (u * u + v * v - 1) ** 3 - u * u * v ** 3 <= 0


_SQRT3 = math.sqrt(3.0)
# Point-in-shape tests in units of the object's size (its diameter), centred, y down, as
# ``render._inside`` for the demo's shapes.
EXTRA_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "diamond": lambda x, y: np.abs(x) / 0.36 + np.abs(y) / 0.5 <= 1,  # a rhombus, taller than wide
    "heart": _heart_inside,
    "hexagon": lambda x, y: (np.abs(y) <= _SQRT3 / 2 * 0.48) & (_SQRT3 * np.abs(x) + np.abs(y) <= _SQRT3 * 0.48),
    "ring": lambda x, y: (x * x + y * y <= 0.47 ** 2) & (x * x + y * y >= 0.29 ** 2),
}


def shape_mask(shape: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool: which pixel centres a centred ``shape`` filling the frame covers."""
    grid = (np.arange(size) + 0.5) / size - 0.5
    if shape in EXTRA_MASKS:
        return EXTRA_MASKS[shape](grid[None, :], grid[:, None])
    still = Trajectory(np.array([0.5]), np.array([0.5]), np.array([1.0]))
    frame = render_frames(shape, (255, 255, 255), np.zeros((size, size, 3), np.float32), still, supersample=1)
    return frame[0, ..., 0] > 127


def colour_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    """An object colour of the extended palette with the demo's per-object jitter."""
    if colour in EXTRA_COLOURS:
        base = np.asarray(EXTRA_COLOURS[colour], dtype=np.float32)
        return np.clip(base + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, size=3), 0, 255)
    return object_colour(colour, rng)


def render_object(shape: str, rgb: np.ndarray, background: np.ndarray, traj: Trajectory) -> np.ndarray:
    """(frames, H, W, 3) uint8: any shape of the extended palette along ``traj`` (the demo's shapes
    through ``render.render_frames`` itself, so they are the very pixels its videos show)."""
    if shape in EXTRA_MASKS:
        return render_frames(shape, np.asarray(rgb, dtype=np.float32), background, traj, inside=EXTRA_MASKS[shape])
    return render_frames(shape, rgb, background, traj)


def render_still(colour: str, shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE
                 ) -> tuple[np.ndarray, str, Trajectory]:
    """One still picture ``(image (size, size, 3) uint8, background name, where: its one-frame
    trajectory)``: the object at a random position and size (``SIZE_RANGE``, fully in view) over a
    random demo background."""
    background = BACKGROUNDS_NAMES[int(rng.integers(len(BACKGROUNDS_NAMES)))]
    rgb = colour_rgb(colour, rng)
    d = rng.uniform(*SIZE_RANGE)
    margin = d / 2 + 0.02
    cx, cy = rng.uniform(margin, 1 - margin, size=2)
    traj = Trajectory(np.array([cx]), np.array([cy]), np.array([d]))
    return render_object(shape, rgb, render_background(background, size, rng), traj)[0], background, traj


# Captions: most name colour and shape; a quarter name one of them, so "a red shape" or "a star"
# (single-attribute prompts) mean something to the text tower.
_BOTH = ["a photo of {cs}", "{cs}", "a picture of {cs}", "{cs} on a {bg} background", "the {c} {s}",
         "a photo of {cs} on a {bg} background", "{cs} against a {bg} backdrop", "an image of {cs}"]
_COLOUR_ONLY = ["{c_shape}", "a photo of {c_shape}", "{c_shape} on a {bg} background", "something {c}"]
_SHAPE_ONLY = ["{a_s}", "a photo of {a_s}", "{a_s} on a {bg} background", "the {s}"]


def with_article(phrase: str) -> str:
    """``phrase`` after "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def make_caption(colour: str, shape: str, background: str, rng: np.random.Generator,
                 where: Trajectory | None = None) -> str:
    """One caption of a still: colour and shape (three in four), or only one of them. With
    ``where`` (the still's position and size), half the captions also say where the object is
    ("on the left", "at the top") and half how big it is ("a small red star")."""
    kind = rng.random()
    pool = _BOTH if kind < 0.75 else _COLOUR_ONLY if kind < 0.875 else _SHAPE_ONLY
    c, s, place = colour, shape, ""
    if where is not None:
        if rng.random() < 0.5:  # the size word goes before the first attribute the template names
            big = _size_word(float(where.size[0]))
            c, s = (f"{big} {colour}", shape) if kind < 0.875 else (colour, f"{big} {shape}")
        if rng.random() < 0.5:  # and the place at the end, with no background (16 tokens hold no more)
            place = " " + _place_phrase(float(where.cx[0]), float(where.cy[0]))
            pool = [t for t in pool if "{bg}" not in t]
    template = pool[int(rng.integers(len(pool)))]
    text = template.format(cs=with_article(f"{c} {s}"), c=c, s=s, bg=background, c_shape=with_article(f"{c} shape"),
                           a_s=with_article(s))
    return text + place


def _size_word(d: float) -> str:
    low, high = SIZE_RANGE
    return "small" if d < low + (high - low) / 2 else "big"


def _place_phrase(cx: float, cy: float) -> str:
    """Where a still's object is, by its larger offset from the centre."""
    if abs(cx - 0.5) >= abs(cy - 0.5):
        return "on the left" if cx < 0.5 else "on the right"
    return "at the top" if cy < 0.5 else "at the bottom"


def all_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair of the extended palette."""
    return [(c, s) for c in STANDIN_COLOURS for s in STANDIN_SHAPES]


def still_batch(pairs: Sequence[tuple[str, str]], rng: np.random.Generator, size: int = IMAGE_SIZE,
                where: bool = False) -> tuple[np.ndarray, list[str]]:
    """``(images (B, size, size, 3) uint8, captions)``: one still and caption per pair, in order
    (with ``where``, captions may also name the object's place and size: ``make_caption``)."""
    images, captions = [], []
    for colour, shape in pairs:
        image, background, traj = render_still(colour, shape, rng, size)
        images.append(image)
        captions.append(make_caption(colour, shape, background, rng, traj if where else None))
    return np.stack(images), captions


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's training recipe: no weight decay on gains, biases, embeddings and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def save_checkpoint(model: torch.nn.Module, output_file: Path) -> Path:
    """Write ``model``'s state dict atomically: safetensors for ``.safetensors``, else ``torch.save``
    of the plain tensor dict (loadable with ``weights_only=True``)."""
    from retrieval_pretrain.foundation.atomic import write_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if output_file.suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_file(output_file, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    return write_file(output_file, lambda tmp: torch.save(state, tmp))


def _fresh_model(arch: dict[str, Any], seed: int) -> torch.nn.Module:
    """The stand-in's randomly initialised CLIP, in train mode, its token embedding frozen."""
    from retrieval_pretrain.modeling.backbones import clip_from_arch

    torch.manual_seed(seed)
    model = clip_from_arch(arch).train()
    # The from-scratch token embedding stays at its random init, as in the demo's stage 1: Adam moves a
    # rarely seen row by about the learning rate each time, so the words that carry colour and shape
    # would keep moving while the image tower tries to align with them (BENCHMARKS.md, "a frozen
    # token embedding"). Random 128-d rows are already distinct codes; the text layer above learns.
    model.token_embedding.weight.requires_grad_(False)
    return model


def train_standin(output_file: str | Path, steps: int = 1000, seed: int = 0, batch_size: int | None = None,
                  lr: float = 2e-3, weight_decay: float = 0.1, warmup: int = 30, progress: bool = True,
                  arch: dict[str, Any] | None = None, where: bool = False) -> Path:
    """Pretrain the stand-in CLIP and write its open_clip state dict to ``output_file``.

    A stand-in for pretrained CLIP weights (see the module docstring): open_clip's ``CLIP`` of
    ``arch`` (default: ``tiny_demo.yaml``'s ``clip.custom``), trained from scratch with
    ``open_clip.loss.ClipLoss`` on still pictures of the extended palette (``all_pairs``), rendered
    afresh each step. Each batch holds ``batch_size`` distinct (colour, shape) pairs (default: all
    90), so two pictures of a batch never share their full caption meaning. AdamW, linear warm-up then cosine
    decay, the temperature clamped at 100 as open_clip does. Seeded: the same arguments give the
    same weights on the same machine.

    Args:
        output_file: ``.safetensors`` (safetensors) or any other suffix (``torch.save`` state dict).
        steps: optimizer steps (1,000 at batch 90: about 5 minutes on 2 CPU cores; shape is learnt
            late, from 0.46 zero-shot on held-out stills at step 400 to 0.96 at 1,000).
        seed: seeds the initialisation and the pictures.
        batch_size: pictures per step, at most (and by default) ``len(all_pairs())``.
        lr / weight_decay / warmup: AdamW's peak learning rate, decay and warm-up steps.
        progress: show a progress bar on stderr.
        arch: an open_clip architecture dict; the default is the demo's.
        where: captions may also say where the object is and how big (``make_caption``), so the
            image features keep position and size, as a real CLIP's do coarsely (off by default).

    Returns the path written.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    from retrieval_pretrain.modeling.backbones import tokenizer_spec
    from retrieval_pretrain.modeling.clip_tokenizer import ClipTokenizer
    from retrieval_pretrain.reading.transforms import normalise_frames

    pairs = all_pairs()
    batch_size = len(pairs) if batch_size is None else batch_size
    if not 2 <= batch_size <= len(pairs):
        raise ValueError(f"batch_size={batch_size}: between 2 and the {len(pairs)} (colour, shape) pairs")
    if steps < 1:
        raise ValueError(f"steps={steps}: at least 1")
    arch = arch if arch is not None else _standin_arch()
    model = _fresh_model(arch, seed)
    image_size = int(arch["vision_cfg"]["image_size"])
    spec = tokenizer_spec(arch)
    tokenize = ClipTokenizer(spec, spec["context_length"])
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, steps - warmup)))))
    bar = tqdm(range(steps), desc="stand-in CLIP", unit="step", file=sys.stderr, disable=not progress)
    for step in bar:
        rng = np.random.default_rng([seed, step])
        batch = [pairs[i] for i in rng.choice(len(pairs), batch_size, replace=False)]
        images, captions = still_batch(batch, rng, image_size, where=where)
        x = normalise_frames(torch.from_numpy(images).permute(0, 3, 1, 2), OPENAI_DATASET_MEAN,
                             OPENAI_DATASET_STD)  # (B, 3, S, S)
        image_features, text_features, scale = model(x, tokenize(captions))  # (B, D), (B, D), ()
        loss = loss_fn(image_features, text_features, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{scale.item():.1f}")
    bar.close()
    return save_checkpoint(model.eval(), Path(output_file))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.standin --output FILE``: train and write the stand-in CLIP."""
    parser = argparse.ArgumentParser(description="Pretrain the stand-in CLIP (a tiny image CLIP on stills of the "
                                                 "demo world; no real pretrained weights are used or needed).")
    parser.add_argument("--output", required=True, type=Path, help="checkpoint file (.safetensors or .pt)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="default: every (colour, shape) pair once")
    parser.add_argument("--where", action="store_true",
                        help="captions may also name the object's place and size (\"a small red star on the left\")")
    args = parser.parse_args(argv)
    # Checked before minutes of training, not when the file is finally written.
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: at least 1")
    if args.batch_size is not None and not 2 <= args.batch_size <= len(all_pairs()):
        parser.error(f"--batch-size {args.batch_size}: between 2 and the {len(all_pairs())} (colour, shape) pairs")
    if args.output.is_dir():
        parser.error(f"--output {args.output}: a folder; give a checkpoint file name (e.g. standin.safetensors)")
    if not args.output.parent.is_dir() or not os.access(args.output.parent, os.W_OK):
        parser.error(f"--output {args.output}: its folder {args.output.parent} does not exist or is not writable")
    start = time.perf_counter()
    path = train_standin(args.output, steps=args.steps, seed=args.seed, batch_size=args.batch_size, where=args.where)
    print(f"stand-in CLIP written to {path} in {time.perf_counter() - start:.0f} s; load it with "
          f"clip.custom=<tiny_demo.yaml's clip.custom> clip.pretrained={path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
