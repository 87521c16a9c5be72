"""Issue 15's CLIP adaptation recipes at toy scale: what fine-tuning a "pretrained" CLIP on videos
keeps of what it knew, recipe by recipe, with the stand-in CLIP of ``benchmarks.standin`` (trained
on still pictures of colour and shape only: it knows colour and shape, including colours and shapes
the demo videos never show, and nothing of motion).

    python -m benchmarks.recipes_demo --output /tmp/recipes --where          # trains a --where stand-in first (~5 min)
    python -m benchmarks.recipes_demo --output /tmp/recipes --standin standin.safetensors   # all rows
    python -m benchmarks.recipes_demo --output OUT --standin S --only i ii v # a subset of rows
    python -m benchmarks.recipes_demo --output OUT --standin S --only ii --clip-lr 1e-4 --epochs 40

The protocol is Open-VCLIP's base-to-novel one, measured by the toolkit's recognition
(``evaluate_classification``, what ``vcap eval-classify`` runs; templates
``standin_demo.STANDIN_TEMPLATES``):

* fine-tuning data: the demo world's videos (``DemoSpec()``: 6 colours x 5 shapes x 7 motions,
  captions naming colour, shape and motion) - the "base" pairs;
* CLOSED-SET: motion top-1 (7-way) on the demo test clips - what fine-tuning teaches (the stand-in is
  at chance) - and colour (10-way) / shape (9-way) top-1 on the same clips;
* NOVEL ZERO-SHOT: colour (10-way) and shape (9-way) top-1 on one clip of each of the 60 pairs with
  a colour or shape of the stand-in's extra palette (``standin_demo._extra_videos``), which the
  fine-tuning videos never show;
* HM: the harmonic mean of closed-set motion and novel shape;
* test t2v R@1: caption-to-video retrieval on the 84 demo test clips (``vcap eval-retrieval``), the
  measure CLIP2TV reports;
* the motion labels' text cos: the mean cosine between the model's embeddings of the 7 motion label
  phrases (near 1: its text side cannot tell the motions apart).

Rows (``--only`` takes their ids):

* ``i``   the stand-in as it is (``meanP``, no new weights);
* ``ii``  plain fine-tuning (``retrieval_pretrain.stage1.train.train``, ``seqTransf`` head);
* ``iii`` prompt tuning (``pretrain.mode=prompt``, 2 + 2 learnt context vectors, CLIP frozen);
* ``iv``  momentum distillation (``pretrain.distill``, small-data queue);
* ``v``   weight interpolation of row ii's model towards the stand-in (``interpolate_folders``,
  ``--alphas``; alpha 0 is row ii, 1 the stand-in's CLIP with row ii's head);
* ``vi``  interpolation-regularised training (U(0, 0.6), weight 0.5) + weight averaging (SWA from
  half the epochs);
* ``vii`` row v's patching applied to row vi's model: Open-VCLIP's claim is that its training makes
  the whole interpolation path better, so this curve should lie above row v's.

Every trained row starts from the stand-in (``clip.pretrained``) with the demo config
(``tiny_demo.yaml``; its frozen token embedding kept) and the same seed, so they differ only in the
recipe. ``--set KEY=VALUE`` adds config overrides to every trained row (experiments). A trained
model (``OUTPUT/<row>/run/model``) is reused by a later call with the same settings (``--only v``
after ``ii``); other settings into the same folder are refused. All rows: about 25 minutes on 2 cores
(BENCHMARKS.md, "Adaptation recipes on the stand-in").
Prints a markdown table; writes ``OUTPUT/results.json`` (atomically; rows of other settings are dropped) and
exits 1 when a row failed. A ``--data`` folder holding anything but this script's demo set is refused, never
regenerated over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks import standin
from benchmarks import standin_demo as sd
from caption.config import load
from caption.demo.captions import MOTIONS
from caption.demo.data import DemoSpec, generate_dataset, is_complete
from caption.demo.run import CONFIG_PATH
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.modeling.backbones import build_clip

ROWS = ("i", "ii", "iii", "iv", "v", "vi", "vii")
TITLES = {"i": "(i) stand-in as is (meanP)", "ii": "(ii) plain fine-tuning", "iii": "(iii) prompt tuning",
          "iv": "(iv) momentum distillation", "v": "(v) weight interpolation of ii", "vi": "(vi) interp.-reg. + SWA",
          "vii": "(vii) weight interpolation of vi"}
METRICS = ("motion", "colour", "shape", "novel colour", "novel shape", "HM", "motion text cos", "t2v R@1")


def recipe_overrides(row: str, epochs: int) -> list[str]:
    """The config overrides that make a row's recipe (on top of the common fine-tuning ones)."""
    if row == "iii":  # the text tower's context is 16 tokens: max_words + prefix + suffix <= 16
        return ["pretrain.mode=prompt", "pretrain.prompt.prefix=2", "pretrain.prompt.suffix=2", "pretrain.max_words=12"]
    if row == "iv":  # ALBEF's momentum and alpha; a queue well under the 1,092 training videos
        return ["pretrain.distill.enabled=true", "pretrain.distill.queue_size=256", "pretrain.distill.momentum=0.99",
                "pretrain.distill.alpha=0.4"]
    if row == "vi":  # Open-VCLIP's values; SWA over the second half of the epochs
        return ["pretrain.interpolation.enabled=true", "pretrain.interpolation.low=0", "pretrain.interpolation.high=0.6",
                "pretrain.interpolation.weight=0.5", "pretrain.swa.enabled=true",
                f"pretrain.swa.start_epoch={max(epochs // 2, 0)}"]
    return []


