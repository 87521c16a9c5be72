"""Reading the files ``vcap score`` takes: predictions (``{id: caption}`` or a COCO results list
``[{video_id|image_id, caption}]``) and references (``{id: [captions]}``, COCO
``{"annotations": [...]}``, MSR-VTT ``{"sentences": [...]}`` or a list of
``{video_id|image_id, caption}``; a single reference string counts as one). Ids are compared as
strings (COCO's integer ids become ``"123"``). A malformed file is a ``DatasetError`` naming it
and the item."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from caption.metrics import score_captions
from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import DatasetError


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys(path))
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err.strerror or err})") from None


def _unique_keys(path: Path) -> Any:
    """A JSON object hook refusing a key given twice (JSON keeps the last without a word)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise DatasetError(f"{path}: key {key!r} appears twice in one object; which one to use is unknown")
            out[key] = value
        return out

    return hook


def _item_id(item: Any, path: Path, index: int) -> str:
    if isinstance(item, dict):
        for key in ("video_id", "image_id", "id"):
            if key in item:
                return str(item[key])
    raise DatasetError(f"{path}: item {index} has no video_id/image_id: {str(item)[:100]}")


def _item_caption(item: dict, path: Path, index: int) -> str:
    caption = item.get("caption")
    if not isinstance(caption, str):
        raise DatasetError(f"{path}: item {index} has no string 'caption': {str(item)[:100]}")
    return caption


def load_predictions(path: str | Path) -> dict[str, str]:
    """``{id: caption}`` from ``{"id": "caption"}`` or a COCO results list (module docstring)."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict):
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise DatasetError(f"{path}: predictions must map id -> caption string; not so for {', '.join(bad[:10])}")
        return {str(k): v for k, v in data.items()}
    if isinstance(data, list):
        out: dict[str, str] = {}
        dupes: list[str] = []
        for i, item in enumerate(data):
            vid = _item_id(item, path, i)
            if vid in out:
                dupes.append(vid)
            out[vid] = _item_caption(item, path, i)
        if dupes:
            raise DatasetError(f"{path}: more than one prediction for id(s) {', '.join(sorted(set(dupes))[:10])}")
        return out
    raise DatasetError(f"{path}: predictions must be {{id: caption}} or [{{video_id|image_id, caption}}, ...]")


def load_references(path: str | Path) -> dict[str, list[str]]:
    """``{id: [captions]}`` from ``{"id": [...]}``, COCO ``{"annotations": [...]}``, MSR-VTT
    ``{"sentences": [...]}`` or a list of ``{video_id|image_id, caption}`` (module docstring)."""
    path = Path(path)
    data = _read_json(path)
    items = None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        items = data["annotations"]
    elif isinstance(data, dict) and isinstance(data.get("sentences"), list):
        items = data["sentences"]
    if items is not None:
        out: dict[str, list[str]] = {}
        for i, item in enumerate(items):
            out.setdefault(_item_id(item, path, i), []).append(_item_caption(item, path, i))
        return out
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
                raise DatasetError(f"{path}: references of id {k} must be a list of strings")
            if not v or not all(c.strip() for c in v):
                raise DatasetError(f"{path}: references of id {k} must be non-empty captions, got {v!r}")
            out[str(k)] = list(v)
        return out
    raise DatasetError(f"{path}: references must be {{id: [captions]}} or {{\"annotations\": [...]}}")


def score_files(predictions_path: str | Path, references_path: str | Path, tokenize: str = "ptb",
                output: str | Path | None = None) -> dict[str, Any]:
    """``vcap score``: the metrics of a predictions file against a references file, also written to
    ``output/metrics.json`` when ``output`` is given."""
    predictions = load_predictions(predictions_path)
    references = load_references(references_path)
    metrics: dict[str, Any] = dict(score_captions(predictions, references, tokenize=tokenize))
    metrics.update({"count": len(predictions), "tokenize": tokenize})
    print(f"scored {len(predictions)} captions against {sum(map(len, references.values()))} references "
          f"(tokenize={tokenize})", file=sys.stderr)
    if output is not None:
        write_json(Path(output) / "metrics.json", metrics)
    return metrics
