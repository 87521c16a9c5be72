"""The model card of a vcap model folder: the ``README.md`` its Hub repository shows (``vcap push``).

Written from the folder and the run that made it, nothing typed by hand:

* what the model is: a caption model (``config.json`` of ``model_type`` vcap-caption, with its
  tokenizer and the stage-1 video tower it needs) or a stage-1 video-text model (a ``ModelSpec``):
  backbone, temporal head, frames and their sampling, image size, caption model size, decoding;
* the data and config it was trained on: the run folder's ``config.json`` (the model folder's parent,
  ``RUN/model`` or ``RUN2/model``) and, for a caption model, that of the stage-1 run its tower came from
  when that folder is on this machine; the spec's ``trained_on`` record;
* its metrics: validation in the run's ``log.jsonl`` (the selected epoch) and every evaluation written
  beside the model folder (``eval_*/metrics.json``: ``vcap evaluate``, ``eval-retrieval``, ``eval-classify``);
* the commands that made it and those that use it (``vcap caption VIDEO --model org/name``).

The YAML front matter (``library_name``, ``tags``, ``datasets``, ``metrics``) is made by
``huggingface_hub.ModelCardData``, the Hub's own schema.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from retrieval_pretrain.foundation.errors import DatasetError, ModelFolderError
from retrieval_pretrain.foundation.run_log import read_log
from retrieval_pretrain.modeling.model_folder import read_spec
from retrieval_pretrain.modeling.spec import FORMAT, ModelSpec

CAPTION_MODEL_TYPE = "vcap-caption"  # decoders.model.CaptionModelConfig.model_type
TOWER_DIR = "video_tower"  # caption.pipeline.TOWER_DIR (this room may not import caption)
STAGE1_FILES = ("config.json", "model.safetensors")
CAPTION_FILES = ("config.json", "model.safetensors", "tokenizer.model", f"{TOWER_DIR}/config.json",
                 f"{TOWER_DIR}/model.safetensors")
# metric names as a run writes them -> the Hub's metric ids (front matter)
METRIC_IDS = {"BLEU": "bleu", "METEOR": "meteor", "ROUGE": "rouge", "CIDEr": "cider", "R@": "recall",
              "top1": "accuracy", "top5": "accuracy", "accuracy": "accuracy"}
BOOKKEEPING = {"videos", "captions", "not_captioned", "num_beams", "annotation_problems", "unreadable_videos"}


@dataclass(frozen=True)
class VcapFolder:
    """A model folder ``vcap push`` uploads: ``kind`` caption | stage1, ``files`` (what is uploaded,
    relative POSIX paths), ``tower`` (the stage-1 model's spec; a caption model's video tower's) and
    ``caption`` (a caption model's ``config.json``)."""

    folder: Path
    kind: str
    files: tuple[str, ...]
    tower: ModelSpec
    caption: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunRecord:
    """The run folder that made a model: its ``config.json``, ``run.json`` and ``log.jsonl`` records."""

    folder: Path
    config: dict[str, Any]
    record: dict[str, Any]
    log: list[dict[str, Any]]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ModelFolderError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e})") from None