def _hm(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def evaluate(model: Path, demo_rows: list[dict[str, Any]], demo_videos: Path, extra_rows: list[dict[str, Any]],
             extra_videos: Path, work: Path) -> dict[str, float]:
    """The row's metrics (see the module docstring), all through ``standin_demo._eval_classify``."""
    def top1(rows: list[dict[str, Any]], videos: Path, attribute: str, values: list[str], name: str) -> float:
        return sd._eval_classify(model, rows, videos, attribute, values, sd.STANDIN_TEMPLATES, work / name)

    out = {"motion": top1(demo_rows, demo_videos, "motion", MOTIONS, "demo_motion"),
           "colour": top1(demo_rows, demo_videos, "colour", standin.STANDIN_COLOURS, "demo_colour"),
           "shape": top1(demo_rows, demo_videos, "shape", standin.STANDIN_SHAPES, "demo_shape"),
           "novel colour": top1(extra_rows, extra_videos, "colour", standin.STANDIN_COLOURS, "novel_colour"),
           "novel shape": top1(extra_rows, extra_videos, "shape", standin.STANDIN_SHAPES, "novel_shape")}
    out["HM"] = _hm(out["motion"], out["novel shape"])
    return out


def fine_tune(row: str, folder: Path, common: list[str], epochs: int) -> tuple[Path, float, bool]:
    """``(model folder, stage-1 seconds, reused)``: row ``row``'s run into ``folder/run`` (reused when
    its model exists: its seconds are read back from ``folder/seconds.json``)."""
    from retrieval_pretrain.stage1.train import train

    model, seconds_file = folder / "run" / "model", folder / "seconds.json"
    overrides = common + recipe_overrides(row, epochs)
    done = _read_json(seconds_file)  # written (atomically) last: the run finished
    if (model / "config.json").is_file() and done is not None:
        given = _read_json(folder / "overrides.json")
        if given != overrides:
            raise SystemExit(f"{folder} holds row {row}'s model trained with other settings "
                             f"({' '.join(given or ['unreadable overrides.json'])}); give another --output, or "
                             "delete that folder to retrain")
        return model, done["stage1_s"], True
    if (folder / "run").exists():
        shutil.rmtree(folder / "run")  # an unfinished run (interrupted, or failed)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load(CONFIG_PATH, overrides)
    write_json(folder / "overrides.json", overrides)
    start = time.perf_counter()
    model = train(cfg, folder / "run")
    seconds = time.perf_counter() - start
    write_json(seconds_file, {"stage1_s": seconds})
    return model, seconds, False


def _read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (a run killed before writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _line(name: str, m: dict[str, float] | None, seconds: float | None, note: str = "") -> str:
    cells = [f"{m[k]:.3f}" if k in m else "-" for k in METRICS] if m else ["-"] * len(METRICS)
    shown = "-" if seconds is None else f"{seconds:.1f}" if 0 < seconds < 10 else f"{seconds:.0f}"
    return f"| {name} | " + " | ".join(cells) + f" | {shown} | {note} |"


def table(results: dict[str, Any]) -> str:
    head = ("| row | closed motion (7) | closed colour (10) | closed shape (9) | novel colour (10) | novel shape (9) "
            "| HM(motion, novel shape) | motion labels' text cos | test t2v R@1 | stage 1 s | note |")
    lines = [head, "|" + "---|" * 11]
    for row in ROWS:
        r = results["rows"].get(row)
        if r is None:
            continue
        if row in ("v", "vii") and "alphas" in r:
            for a, entry in r["alphas"].items():
                lines.append(_line(f"({row}) interpolation of {r.get('of', 'ii')}, alpha {float(a):.1f}",
                                   entry.get("metrics"), entry.get("seconds"),
                                   entry.get("note", "")))
            continue
        lines.append(_line(TITLES[row], r.get("metrics"), r.get("stage1_s"), r.get("note", "")))
    return "\n".join(lines)


def _chord(results: dict[str, Any], row: str = "v") -> list[str]:
    """For row v (or vii): each alpha's point against the straight line between alpha 0 and alpha 1."""
    alphas = results["rows"].get(row, {}).get("alphas", {})
    ends = [alphas.get(k, {}).get("metrics") for k in ("0.0", "1.0")]
    if not all(ends):
        return []
    (m0, m1), out = ends, []
    for a, entry in alphas.items():
        m = entry.get("metrics")
        if not m:
            continue
        t = float(a)
        line = {k: (1 - t) * m0[k] + t * m1[k] for k in ("motion", "novel shape")}
        out.append(f"alpha {t:.1f}: motion {m['motion']:.3f} (chord {line['motion']:.3f}), novel shape "
                   f"{m['novel shape']:.3f} (chord {line['novel shape']:.3f}), HM {m['HM']:.3f} "
                   f"(chord {_hm(line['motion'], line['novel shape']):.3f})")
    return out


def text_separation(model: Path) -> float:
    """Mean cosine between the model's embeddings of the 7 motion label phrases (1.0: it cannot tell
    them apart, so no video embedding can match one better than another)."""
    from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
    from retrieval_pretrain.modeling.model_folder import from_pretrained

    net, spec = from_pretrained(model)
    with torch.no_grad():
        e = net.encode_text(tokenizer_from_spec(spec)([sd.PHRASES["motion"](m) for m in MOTIONS]))
    cos = e @ e.T
    return float(cos[~torch.eye(len(MOTIONS), dtype=torch.bool)].mean())


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a folder for the data, models and results")
    parser.add_argument("--standin", type=Path, help="a trained stand-in checkpoint; default: train one into OUTPUT")
    parser.add_argument("--where", action="store_true", help="the stand-in trained here: the --where variant "
                                                             "(captions also name place and size)")
    parser.add_argument("--data", type=Path, help="the demo data folder (generated there if not complete); "
                                                  "default OUTPUT/data")
    parser.add_argument("--epochs", type=int, default=16, help="stage-1 epochs of every trained row")
    parser.add_argument("--clip-lr", type=float, default=None, help="pretrain.clip_lr (default: tiny_demo.yaml's)")
    parser.add_argument("--lr", type=float, default=None, help="pretrain.lr, the new layers' (default: tiny_demo.yaml's)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--only", nargs="+", choices=ROWS, help="rows to run (v needs ii's model, vii vi's: trained if absent)")
    parser.add_argument("--set", dest="extra", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more config overrides for every trained row")
    parser.add_argument("--seed", type=int, default=0, help="run.seed of every trained row (and the stand-in trained here)")
    parser.add_argument("--data-seed", type=int, default=0, help="the demo data's and the novel clips' seed")
    args = parser.parse_args()
    if args.standin is not None and not args.standin.is_file():
        parser.error(f"--standin {args.standin}: no such file")
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: at least 1 (0 would score an untrained head as a recipe)")
    if any(not 0.0 <= a <= 1.0 for a in args.alphas):
        parser.error(f"--alphas {' '.join(map(str, args.alphas))}: each in [0, 1]")
    return args


class Recipes:
    """One call's rows: the stand-in, the data, the evaluation sets and the results file."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, args.output
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoint = (args.standin or self._train_standin()).resolve()
        self.data = (args.data or self.out / "data").resolve()
        spec = DemoSpec(seed=args.data_seed)
        foreign = args.data is not None and self.data.is_dir() and any(self.data.iterdir())
        if foreign and not is_complete(self.data, spec):
            raise SystemExit(f"--data {self.data}: holds something else than the demo set this script makes "
                             f"(DemoSpec(seed={args.data_seed})), and generating would replace it; give an empty or "
                             "new folder")
        self.demo_rows = [r for r in map(json.loads, (self.data / "annotations.jsonl").read_text().splitlines())
                          if r["split"] == "test"]
        self.extra_videos = self.out / "extra_videos"
        self.extra_rows = sd._extra_videos(self.extra_videos, args.data_seed)
        common = [f"clip.pretrained={self.checkpoint}", f"data.annotations={self.data / 'annotations.jsonl'}",
                  f"data.videos={self.data}", f"pretrain.epochs={args.epochs}", "pretrain.head=seqTransf",
                  "pretrain.save_every=0", f"run.seed={args.seed}"]
        common += [f"pretrain.clip_lr={args.clip_lr}"] if args.clip_lr is not None else []
        common += [f"pretrain.lr={args.lr}"] if args.lr is not None else []
        self.common = common + list(args.extra)
        cfg = load(CONFIG_PATH, self.common)  # a bad --set or stand-in is an error now, not after the first training
        build_clip(cfg.clip)
        generate_dataset(self.data, spec, progress=False, workers=2)
        self.results_file = self.out / "results.json"
        self.results: dict[str, Any] = _read_json(self.results_file) or {}
        if self.results.get("common_overrides") not in (None, self.common):  # another stand-in, data or settings
            print(f"note: {self.results_file} held rows of other settings; they are dropped", file=sys.stderr)
            self.results = {}
        self.results.update({"standin": str(self.checkpoint), "data": str(self.data), "epochs": args.epochs,
                             "common_overrides": self.common, "templates": list(sd.STANDIN_TEMPLATES),
                             "threads": torch.get_num_threads(), "test_clips": len(self.demo_rows),
                             "novel_clips": len(self.extra_rows)})
        self.results.setdefault("rows", {})

    def _train_standin(self) -> Path:
        checkpoint = self.out / f"standin{'_where' if self.args.where else ''}_seed{self.args.seed}.safetensors"
        if not checkpoint.is_file():
            t = time.perf_counter()
            standin.train_standin(checkpoint, seed=self.args.seed, where=self.args.where)
            print(f"stand-in trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        return checkpoint

    def save(self) -> None:
        write_json(self.results_file, self.results)

    def evaluate(self, model: Path, work: Path) -> dict[str, float]:
        """``evaluate``'s recognition metrics, the motion labels' text cosine, and caption retrieval on
        the demo test split (``vcap eval-retrieval``: CLIP2TV's own measure; every test clip is another
        colour x shape x motion, so its captions tell it from the others only with the motion)."""
        from retrieval_pretrain.stage1.evaluate import evaluate_retrieval

        m = evaluate(model, self.demo_rows, self.data, self.extra_rows, self.extra_videos, work)
        cfg = load(CONFIG_PATH, [f"data.annotations={self.data / 'annotations.jsonl'}", f"data.videos={self.data}",
                                 "run.num_workers=2"])
        r = evaluate_retrieval(model, cfg, split="test", output=work / "retrieval")
        return {**m, "motion text cos": text_separation(model), "t2v R@1": r["t2v_R@1"], "v2t R@1": r["v2t_R@1"]}

    def attempt(self, row: str) -> None:
        """Run ``row`` and record it; a failing recipe is said and recorded, and the other rows go on."""
        print(f"\n=== row {row}: {TITLES[row]} ===", file=sys.stderr)
        body = (self.row_i if row == "i" else (lambda: self.patching(row, "ii")) if row == "v"
                else (lambda: self.patching(row, "vi")) if row == "vii" else (lambda: self.trained(row)))
        try:
            self.results["rows"][row] = body()
        except Exception as e:
            traceback.print_exc()
            first = str(e).splitlines()[0][:200] if str(e) else ""
            self.results["rows"][row] = {"note": f"failed: {type(e).__name__}: {first}"}
        r = self.results["rows"][row]
        if "alphas" not in r:  # rows v / vii printed a line per alpha already
            print(_line(TITLES[row], r.get("metrics"), r.get("stage1_s"), r.get("note", "")), file=sys.stderr)
        self.save()

    def row_i(self) -> dict[str, Any]:
        model = self.out / "i" / "model"
        made_from = (_read_json(model / "config.json") or {}).get("trained_on", {}).get("standin_checkpoint")
        if made_from != str(self.checkpoint):  # none yet, or made from another stand-in
            sd._stage1_folder(self.checkpoint, model)
        t = time.perf_counter()
        m = self.evaluate(model, self.out / "i" / "eval")
        return {"metrics": m, "stage1_s": 0.0, "eval_s": time.perf_counter() - t, "model": str(model)}

    def trained(self, row: str) -> dict[str, Any]:
        folder = self.out / row
        model, seconds, reused = fine_tune(row, folder, self.common, self.args.epochs)
        t = time.perf_counter()
        m = self.evaluate(model, folder / "eval")
        return {"metrics": m, "stage1_s": seconds, "eval_s": time.perf_counter() - t, "model": str(model),
                "overrides": recipe_overrides(row, self.args.epochs), "note": "reused model" if reused else ""}

    def patching(self, row: str, of: str) -> dict[str, Any]:
        from retrieval_pretrain.stage1.interpolate import interpolate_folders

        finetuned, _, _ = fine_tune(of, self.out / of, self.common, self.args.epochs)
        entry: dict[str, Any] = {"of": of, "finetuned": str(finetuned), "base": str(self.checkpoint), "alphas": {}}
        for alpha in self.args.alphas:
            t = time.perf_counter()
            folder = self.out / row / f"alpha_{alpha:.1f}"
            summary = interpolate_folders(self.checkpoint, finetuned, alpha, folder / "model")
            seconds = time.perf_counter() - t
            m = self.evaluate(folder / "model", folder / "eval")
            entry["alphas"][f"{alpha:.1f}"] = {"metrics": m, "seconds": seconds, "summary": summary,
                                               "note": "no training: patching only"}
            print(_line(f"alpha {alpha:.1f}", m, seconds), file=sys.stderr)
            self.results["rows"][row] = entry
            self.save()
        return entry


def main() -> int:
    from retrieval_pretrain.foundation.errors import VcapError

    args = _arguments()
    t_all = time.perf_counter()
    try:
        run = Recipes(args)
    except VcapError as e:  # a bad --set, an unloadable stand-in: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in args.only or ROWS:
        run.attempt(row)
    results = run.results
    results["total_s"] = time.perf_counter() - t_all
    run.save()
    print(f"\nepochs {args.epochs}; overrides of every trained row: {' '.join(run.common[1:])}")
    print(f"stand-in: {run.checkpoint}; {len(run.demo_rows)} demo test clips, {len(run.extra_rows)} novel-pair clips; "
          f"chance: motion {1 / len(MOTIONS):.3f}, colour {1 / len(standin.STANDIN_COLOURS):.3f}, "
          f"shape {1 / len(standin.STANDIN_SHAPES):.3f}\n")
    print(table(results))
    for row in ("v", "vii"):
        chord = _chord(results, row)
        if chord:
            print(f"\nrow {row} against the straight line between its alpha 0 and 1:\n" + "\n".join(chord))
    print(f"\ntotal {results['total_s']:.0f} s; results in {run.results_file}")
    failed = [row for row in args.only or ROWS if "failed" in results["rows"].get(row, {}).get("note", "")]
    if failed:
        print(f"error: rows {', '.join(failed)} failed (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
