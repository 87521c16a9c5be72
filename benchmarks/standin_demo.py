"""The stand-in for pretrained CLIP weights (``benchmarks.standin``), shown to be "pretrained": it is
trained on still pictures only, then recognises colour and shape zero-shot on held-out stills and
on videos it has never seen as videos - the demo world's clips and clips of the extra colours and
shapes the demo videos never use - and knows nothing about motion (chance).

    python -m benchmarks.standin_demo --output /tmp/standin_bench            # about 8 minutes on 2 cores
    python -m benchmarks.standin_demo --output OUT --data vcap_demo/data     # a demo's own test clips

Videos go through the toolkit's own recognition: the stand-in loaded as a stage-1 model
(``clip.custom`` = the demo's architecture, ``clip.pretrained`` = the stand-in file, a ``meanP``
head, saved with ``model_folder.save_pretrained``), read back with ``load_recognizer`` and scored
by ``evaluate_classification`` (what ``vcap eval-classify`` runs) on a ``labels``-format table per
attribute. Without ``--data`` the demo videos are generated: every (colour, shape, motion)
combination of the demo once (210 clips, ``DemoSpec`` seed 0).

Label phrases are those of ``benchmarks/zero_shot_demo.py`` ("a red shape", "a star", "a shape
moving left"); the label set of colour and shape is the extended palette (the extra colours and
shapes are distractors on demo clips), and, for demo clips, also the demo palette alone.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmarks import standin
from caption.config import load
from caption.demo.captions import COLOURS, MOTIONS, SHAPES
from caption.demo.data import DemoSpec, generate_dataset
from caption.demo.render import BACKGROUNDS_NAMES, render_background, sample_trajectory, write_mp4
from caption.demo.run import CONFIG_PATH
from vcap_toolkit.jobs.recognition import TEMPLATES, class_embeddings, evaluate_classification, load_recognizer

# Templates in the stand-in's own caption style (a pretrained CLIP is prompted in its captions' style).
STANDIN_TEMPLATES: tuple[str, ...] = ("a photo of {}.", "{}", "an image of {}.", "a picture of {}.")
PHRASES = {
    "colour": lambda v: standin.with_article(f"{v} shape"),
    "shape": lambda v: standin.with_article(v),
    "motion": lambda v: {"still": "a shape staying still", "grow": "a shape growing",
                         "shrink": "a shape shrinking"}.get(v, f"a shape moving {v}"),
}


def _still_accuracy(checkpoint: Path, per_pair: int, seed: int, templates: Sequence[str]) -> dict[str, float]:
    """Zero-shot colour (10-way) and shape (9-way) top-1 on held-out stills, split by palette."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from retrieval_pretrain.modeling.backbones import build_clip
    from retrieval_pretrain.modeling.clip_tokenizer import ClipTokenizer
    from retrieval_pretrain.reading.transforms import normalise_frames

    cfg = load(CONFIG_PATH, [f"clip.pretrained={checkpoint}"])
    clip, _, _, spec = build_clip(cfg.clip)
    clip.eval()
    tokenize = ClipTokenizer(spec, cfg.pretrain.max_words)
    pairs = [p for p in standin.all_pairs() for _ in range(per_pair)]
    # Seeds [seed, 1, i]: a stream training (seeds [seed, step]) never draws.
    images = np.stack([standin.render_still(c, s, np.random.default_rng([seed, 1, i]))[0]
                       for i, (c, s) in enumerate(pairs)])
    with torch.no_grad():
        x = normalise_frames(torch.from_numpy(images).permute(0, 3, 1, 2), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        feats = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)  # (N, D)
    out: dict[str, float] = {}
    for attribute, values, index, demo in (("colour", standin.STANDIN_COLOURS, 0, COLOURS),
                                           ("shape", standin.STANDIN_SHAPES, 1, SHAPES)):
        classes = class_embeddings(clip, tokenize, [PHRASES[attribute](v) for v in values], templates,
                                   torch.device("cpu"))  # (C, D)
        pred = (feats @ classes.T).argmax(dim=1)
        truth = torch.tensor([values.index(p[index]) for p in pairs])
        in_demo = torch.tensor([p[index] in demo for p in pairs])
        out[f"{attribute} demo palette"] = float((pred == truth)[in_demo].float().mean())
        out[f"{attribute} extra palette"] = float((pred == truth)[~in_demo].float().mean())
    return out


def _stage1_folder(checkpoint: Path, folder: Path) -> Path:
    """The stand-in as a stage-1 model folder: the demo config's CLIP with ``clip.pretrained`` set, a
    ``meanP`` head (no new weights), written by ``save_pretrained``; its CLIP weights checked equal to
    the file's."""
    from safetensors.torch import load_file

    from retrieval_pretrain.modeling.model_folder import save_pretrained
    from retrieval_pretrain.modeling.parts import build_video_text_model

    cfg = load(CONFIG_PATH, [f"clip.pretrained={checkpoint}", "pretrain.head=meanP", "pretrain.head_input_norm=false"])
    net = build_video_text_model(cfg)
    saved = load_file(str(checkpoint)) if checkpoint.suffix == ".safetensors" else torch.load(checkpoint, weights_only=True)
    mine = net.clip.state_dict()
    assert set(saved) == set(mine) and all(torch.equal(saved[k], mine[k]) for k in saved), "CLIP weights differ"
    return save_pretrained(net, folder, replace(net.spec, trained_on={"standin_checkpoint": str(checkpoint)}))