def read_folder(folder: str | Path) -> VcapFolder:
    """What the vcap model folder ``folder`` is (its config files checked; the weights are not read
    here). ``ModelFolderError`` naming the folder when it is not one, or not complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a folder; give a vcap model folder (RUN/model or RUN2/model)")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"{folder} is not a vcap model folder: no config.json (give RUN/model or RUN2/model, "
                               "not the run folder)")
    data = _json(folder / "config.json")
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind == CAPTION_MODEL_TYPE:
        missing = [name for name in CAPTION_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelFolderError(f"{folder} is not a complete caption model folder: {', '.join(missing)} missing")
        return VcapFolder(folder, "caption", CAPTION_FILES, read_spec(folder / TOWER_DIR), data)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return VcapFolder(folder, "stage1", STAGE1_FILES, read_spec(folder))
    raise ModelFolderError(f"{folder} is not a vcap model folder: its config.json is neither a stage-1 model's (format "
                           f"{FORMAT}) nor a caption model's (model_type {CAPTION_MODEL_TYPE})")


def find_run(model_folder: Path) -> RunRecord | None:
    """The run that wrote ``model_folder`` (its parent, when that holds ``run.json`` and ``config.json``),
    or None (a folder copied out of its run). A log that cannot be read gives no validation metrics."""
    run = Path(model_folder).resolve().parent
    if not ((run / "run.json").is_file() and (run / "config.json").is_file()):
        return None
    try:
        config, record = _json(run / "config.json"), _json(run / "run.json")
    except ModelFolderError:
        return None
    try:
        log = [r for _, r in read_log(run / "log.jsonl")[0]]
    except DatasetError:
        log = []
    return RunRecord(run, config if isinstance(config, dict) else {}, record if isinstance(record, dict) else {}, log)


def evaluations(model_folder: Path) -> dict[str, dict[str, float]]:
    """Each evaluation written beside the model folder (``eval_*/metrics.json``) since its weights:
    folder name -> its finite numbers (counts left out), with the split under ``split`` when recorded.
    One older than the weights evaluated an earlier model and is left out."""
    found: dict[str, dict[str, Any]] = {}
    made = (Path(model_folder) / "model.safetensors").stat().st_mtime
    for path in sorted(Path(model_folder).resolve().parent.glob("eval*/metrics.json")):
        try:
            if path.stat().st_mtime < made:
                continue
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            numbers = {k: v for k, v in data.items() if _finite(v) and k not in BOOKKEEPING}
            if numbers:
                found[path.parent.name] = {**numbers, **({"split": data["split"]} if "split" in data else {})}
    return found


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validation(run: RunRecord | None) -> list[tuple[str, str, float]]:
    """Rows ``(from, metric, value)`` of the run's log: the last training loss logged (with its
    step), and the validation numbers of the epoch the model is (a caption run's ``best_epoch``;
    else the last epoch logged with validation)."""
    if run is None:
        return []
    rows: list[tuple[str, str, float]] = []
    steps = [r for r in run.log if _finite(r.get("loss")) and _finite(r.get("step"))]
    if steps:
        rows.append((f"training log, step {steps[-1]['step']}", "loss", steps[-1]["loss"]))
    epochs = [r for r in run.log if any(k.startswith("val_") for k in r)]
    if epochs:
        best = epochs[-1].get("best_epoch", epochs[-1].get("epoch"))
        chosen = next((r for r in reversed(epochs) if r.get("epoch") == best), epochs[-1])
        where = f"validation, epoch {chosen.get('epoch')} (the model's)"
        rows += [(where, k, v) for k, v in chosen.items() if k.startswith("val_") and _finite(v)]
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "`null`" if value is None else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _backbone(spec: ModelSpec) -> str:
    c = spec.clip
    if c.kind == "xclip":
        return f"X-CLIP ({c.model or 'custom architecture'}, transformers)"
    weights = f"pretrained `{c.pretrained}`" if c.pretrained else "trained from scratch"
    name = c.model if not c.custom else f"custom architecture ({c.model or 'unnamed'})"
    return f"open_clip CLIP {name}, {weights}" + (", space-time mixing attention" if c.temporal_attention == "st_mix"
                                                     else "")


def model_rows(described: VcapFolder) -> list[tuple[str, str]]:
    """The "Model" table: what the network is and how it reads a video."""
    s = described.tower
    rows = [("kind", "caption model (video in, caption out)" if described.kind == "caption"
             else "stage-1 video-text model (retrieval, zero-shot recognition, a caption model's video tower)"),
            ("backbone", _backbone(s)), ("temporal head", f"{s.head} ({_count(s.head_layers, 'layer')})"),
            ("frames per video", f"{s.num_frames} (sampling: {s.eval_sampling})"),
            ("image size", f"{s.image_size} px"), ("embedding width", str(s.embed_dim))]
    if s.prompt is not None:
        rows.append(("learnt prompts", f"{s.prompt.prefix} before, {s.prompt.suffix} after"))
    if s.trained_on:
        rows.append(("video tower trained on" if described.kind == "caption" else "trained on",
                     ", ".join(f"{k} {_fmt(v)}" for k, v in s.trained_on.items())))
    c = described.caption
    if c is not None:
        rows += [("caption model", f"{c.get('encoder_layers')}-layer encoder + {c.get('decoder_layers')}-layer "
                                   f"decoder, width {c.get('d_model')}, vocabulary {c.get('vocab_size')}"),
                 ("decoding", ", ".join(f"{k} {_fmt(v)}" for k, v in (c.get("decode") or {}).items()) or "defaults")]
    return rows


def _hub_dataset(data: dict[str, Any]) -> str | None:
    """The Hub dataset id of a ``data.format=hf`` run, else None."""
    name = str(data.get("annotations") or "")
    if data.get("format") != "hf" or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def data_rows(run: RunRecord | None) -> list[tuple[str, str]]:
    """The "Training data" table: the data section of the run's config, as it was given."""
    if run is None:
        return []
    d = run.config.get("data") or {}
    rows = [(f"data.{k}", _fmt(d.get(k))) for k in ("format", "annotations", "videos", "train_split", "val_split",
                                                    "test_split") if d.get(k) not in (None, "", {})]
    rows += [(f"data.split_files.{k}", str(v)) for k, v in (d.get("split_files") or {}).items()]
    return rows


