"""Label lists and prompt templates: the text side of recognition and of training on labels.

``read_labels`` reads a class list (a file, one label per line as Kinetics' ``label_map_k400.txt``,
or a comma list); ``TEMPLATES`` is the built-in prompt ensemble that turns a label into sentences
(ActionCLIP), used by ``vcap classify`` / ``eval-classify`` and by stage 1 on labelled data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from retrieval_pretrain.foundation.errors import DatasetError

# Prompt templates in the manner of ActionCLIP's ensemble ("{}" is the label). Written for this
# toolkit; the paper's point is the ensemble, not the exact sentences.
TEMPLATES: tuple[str, ...] = (
    "a video of {}.",
    "a video of a person {}.",
    "a video of action: {}.",
    "{}, a video of action.",
    "{}, an action.",
    "a clip showing {}.",
    "a short video of someone {}.",
    "human action of {}.",
    "a photo of {}.",
    "{}.",
    "look, the person is {}.",
    "a video classified as {}.",
    "playing a kind of action: {}.",
    "doing a kind of action: {}.",
    "can you recognise the action of {}?",
    "the video shows {}.",
)


def read_labels(spec: str) -> list[str]:
    """The class labels: ``spec`` is a file (one label per line, as Kinetics' ``label_map_k400.txt``;
    blank lines and ``#`` comments skipped, a leading ``N `` / ``N,`` class index dropped) or, when no
    such file exists, a comma-separated list. ``DatasetError`` for no labels or a repeated one."""
    path = Path(spec)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: cannot read the label file ({e})") from None
        where = [(f"{path}:{i}", re.sub(r"^\s*\d+\s*[,\t ]\s*", "", x).strip()) for i, x in enumerate(lines, 1)]
        where = [(w, x) for w, x in where if x and not x.startswith("#")]
        source = str(path)
    elif path.exists() or ("," not in spec and (os.sep in spec or path.suffix.lower() in (".txt", ".csv", ".json"))):
        raise DatasetError(f"--labels {spec}: not a label file ({'a folder' if path.is_dir() else 'no such file'}); "
                           "give a file with one label per line, or a comma-separated list")
    else:
        where = [(f"label {i}", x.strip()) for i, x in enumerate(spec.split(","), 1) if x.strip()]
        source = f"--labels {spec!r}"
    if not where:
        raise DatasetError(f"{source}: no labels (give a file with one label per line, or a comma list)")
    seen: dict[str, str] = {}
    for at, label in where:
        if label in seen:
            raise DatasetError(f"{at}: label {label!r} repeats {seen[label]}")
        seen[label] = at
    return [label for _, label in where]


def read_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """The user's templates (each must contain ``{}`` once), or the built-in ensemble."""
    if not templates:
        return TEMPLATES
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise DatasetError(f"--template {t!r}: a template holds the label's place as '{{}}', exactly once, "
                               "and no other brace")
    return tuple(templates)