def _extra_videos(folder: Path, seed: int, frames: int = 16, fps: int = 8) -> list[dict[str, Any]]:
    """One demo-style clip (a random demo motion) of every extended-palette pair the demo videos never
    use (an extra colour or an extra shape): rows ``{"video", "attributes"}``, mp4s under ``folder``."""
    rows = []
    extra = [(c, s) for c, s in standin.all_pairs() if c not in COLOURS or s not in SHAPES]
    for i, (colour, shape) in enumerate(extra):
        rng = np.random.default_rng([seed, 2, i])
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        background = BACKGROUNDS_NAMES[int(rng.integers(len(BACKGROUNDS_NAMES)))]
        rgb = standin.colour_rgb(colour, rng)
        traj = sample_trajectory(motion, frames, rng)
        clip = standin.render_object(shape, rgb, render_background(background, standin.IMAGE_SIZE, rng), traj)
        video = f"videos/{colour}_{shape}_{motion}_{i:04d}.mp4"
        write_mp4(folder / video, clip, fps)
        rows.append({"video": video, "attributes": {"colour": colour, "shape": shape, "motion": motion}})
    return rows


def _eval_classify(model: Path, rows: list[dict[str, Any]], videos: Path, attribute: str, values: Sequence[str],
                   templates: Sequence[str], work: Path) -> float:
    """Top-1 of ``evaluate_classification`` (``vcap eval-classify``) on ``rows`` for one attribute."""
    work.mkdir(parents=True, exist_ok=True)
    phrase = PHRASES[attribute]
    (work / "labels.jsonl").write_text("".join(json.dumps({"video": r["video"], "label": phrase(r["attributes"][attribute]),
                                                           "split": "test"}) + "\n" for r in rows))
    (work / "classes.txt").write_text("".join(phrase(v) + "\n" for v in values))
    cfg = load(CONFIG_PATH, ["data.format=labels", f"data.annotations={work / 'labels.jsonl'}", f"data.videos={videos}",
                             f"data.labels_file={work / 'classes.txt'}", "run.num_workers=2"])
    net, spec = load_recognizer(cfg, str(model), None, torch.device("cpu"))
    return float(evaluate_classification(net, spec, cfg, split="test", templates=templates, output=work)["top1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a folder for the checkpoint, model and clips")
    parser.add_argument("--data", type=Path, help="a demo data folder (its test split); default: generate one")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: every (colour, shape) pair once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stills-per-pair", type=int, default=10)
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    checkpoint = standin.train_standin(out / "standin.safetensors", steps=args.steps, seed=args.seed,
                                       batch_size=args.batch_size)
    train_s = time.perf_counter() - start
    batch = args.batch_size or len(standin.all_pairs())
    print(f"stand-in CLIP: {args.steps} steps x {batch} stills of {len(standin.all_pairs())} "
          f"(colour, shape) pairs in {train_s:.0f} s ({torch.get_num_threads()} threads)")

    for name, templates in (("stand-in templates", STANDIN_TEMPLATES), ("16-template ensemble", TEMPLATES)):
        acc = _still_accuracy(checkpoint, args.stills_per_pair, args.seed, templates)
        print(f"held-out stills ({args.stills_per_pair} per pair), {name}: " +
              ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) +
              f"  (chance colour {1 / len(standin.STANDIN_COLOURS):.3f}, shape {1 / len(standin.STANDIN_SHAPES):.3f})")

    model = _stage1_folder(checkpoint, out / "stage1_model")
    if args.data is None:
        data = out / "demo_videos"
        generate_dataset(data, DemoSpec(num_train=1, num_val=0, num_test=len(COLOURS) * len(SHAPES) * len(MOTIONS)),
                         progress=False, workers=2)
    else:
        data = args.data
    demo_rows = [r for r in map(json.loads, (data / "annotations.jsonl").read_text().splitlines()) if r["split"] == "test"]
    extra_rows = _extra_videos(out / "extra_videos", args.seed)
    sets = (("demo clips", demo_rows, data), ("extra-palette clips", extra_rows, out / "extra_videos"))
    for name, templates in (("stand-in templates", STANDIN_TEMPLATES), ("16-template ensemble", TEMPLATES)):
        for clips, rows, videos in sets:
            results = []
            for attribute, values in (("colour", standin.STANDIN_COLOURS), ("shape", standin.STANDIN_SHAPES),
                                      ("motion", MOTIONS)):
                work = out / "eval" / f"{clips.split()[0]}_{attribute}_{len(templates)}"
                top1 = _eval_classify(model, rows, videos, attribute, values, templates, work)
                results.append(f"{attribute} {top1:.3f} ({len(values)}-way)")
            if clips == "demo clips":
                for attribute, values in (("colour", COLOURS), ("shape", SHAPES)):
                    work = out / "eval" / f"demo_{attribute}_{len(templates)}_demo_palette"
                    top1 = _eval_classify(model, rows, videos, attribute, values, templates, work)
                    results.append(f"{attribute} {top1:.3f} ({len(values)}-way, demo palette)")
            print(f"{clips} ({len(rows)}), {name}: " + ", ".join(results))
    print(f"chance: motion {1 / len(MOTIONS):.3f}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