def card_data(described: VcapFolder, run: RunRecord | None, metrics: list[str]) -> ModelCardData:
    """The front matter (the Hub's ``ModelCardData``)."""
    task = "video-captioning" if described.kind == "caption" else "video-text-retrieval"
    tags = ["vcap", task, "clip", "video", described.tower.clip.kind.replace("_", "-")]
    dataset = _hub_dataset((run.config.get("data") or {}) if run else {})
    ids = sorted({hub for name in metrics for key, hub in METRIC_IDS.items() if key in name})
    return ModelCardData(library_name="vcap-toolkit", tags=tags, datasets=[dataset] if dataset else None,
                         metrics=ids or None)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_fmt(x) for x in row) + " |" for row in rows])


def _metrics_section(val: list[tuple[str, str, float]], evals: dict[str, dict[str, Any]]) -> str:
    rows = [(where, f"`{k}`", v) for where, k, v in val]
    for folder, numbers in evals.items():
        where = f"{folder}/metrics.json" + (f", split {numbers['split']}" if "split" in numbers else "")
        rows += [(where, f"`{k}`", v) for k, v in numbers.items() if k != "split"]
    if not rows:
        return ("No metrics were recorded beside this folder (run `vcap evaluate` / `vcap eval-retrieval` on it "
                "before pushing to list them here).")
    return _table(("from", "metric", "value"), rows)


def commands(described: VcapFolder, run: RunRecord | None, repo_id: str) -> tuple[list[str], list[str]]:
    """``(the commands that made the model, the commands that use it)``."""
    made: list[str] = []
    if described.kind == "caption":
        if _caption_tower_run(described) is not None:
            made.append("vcap pretrain --config stage1_config.yaml --output RUN   # stage 1: the video tower")
        made.append("vcap extract --model RUN/model --config config.yaml --output FEATS")
        init = (run.record.get("inputs") or {}).get("init_from") if run else None
        made.append("vcap train --config config.yaml --features FEATS --output RUN2"
                    + (" --init-from CAPTION_MODEL   # fine-tuned from a caption model" if init else ""))
        use = [f"vcap caption VIDEO_OR_FOLDER --model {repo_id}",
               f"vcap evaluate --model {repo_id} --config config.yaml",
               f"vcap serve --caption-model {repo_id}",
               f"vcap train --config config.yaml --features FEATS --output RUN3 --init-from {repo_id}   # fine-tune"]
        return made, use
    made.append("vcap pretrain --config config.yaml --output RUN")
    use = [f"vcap eval-retrieval --model {repo_id} --config config.yaml",
           f"vcap classify VIDEO_OR_FOLDER --model {repo_id} --labels 'walking,running,cooking'",
           f"vcap index VIDEO_FOLDER --model {repo_id} --output IDX && vcap search IDX 'a person cooking'",
           f"vcap extract --model {repo_id} --config config.yaml --output FEATS   # then train a caption model",
           f"vcap pretrain --config config.yaml --output RUN pretrain.init_from={repo_id}   # fine-tune"]
    return made, use


