"""``vcap``: the toolkit's one command line, with a subcommand per job.

Every subcommand that reads a config takes ``--config FILE.yaml`` plus trailing ``key=value``
overrides of any config field (dotted keys, YAML values). Every subcommand that computes metrics
writes them to ``metrics.json`` in its output folder and prints the same JSON object as its last
line of stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from caption.config import Config, load
from retrieval_pretrain.config import ConfigError

EPILOG_OVERRIDES = (
    "Overrides: any config field as a dotted key, e.g. video.num_frames=8 pretrain.lr=1e-4 "
    "run.mixed_precision=bf16 data.split_files.test=test.csv. Unknown keys are errors."
)


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, metavar="FILE.yaml", help="the run's YAML config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vcap",
        description=(
            "Video captioning on CLIP, in two stages (CLIP4Caption): 'pretrain' fine-tunes CLIP into "
            "a video-text model by contrastive retrieval; 'extract' encodes every video once with its "
            "video tower; 'train' fits a 1-layer encoder + 3-layer decoder caption model on those "
            "features. 'demo' runs the whole pipeline on built-in generated videos."
        ),
        epilog="Run 'vcap COMMAND --help' for a command's options. " + EPILOG_OVERRIDES,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="dataset utilities ('vcap data check')")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check",
        help="count videos/captions per split, find missing (and with --probe unreadable) videos",
        description="Summarise a dataset: per split videos, captions, captions per video, caption "
        "length; annotation entries that were malformed or whose video file is missing; with --probe, "
        "every video is opened and unreadable ones are listed with the reason. Exit 0 when all is "
        "well, 1 otherwise; the summary JSON is the last line of stdout.",
        epilog=EPILOG_OVERRIDES,
    )
    check.add_argument("--probe", action="store_true", help="open every video file (slow)")
    _add_config(check)

    p = sub.add_parser(
        "pretrain",
        help="stage 1: train the CLIP video-text model by contrastive retrieval",
        description="Stage 1 (CLIP4Clip recipe): fine-tune CLIP into a video-text model on the "
        "dataset's training split. Writes RUN/log.jsonl, RUN/checkpoints/ and the final model folder "
        "RUN/model (config.json + model.safetensors). Runs under 'accelerate launch' for several GPUs.",
        epilog=EPILOG_OVERRIDES,
    )
    p.add_argument("--output", required=True, metavar="RUN", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN")
    _add_config(p)

    p = sub.add_parser(
        "eval-retrieval",
        help="text-to-video and video-to-text R@1/5/10, median and mean rank",
        description="Embed a split's videos and captions once and report retrieval metrics; with "
        "--dsl also after dual-softmax re-weighting (CLIP2TV). Writes OUT/metrics.json.",
        epilog=EPILOG_OVERRIDES,
    )
    p.add_argument("--model", required=True, metavar="RUN/model", help="stage-1 model folder")
    p.add_argument("--split", default=None, help="split to evaluate (default: data.test_split)")
    p.add_argument("--dsl", action="store_true", help="also report dual-softmax re-weighted results")
    p.add_argument("--output", default=None, metavar="OUT", help="folder for metrics.json (default: next to the model)")
    _add_config(p)

    p = sub.add_parser(
        "extract",
        help="encode every video once into per-frame features (fp16 cache)",
        description="Run the stage-1 video tower over every video of the dataset (or one split) and "
        "store per-frame features [frames, dim] as fp16 .npy files (memory-mappable). Resumable: a "
        "rerun skips finished videos. Unreadable videos are listed in FEATS/failures.json.",
        epilog=EPILOG_OVERRIDES,
    )
    p.add_argument("--model", required=True, metavar="RUN/model", help="stage-1 model folder")
    p.add_argument("--output", required=True, metavar="FEATS", help="feature folder")
    p.add_argument("--split", action="append", default=None, help="only this split (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    _add_config(p)

    p = sub.add_parser(
        "train",
        help="stage 2: train the caption model on cached features",
        description="Stage 2: train the 1-layer encoder + 3-layer decoder caption model with teacher "
        "forcing via Accelerate; validation loss and CIDEr each epoch; the best epoch (by val CIDEr, "
        "or val loss / the last epoch with caption.select_by=loss|last) is written to RUN2/model "
        "(with its tokenizer and the stage-1 video tower it needs).",
        epilog=EPILOG_OVERRIDES,
    )
    p.add_argument("--features", required=True, metavar="FEATS", help="folder written by 'vcap extract'")
    p.add_argument("--output", required=True, metavar="RUN2", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN2")
    p.add_argument("--init-from", default=None, metavar="DIR", help="fine-tune this caption model (keeps its tokenizer)")
    _add_config(p)

    p = sub.add_parser(
        "evaluate",
        help="caption a split and score BLEU/METEOR/ROUGE-L/CIDEr",
        description="Caption every video of a split (from cached features, or from the video files "
        "when --features is not given) and score with pycocoevalcap. Writes OUT/predictions.json "
        "and OUT/metrics.json.",
        epilog=EPILOG_OVERRIDES,
    )
    p.add_argument("--model", required=True, metavar="RUN2/model", help="caption model folder")
    p.add_argument("--features", default=None, metavar="FEATS", help="feature folder (else decode videos)")
    p.add_argument("--split", default=None, help="split (default: data.test_split)")
    p.add_argument("--output", default=None, metavar="OUT", help="output folder (default: next to the model)")
    _add_config(p)

    p = sub.add_parser(
        "caption",
        help="caption video files",
        description="Caption video files (or every video in a folder) with a caption model folder; "
        "the folder holds everything needed (tokenizer, stage-1 video tower).",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER")
    p.add_argument("--model", required=True, metavar="RUN2/model", help="caption model folder")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the model's; 1 = greedy)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per batch")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"captions": {video: caption}, "failed": {video: reason}} '
                        "as the last line (default: one 'video<TAB>caption' line per video)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")

    p = sub.add_parser(
        "score",
        help="score a predictions file against references (BLEU/METEOR/ROUGE-L/CIDEr)",
        description="Score captions with pycocoevalcap. predictions: {id: caption} or a COCO results "
        "list [{image_id|video_id, caption}]; references: {id: [captions]} or COCO-style "
        "{annotations: [{image_id|video_id, caption}]}.",
    )
    p.add_argument("--predictions", required=True, metavar="P.json")
    p.add_argument("--references", required=True, metavar="R.json")
    p.add_argument("--tokenize", choices=["ptb", "none"], default="ptb",
                   help="ptb: pycocoevalcap's PTB tokenizer, as the papers (default); none: whitespace split")
    p.add_argument("--output", default=None, metavar="OUT", help="folder for metrics.json")

    p = sub.add_parser(
        "demo",
        help="the whole two-stage pipeline on built-in generated videos, on a CPU",
        description="Generate a procedural video-caption dataset (real H.264 mp4 files), train a tiny "
        "CLIP video-text model by retrieval, extract features, train the caption model, evaluate on "
        "the test split and print captions beside references and the metrics JSON last (retrieval "
        "R@1/R@5, BLEU-4, METEOR, ROUGE-L, CIDEr, and how often the captions name the right colour, "
        "shape and motion). About 9 minutes on 2 CPU cores; --quick runs every stage on less data "
        "in under 3.",
    )
    p.add_argument("--output", default="vcap_demo", metavar="DIR", help="working folder (default: ./vcap_demo)")
    p.add_argument("--quick", action="store_true", help="smaller data and shorter training (smoke test)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcap`` console script; returns the exit code."""
    # OpenMP threads that spin while waiting run up to 50x slower on a CPU shared with the
    # DataLoader's decoding workers (measured: 16 ms vs 0.3 ms for a 960x128 @ 128x128 matmul on
    # 2 cores). Passive waiting costs nothing when the CPU is free. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"vcap: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vcap: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "data":
        cfg = _config(args)
        from retrieval_pretrain.data_check import main as check_main

        return check_main(cfg.data, probe=args.probe)
    if cmd == "pretrain":
        from retrieval_pretrain.train import train

        train(_config(args), Path(args.output), resume=args.resume)
        return 0
    if cmd == "eval-retrieval":
        from retrieval_pretrain.evaluate import evaluate_retrieval

        metrics = evaluate_retrieval(
            Path(args.model), _config(args), split=args.split, dsl=args.dsl,
            output=Path(args.output) if args.output else None,
        )
        print(json.dumps(metrics))
        return 0
    if cmd == "extract":
        from retrieval_pretrain.extract import extract_features

        report = extract_features(
            Path(args.model), _config(args), Path(args.output), splits=args.split,
            batch_size=args.batch_size,
        )
        return 0 if report["failed"] == 0 else 1
    if cmd == "train":
        from caption.train import train

        train(_config(args), Path(args.features), Path(args.output), resume=args.resume,
              init_from=Path(args.init_from) if args.init_from else None)
        return 0
    if cmd == "evaluate":
        from caption.evaluate import evaluate

        metrics = evaluate(
            Path(args.model), _config(args), features=Path(args.features) if args.features else None,
            split=args.split, output=Path(args.output) if args.output else None,
        )
        print(json.dumps(metrics))
        return 0
    if cmd == "caption":
        from caption.pipeline import caption_main

        return caption_main(args.videos, Path(args.model), beam=args.beam, batch_size=args.batch_size,
                            as_json=args.json, device=args.device)
    if cmd == "score":
        from caption.metrics import score_main

        score_main(args.predictions, args.references, tokenize=args.tokenize, output=args.output)
        return 0
    if cmd == "demo":
        from caption.demo import run_demo

        run_demo(Path(args.output), quick=args.quick, seed=args.seed)
        return 0
    raise AssertionError(cmd)


if __name__ == "__main__":
    sys.exit(main())
