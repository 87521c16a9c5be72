"""The ``vcap`` argument parser: one ``_add_*`` function per subcommand (what it takes and what its
``--help`` says). ``vcap_toolkit.cli.main`` runs the commands."""

from __future__ import annotations

import argparse
import textwrap

from decoders.config import MAX_BEAMS
from retrieval_pretrain.foundation.errors import EXIT_CODES
from retrieval_pretrain.foundation.machine import default_workers
from retrieval_pretrain.reading.formats import help_lines
from vcap_toolkit.cli.push_command import add_push_parser
from vcap_toolkit.cli.stage_commands import add_window_options

EPILOG_OVERRIDES = (
    "Overrides: any config field as a dotted key, e.g. video.num_frames=8 pretrain.lr=1e-4 "
    "run.mixed_precision=bf16 data.split_files.test=test.csv video.backend=pyav. Unknown keys are errors."
)


def _whole(text: str, low: int) -> int:
    """A whole number >= ``low`` in plain ASCII digits (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    digits = text.removeprefix("-")
    value = int(text) if digits.isascii() and digits.isdigit() else None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {low}")
    return value


def _at_least_one(text: str) -> int:
    return _whole(text, 1)


def _beam(text: str) -> int:
    if _whole(text, 1) > MAX_BEAMS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_BEAMS} (hypotheses kept per video; 3-5 is usual)")
    return int(text)


def _at_least_zero(text: str) -> int:
    return _whole(text, 0)


class _LinesFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own, keeping its indent (the default
    joins them into one paragraph); a wrapped indented line continues 4 spaces further in."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = [(indent + line[: len(line) - len(line.lstrip())], line.strip()) for line in text.splitlines()]
        return "\n".join(textwrap.fill(body, width, initial_indent=lead, subsequent_indent=lead + "    " * (lead != indent))
                         for lead, body in lines)


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, metavar="FILE.yaml", help="the run's YAML config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")


def _command(sub: argparse._SubParsersAction, name: str, help: str, description: str,
             config: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, epilog=EPILOG_OVERRIDES if config else None)
    if config:
        _add_config(p)
    return p


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset utilities ('vcap data check')")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = _command(data_sub, "check", "count videos/captions per split, find missing (and with --probe "
                     "unreadable) videos",
                     "Summarise a dataset: per split videos, captions, captions per video, caption length; "
                     "annotation entries that were malformed or whose video file is missing; with --probe, every "
                     "video is read and unreadable or truncated ones are listed with the reason. Exit 0 when all "
                     "is well, 1 otherwise; the summary JSON is the last line of stdout.")
    check.formatter_class = _LinesFormatter  # one line per format in the epilog
    check.epilog = "\n".join(["formats (data.format):", *help_lines(), "", EPILOG_OVERRIDES])
    check.add_argument("--probe", action="store_true",
                       help="read every video file (slow): flag truncated ones, and decode the frames a run "
                            "samples with the config's video section (the eval_sampling and train_sampling picks "
                            "of num_frames, each TSN segment's first and last frame, the last frame)")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "pretrain", "stage 1: train the CLIP video-text model by contrastive retrieval",
                 "Stage 1 (CLIP4Clip recipe): fine-tune CLIP into a video-text model on the dataset's training "
                 "split. Writes RUN/log.jsonl, RUN/checkpoints/ and the final model folder RUN/model (config.json "
                 "+ model.safetensors; with pretrain.swa.enabled the epoch average, the last epoch's weights in "
                 "RUN/model_last). Recipes are config choices: pretrain.mode=prompt (frozen CLIP, learnt text "
                 "prompts + head, frames encoded once), pretrain.distill.enabled, pretrain.interpolation.enabled, "
                 "pretrain.swa.enabled (README). Runs under 'accelerate launch' for several GPUs.")
    p.add_argument("--output", required=True, metavar="RUN", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN")


def _add_eval_retrieval(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "eval-retrieval", "text-to-video and video-to-text R@1/5/10, median and mean rank",
                 "Embed a split's videos and captions once and report retrieval metrics; with --dsl also after "
                 "dual-softmax re-weighting (CLIP2TV). Writes OUT/metrics.json.")
    p.add_argument("--model", required=True, metavar="RUN/model", help="stage-1 model folder or Hub id org/name[@rev]")
    p.add_argument("--split", default=None, help="split to evaluate (default: data.test_split)")
    p.add_argument("--dsl", action="store_true", help="also report dual-softmax re-weighted results")
    p.add_argument("--output", default=None, metavar="OUT", help="folder for metrics.json (default: next to the model)")


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "extract", "encode every video once into per-frame features (fp16 cache)",
                 "Run the stage-1 video tower over every video of the dataset (or one split) and store per-frame "
                 "features [frames, dim] as fp16 .npy files (memory-mappable). Resumable: a rerun skips finished "
                 "videos. Unreadable videos are listed in FEATS/failures.json (exit 1). The report JSON is the "
                 "last line of stdout.")
    p.add_argument("--model", required=True, metavar="RUN/model", help="stage-1 model folder or Hub id org/name[@rev]")
    p.add_argument("--output", required=True, metavar="FEATS",
                   help="feature folder: new, or one vcap extract wrote (any other is refused untouched)")
    p.add_argument("--split", action="append", default=None, help="only this split (repeatable)")
    p.add_argument("--batch-size", type=_at_least_one, default=8, help="videos per forward pass")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "train", "stage 2: train the caption model on cached features",
                 "Stage 2: train the 1-layer encoder + 3-layer decoder caption model with teacher forcing via "
                 "Accelerate; validation loss and CIDEr each epoch; the best epoch (by val CIDEr, or val loss / "
                 "the last epoch with caption.select_by=loss|last) is written to RUN2/model (with its tokenizer "
                 "and the stage-1 video tower it needs).")
    p.add_argument("--features", required=True, metavar="FEATS", help="folder written by 'vcap extract'")
    p.add_argument("--output", required=True, metavar="RUN2", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN2")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="fine-tune this caption model (keeps its tokenizer): a folder or Hub id org/name[@rev]")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "evaluate", "caption a split and score BLEU/METEOR/ROUGE-L/CIDEr",
                 "Caption every video of a split (from cached features, or from the video files when --features "
                 "is not given) and score with pycocoevalcap. Writes OUT/predictions.json and OUT/metrics.json.")
    p.add_argument("--model", required=True, metavar="RUN2/model", help="caption model folder or Hub id org/name[@rev]")
    p.add_argument("--features", default=None, metavar="FEATS", help="feature folder (else decode videos)")
    p.add_argument("--split", default=None, help="split (default: data.test_split)")
    p.add_argument("--output", default=None, metavar="OUT", help="output folder (default: next to the model)")
    p.add_argument("--report", action="store_true",
                   help="also write OUT/report.html: one self-contained page with the metrics, every video's frames, "
                        "caption, references and CIDEr (worst first, sortable) and the run's training curves")
    add_window_options(p, "on a dataset whose entries are time ranges (activitynet, youcook2, jsonl with "
                          "start/end): also caption each whole source video window by window - SECONDS per window "
                          "(default 10), or 'shots' - write OUT/predictions_dense.json (ActivityNet Captions "
                          "challenge format) and OUT/references_dense.json, and add the dense metric to "
                          "metrics.json under \"dense\"")


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "caption", "caption video files (whole, or window by window with --segments)",
                 "Caption video files (or every video in a folder) with a caption model folder; the folder holds "
                 "everything needed (tokenizer, stage-1 video tower). A video that cannot be read is named on "
                 "stderr and the exit code is 1; the others are still captioned. A long video is better captioned "
                 "window by window (--segments): each window's frames are sampled inside it and decoded a batch at "
                 "a time, so memory stays flat whatever the length; a progress bar counts the windows.",
                 config=False)
    p.epilog = ("Overrides: video.backend=auto|decord|torchcodec|pyav picks the video decoder (every one samples "
                "the same frames); other settings come from the model folder and are refused here.")
    p.set_defaults(overrides=[], config=None)
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER")
    p.add_argument("--model", required=True, metavar="RUN2/model", help="caption model folder or Hub id org/name[@rev]")
    p.add_argument("--beam", type=_beam, default=None, help=f"beam size, 1 to {MAX_BEAMS} (default: the model's)")
    p.add_argument("--batch-size", type=_at_least_one, default=8, help="videos (or windows) per batch")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"captions": {video: caption}, "failed": {video: reason}} '
                        "as the last line (default: one 'video<TAB>caption' line per video); with --segments "
                        '{"captions": {video: [{"start", "end", "caption"}, ...]}, ...}, times in seconds')
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--report", default=None, metavar="OUT.html",
                   help="also write one self-contained HTML page: each video's frames beside its caption; with "
                        "--segments a timeline, one frame and the caption per window")
    add_window_options(p, "caption consecutive windows of SECONDS each (a last window shorter than a quarter "
                          "joins the one before), or 'shots': cut where PySceneDetect's content detector finds a "
                          "shot boundary (see --min-segment, --max-segment). Prints one "
                          "'video<TAB>start-end<TAB>caption' line per window (H:MM:SS.mmm); consecutive windows "
                          "with the same caption merge into one")
    p.add_argument("--subtitles", default=None, metavar="OUT.vtt|OUT.srt",
                   help="with --segments and one video: also write the windows' captions as subtitles, WebVTT "
                        "(.vtt, for a <track> in a web page) or SubRip (.srt), by the extension")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "report", "an HTML page of a training run's curves",
                 "Write one self-contained HTML page of a run folder (vcap pretrain or vcap train): loss, learning "
                 "rate and validation curves per step and epoch as plots, and the run's config. Open it in any "
                 "browser; it loads nothing from the network.", config=False)
    p.add_argument("run", metavar="RUN", help="a run folder (holds log.jsonl)")
    p.add_argument("--output", default=None, metavar="OUT.html", help="where to write it (default: RUN/report.html)")


def _add_recognizer(p: argparse.ArgumentParser) -> None:
    """The options naming the model and prompts of 'classify' and 'eval-classify'."""
    p.add_argument("--model", default=None, metavar="DIR_OR_NAME",
                   help="stage-1 model folder, Hub id org/name[@rev], or open_clip name")
    p.add_argument("--pretrained", default=None, metavar="TAG_OR_FILE", help="with an open_clip name: its weights")
    p.add_argument("--template", action="append", default=None, metavar="'a video of {}'",
                   help="a prompt template (repeatable); replaces the built-in ensemble")


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="zero-shot recognition: rank labels for each video",
        description="Zero-shot video recognition (ActionCLIP / X-CLIP style): every label becomes sentences "
                    "through prompt templates (a built-in ensemble of 16, or --template), a class is the mean of "
                    "its sentences' embeddings, and each video gets the softmax over classes at the model's logit "
                    "scale. --model is a stage-1 model folder, or an open_clip model name (with --pretrained TAG or "
                    "a checkpoint file) used as plain CLIP with mean-pooled frames; without --model, the config's "
                    "clip section is that plain CLIP. Unreadable videos are named on stderr (exit 1; 4 if none "
                    "could be read).", epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="a config for the video settings and the plain CLIP (clip section); key=value overrides "
                        "may follow the videos")
    p.set_defaults(overrides=[])
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER")
    p.add_argument("--labels", required=True, metavar="FILE_OR_LIST",
                   help="a file with one label per line (e.g. label_map_k400.txt), or 'walking,running,...'")
    _add_recognizer(p)
    p.add_argument("--top", type=_at_least_one, default=5, help="labels to show per video (default 5)")
    p.add_argument("--batch-size", type=_at_least_one, default=8, help="videos per batch")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"predictions": {video: [[label, probability], ...]}, '
                        '"failed": {video: reason}} as the last line')


def _add_eval_classify(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "eval-classify", "recognition accuracy on a labelled split",
                 "Zero-shot (prompted) recognition on a labelled dataset (data.format labels, kinetics or ucf101): "
                 "top-1, top-5 and mean class accuracy over the dataset's labels (data.labels_file, or those its rows "
                 "use); with data.novel_labels, also base accuracy, novel (zero-shot) accuracy and their harmonic "
                 "mean, as Open-VCLIP reports. --model as for 'vcap classify'. Writes OUT/metrics.json and prints "
                 "it as the last line.", config=False)
    p.epilog = EPILOG_OVERRIDES
    _add_config(p, required=False)
    _add_recognizer(p)
    p.add_argument("--split", default=None, help="split to evaluate (default data.test_split)")
    p.add_argument("--output", default=None, metavar="OUT",
                   help="where metrics.json goes (default: eval_classify_SPLIT beside the model folder, or here)")


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "index", "embed every video of folders once, for 'vcap search'",
                 "Build (or extend) a search index: every video (files, or folders searched recursively) embedded "
                 "once by a stage-1 model, in fp16 shards - whole, or with --segments as moments - and a FAISS "
                 "vector index over them (--vectors). A rerun embeds only videos the index does not hold yet (new, "
                 "changed, or not saved by a killed run) and adds them without retraining; unreadable videos are "
                 "named on stderr, listed in IDX/failures.json and retried next time (exit 1). An index belongs to "
                 "its model (and windows): another is refused. Under 'accelerate launch' each process embeds its "
                 "share into its own shards, then one merge. The report JSON is the last line of stdout.", config=False)
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER")
    p.add_argument("--model", required=True, metavar="RUN/model", help="stage-1 model folder or Hub id org/name[@rev]")
    p.add_argument("--output", required=True, metavar="IDX",
                   help="index folder, created or extended (any other folder is refused untouched); a rerun first "
                        "rebuilds shards that fail their checks and drops the rows of videos gone or unreadable")
    p.add_argument("--segments", type=float, default=None, metavar="SECONDS",
                   help="index moments: windows of SECONDS of each video (as 'vcap caption --segments' cuts them), "
                        "each a row with its start and end; a search returns video, start, end and score")
    p.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="with --segments: a window starts every SECONDS (default: the window length; shorter: "
                        "windows overlap, and a search keeps only the best of overlapping results of one video)")
    p.add_argument("--vectors", choices=["auto", "exact", "approximate"], default="auto",
                   help="exact (brute force), approximate (IVF-PQ, nprobe tuned to recall@10 >= 0.95 and measured, "
                        "a shortlist re-ranked exactly), or auto: exact up to 100,000 rows (default)")
    p.add_argument("--batch-size", type=_at_least_one, default=8, help="clips per batch")
    p.add_argument("--shard-size", type=_at_least_one, default=256,
                   help="videos per saved shard (with their windows): at most this many are embedded again after a kill")
    p.add_argument("--num-workers", type=_at_least_zero, default=default_workers(2),
                   help="decoding worker processes (default 2, at most the CPUs available; 0: decode in this process)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "search", "rank indexed videos (or moments) by a sentence or an example clip",
                 "Search an index made by 'vcap index': the videos - or moments (video, start, end) of an index "
                 "of --segments - most similar to QUERY (a sentence) or to --video CLIP, by cosine similarity of "
                 "the stage-1 model's embeddings through the FAISS vector index (scores exact, from the stored "
                 "rows). A model that scores pairs (X-CLIP, tightTransf) ranks a sentence by its own pair score "
                 "against the stored states (all, or the approximate index's shortlist), --video by cosine of "
                 "pooled embeddings. Overlapping moments of one video collapse to the best.", config=False)
    p.add_argument("index", metavar="IDX")
    p.add_argument("query", nargs="?", default=None, metavar="QUERY", help="a sentence")
    p.add_argument("--video", default=None, metavar="CLIP", help="search by this example clip instead")
    p.add_argument("--top", type=_at_least_one, default=10, help="results to show (default 10)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"query": ..., "results": [[video, similarity], ...]} as the last '
                        "line; in an index of moments each result is [video, start, end, similarity]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "score", "score a predictions file against references (BLEU/METEOR/ROUGE-L/CIDEr)",
                 "Score captions with pycocoevalcap. predictions: {id: caption} or a COCO results list "
                 "[{image_id|video_id, caption}]; references: {id: [captions]} or COCO-style {annotations: "
                 "[{image_id|video_id, caption}]}. Dense (time-stamped) captions in the ActivityNet Captions "
                 "challenge format {results: {video: [{sentence, timestamp: [start, end]}]}} are scored as its "
                 "official evaluator does, against one or more val_1.json-shaped reference files: BLEU-1..4, "
                 "METEOR, ROUGE-L, CIDEr, Recall and Precision at tIoU 0.3/0.5/0.7/0.9 and their average, in "
                 "percent, printed as {\"dense\": {\"average\": ..., \"tIoU\": ...}}.", config=False)
    p.add_argument("--predictions", required=True, metavar="P.json")
    p.add_argument("--references", required=True, action="extend", nargs="+", metavar="R.json",
                   help="references file; dense predictions may take several (--references val_1.json "
                        "val_2.json, or the option repeated), as the official evaluator does")
    p.add_argument("--tokenize", choices=["ptb", "none"], default="ptb",
                   help="ptb: pycocoevalcap's PTB tokenizer, as the papers (default); none: whitespace split")
    p.add_argument("--output", default=None, metavar="OUT",
                   help="folder for metrics.json (one there that vcap did not write is never replaced)")


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "interpolate", "patch a fine-tuned stage-1 model towards the CLIP it started from",
                 "Weight-space patching (Open-VCLIP; Ilharco et al.): write ALPHA * BASE + (1 - ALPHA) * FINETUNED "
                 "for every tensor the two share (same name and shape) as a stage-1 model folder of the fine-tuned "
                 "architecture; layers only the fine-tuned model has (the temporal head) are kept from it. BASE is a "
                 "stage-1 model folder, an open_clip checkpoint file (.bin/.pt/.pth state dict or .safetensors) of "
                 "the fine-tuned model's CLIP, or a pretrained tag of its open_clip model (e.g. openai). Their CLIP "
                 "tensors must match one for one. The interpolation is recorded in DIR/config.json; a JSON summary "
                 "is the last line of stdout.", config=False)
    p.add_argument("--base", required=True, metavar="BASE", help="stage-1 model folder, CLIP checkpoint file or tag")
    p.add_argument("--finetuned", required=True, metavar="RUN/model", help="the fine-tuned stage-1 model folder")
    p.add_argument("--alpha", required=True, type=float, metavar="A",
                   help="weight of the base, in [0, 1] (0: the fine-tuned model; Open-VCLIP patches with 0.5)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="the new model folder: new, empty, or one vcap interpolate wrote holding nothing else "
                        "(replaced whole; any other is refused untouched)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "demo", "the whole two-stage pipeline on built-in generated videos, on a CPU",
                 "Generate a procedural video-caption dataset (real H.264 mp4 files), train a tiny CLIP video-text "
                 "model by retrieval, extract features, train the caption model, evaluate on the test split and "
                 "print captions beside references and the metrics JSON last (retrieval R@1/R@5, BLEU-4, METEOR, "
                 "ROUGE-L, CIDEr, and how often the captions name the right colour, shape and motion). About 6 "
                 "minutes on 2 idle Xeon cores (OpenMP threads spin unless OMP_WAIT_POLICY or loader workers are set; "
                 "on a busy machine OMP_WAIT_POLICY=PASSIVE is faster), longer on slower ones; --quick: less data.", config=False)
    p.add_argument("--output", metavar="DIR",
                   help="working folder (default: ./vcap_demo): new, or one vcap demo wrote (its results are "
                        "replaced, the generated videos kept; any other folder is refused untouched)")
    p.add_argument("--quick", action="store_true", help="smaller data and shorter training (smoke test)")
    p.add_argument("--seed", type=int, help="seed for data and training (default 0)")
    p.add_argument("--config-path", action="store_true",
                   help="print where the demo's config (tiny_demo.yaml, shipped in the package) is, and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="changes to the demo's config, e.g. pretrain.head=seqLSTM (the demo's numbers are for none)")


MAX_UPLOAD_MB = 1_000_000  # 1 TB: the limit in bytes must stay a finite number


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_UPLOAD_MB:  # NaN fails both; inf was refused only after the models loaded
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0 and at most {MAX_UPLOAD_MB} (MB)")
    return value


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "serve", "a local web page: caption a video, search an index, classify with your labels",
                 "Serve one web page (and its JSON API) for the three jobs: caption an uploaded video or a file "
                 "inside an allowed folder, search an index by a sentence (results play in the page), classify a "
                 "video with a typed label list. The models are loaded once, at start. Binds 127.0.0.1 (this "
                 "machine only) unless --host says otherwise. Needs the web extra: pip install "
                 "'vcap-toolkit[web]'. Stop it with Ctrl-C.", config=False)
    p.add_argument("--caption-model", required=True, metavar="RUN2/model",
                   help="caption model folder or Hub id org/name[@rev]")
    p.add_argument("--retrieval-model", default=None, metavar="RUN/model",
                   help="stage-1 model (folder or Hub id) to classify with (default: the caption model's video tower)")
    p.add_argument("--index", default=None, metavar="IDX", help="an index made by 'vcap index', for search")
    p.add_argument("--allow", action="append", default=None, metavar="DIR",
                   help="a folder whose videos the page may caption, classify and play (repeatable; default: "
                        "the folders of the index's videos, or none)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 serves every network: anyone who can reach "
                        "the port can use the models and read the allowed folders)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=_positive, default=200.0, help="largest upload accepted (default 200)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    codes = "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="vcap",
        description=(
            "Video captioning on CLIP, in two stages (CLIP4Caption): 'pretrain' fine-tunes CLIP into "
            "a video-text model by contrastive retrieval; 'extract' encodes every video once with its "
            "video tower; 'train' fits a 1-layer encoder + 3-layer decoder caption model on those "
            "features. 'demo' runs the whole pipeline on built-in generated videos."
        ),
        epilog=f"Run 'vcap COMMAND --help' for a command's options. {EPILOG_OVERRIDES} Exit codes: {codes}.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_data, _add_pretrain, _add_eval_retrieval, _add_extract, _add_train, _add_evaluate,
                _add_caption, _add_classify, _add_eval_classify, _add_index, _add_search, _add_score, _add_report, _add_interpolate, _add_demo,
                _add_serve, add_push_parser):
        add(sub)
    return parser