def _config_block(title: str, config: dict[str, Any]) -> str:
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return f"<details><summary>{title}</summary>\n\n```yaml\n{text}```\n\n</details>"


def _caption_tower_run(described: VcapFolder) -> RunRecord | None:
    source = ((described.caption or {}).get("video_tower") or {}).get("source")
    return find_run(Path(source)) if described.kind == "caption" and source else None


def model_card(described: VcapFolder, repo_id: str, file_sizes: dict[str, int]) -> str:
    """The README.md text (front matter + body) of ``described`` as the Hub repository ``repo_id``;
    ``file_sizes``: bytes of each of ``described.files``."""
    run, tower_run = find_run(described.folder), _caption_tower_run(described)
    val, evals = validation(run), evaluations(described.folder)
    what = ("a video captioning model: a CLIP video tower fine-tuned by video-text retrieval (stage 1) and a "
            "1-layer encoder + 3-layer decoder caption model on its frame features (stage 2), after CLIP4Caption"
            if described.kind == "caption" else
            "a CLIP video-text model fine-tuned by contrastive video-text retrieval (stage 1 of vcap, after CLIP4Clip)")
    rows = data_rows(run)
    parts = [f"# {repo_id.split('/')[-1]}", f"This is {what}. It was made with "
             "[vcap-toolkit](https://pypi.org/project/vcap-toolkit/) (`pip install vcap-toolkit`), which reads it "
             f"by name: `{repo_id}`.", "## Model", _table(("", ""), model_rows(described)),
             "## Training data", _table(("setting", "value"), rows) if rows else
             "The run folder that made this model was not beside it, so its data is not recorded here.",
             "## Metrics", _metrics_section(val, evals), *_usage(described, run, tower_run, repo_id), "## Files",
             _table(("file", "bytes"), [(f"`{name}`", file_sizes.get(name, "")) for name in described.files])]
    if run is not None:
        parts.append(_config_block("config.yaml: the run's config", run.config))
    if tower_run is not None:
        parts.append(_config_block("stage1_config.yaml: the stage-1 run's config", tower_run.config))
    data = card_data(described, run, [*(k for _, k, _ in val), *(k for numbers in evals.values() for k in numbers)])
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"


def _usage(described: VcapFolder, run: RunRecord | None, tower_run: RunRecord | None, repo_id: str) -> list[str]:
    """The sections "How it was made" and "How to use it"."""
    made, use = commands(described, run, repo_id)
    parts = ["## How it was made", "```sh\n" + "\n".join(made) + "\n```"]
    if run is not None:
        parts.append("`config.yaml` is the run's config, below" + (" (and `stage1_config.yaml` the stage-1 run's)"
                                                                   if tower_run is not None else "") + ".")
    return parts + ["## How to use it", "```sh\n" + "\n".join(use) + "\n```", "From Python:",
                    "```python\n" + _python_use(described, repo_id) + "\n```",
                    f"Offline: run `hf download {repo_id}` on a machine with internet, copy the Hugging Face cache "
                    "(`HF_HUB_CACHE`, default `~/.cache/huggingface/hub`) here and set `HF_HUB_OFFLINE=1`."]


def _python_use(described: VcapFolder, repo_id: str) -> str:
    if described.kind == "caption":
        return ("from caption.pipeline import CaptionPipeline\n\n"
                f'pipe = CaptionPipeline.from_pretrained("{repo_id}")\n'
                'print(pipe.caption(["video.mp4"]))')
    return ("from retrieval_pretrain.modeling.model_folder import from_pretrained\n\n"
            f'model, spec = from_pretrained("{repo_id}")')
