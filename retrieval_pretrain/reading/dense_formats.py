"""Readers of the dense video captioning datasets: untrimmed videos with time-stamped sentences.

Each annotated segment becomes one entry: a ``clips.clip_id`` (``v_abc[12.5-20]``) with the segment's
range of its source video (``VideoEntry.start`` / ``end``, ``source_id`` = the video's id). Sentences
given for the same segment of a video are one entry with several captions.

* ``activitynet`` - ActivityNet Captions (Krishna et al., ICCV 2017): ``train.json``, ``val_1.json``,
  ``val_2.json`` in ``data.split_files`` (split -> file), each ``{"v_ID": {"duration": s,
  "timestamps": [[start, end], ...], "sentences": [...]}}``. The video file is ``<videos>/v_ID<ext>``,
  else ``<videos>/ID<ext>`` (the id without ``v_``, as some downloads name them).
* ``youcook2`` - YouCook2 (Zhou et al., AAAI 2018): ``youcookii_annotations_trainval.json`` as
  ``data.annotations``, ``{"database": {ID: {"duration", "subset": "training" | "validation",
  "recipe_type", "annotations": [{"segment": [start, end], "id", "sentence"}]}}}``; ``training`` is
  the train split, ``validation`` val. The video file is ``<videos>/ID<ext>``, else the official
  download layout ``<videos>/<subset>/<recipe_type>/ID<ext>``.

Segments that cannot be right are named and counted (``Annotations.problems``) and skipped: end
before or at the start (the real ActivityNet train file has 2 reversed and 2 zero-length ones), a
negative start, a start at or past the video's duration, times that are not finite numbers. A
segment that ends past the duration (29 / 5 / 1 in ActivityNet's train / val_1 / val_2, by at most
0.01 s) is cut at the duration and listed in ``Annotations.clipped`` (an end past it by at most
1e-6 s is the same number written twice, ``82.73000000000001``: cut, not listed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from retrieval_pretrain.reading.annotation_table import (
    AnnotationError,
    AnnotationProblem,
    Table,
    read_json,
    required_file,
    split_files,
    video_path,
)
from retrieval_pretrain.reading.clips import clip_id, range_problem, seconds
from retrieval_pretrain.reading.data_config import DataConfig

_YOUCOOK_SPLITS = {"training": "train", "validation": "val", "testing": "test"}


def _find_video(data: DataConfig, stems: list[str]) -> Path:
    """The first of ``<videos>/<stem><ext>`` that exists, else the first stem's path."""
    for stem in stems:
        path = video_path(data, stem)
        if path.exists():
            return path
    return video_path(data, stems[0])


def _id_problem(vid: str) -> str:
    """Why a video id cannot name a file in the video folder (``""`` when it can)."""
    if not vid.strip() or vid in (".", "..") or any(c in vid for c in "/\\\x00"):
        return f"the video id {vid[:60]!r} is not one file name"
    return ""


def _duration(info: dict[str, Any]) -> tuple[float, str]:
    """The video's duration from its ``duration`` field, or ``(nan, why)``."""
    d = info.get("duration")
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
        return math.nan, f"'duration' must be a positive number of seconds, got {d!r}"
    return float(d), ""


def _segment(seg: Any, sentence: Any, duration: float) -> tuple[tuple[float, float] | None, str, str]:
    """``(range, sentence, why)`` of one annotated segment; ``range`` None when it is skipped.
    ``why`` alone with a range: the range was cut at the duration (the text says by how much)."""
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        return None, "", f"a segment must be [start, end], got {str(seg)[:60]}"
    if not isinstance(sentence, str) or not sentence.strip():
        return None, "", f"the sentence must be a non-empty string, got {str(sentence)[:60]!r}"
    start, end = seg
    why = range_problem(start, end)
    if why:
        return None, "", why
    if start >= duration:
        return None, "", f"starts at {seconds(start)} s, at or past the video's duration {seconds(duration)} s"
    if end > duration + 1e-6:  # past the end; up to 1e-6 s is float noise of equal values (82.73000000000001)
        return (float(start), duration), sentence.strip(), (f"ends at {seconds(end)} s, {end - duration:.3g} s past "
                                                            f"the duration {seconds(duration)} s; cut there")
    return (float(start), min(float(end), duration)), sentence.strip(), ""


def _add_video(table: Table, vid: str, path: Path, pairs: list[tuple[Any, Any]], duration: float,
               split: str, where: str) -> None:
    """One video's segments as entries (same range: one entry, several captions)."""
    groups: dict[tuple[float, float], list[str]] = {}
    for k, (seg, sentence) in enumerate(pairs):
        span, text, why = _segment(seg, sentence, duration)
        source = f"{where} ({vid}, segment {k})"
        if span is None:
            table.problem(source, f"{why}; skipped")
            continue
        if why:
            table.ann.clipped.append(AnnotationProblem(source, why))
        groups.setdefault(span, []).append(text)
    for span, captions in groups.items():
        table.add(clip_id(vid, *span), path, captions, split, f"{where} ({vid})", span=span, source_id=vid)


def _activitynet_file(data: DataConfig, table: Table, split: str, path: Path) -> None:
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected ActivityNet Captions' object of videos "
                              f"({{\"v_ID\": {{\"duration\", \"timestamps\", \"sentences\"}}}}), got {type(raw).__name__}")
    for vid, info in raw.items():
        if not isinstance(info, dict):
            table.problem(f"{path} ({vid})", f"expected an object, got {type(info).__name__}; skipped")
            continue
        times, sentences = info.get("timestamps"), info.get("sentences")
        duration, why = _duration(info)
        why = _id_problem(vid) or why
        if not why and not (isinstance(times, list) and isinstance(sentences, list) and len(times) == len(sentences)):
            why = "'timestamps' and 'sentences' must be lists of the same length"
        if why:
            table.problem(f"{path} ({vid})", f"{why}; skipped")
            continue
        stems = [vid, vid[2:]] if vid.startswith("v_") and len(vid) > 2 else [vid]
        _add_video(table, vid, _find_video(data, stems), list(zip(times, sentences)), duration, split, str(path))


def load_activitynet(data: DataConfig, table: Table) -> None:
    """``data.format: activitynet`` (see the module docstring): one file per split in ``data.split_files``."""
    files = split_files(data, "activitynet")
    if not files:
        raise AnnotationError("format 'activitynet' reads data.split_files (split -> train.json / val_1.json / "
                              "val_2.json); none is set")
    for split, path in files.items():
        _activitynet_file(data, table, split, path)


def load_youcook2(data: DataConfig, table: Table) -> None:
    """``data.format: youcook2`` (see the module docstring): ``data.annotations`` is the trainval json."""
    path = required_file(data.annotations, "annotations", "youcook2")
    raw = read_json(path)
    base = raw.get("database") if isinstance(raw, dict) else None
    if not isinstance(base, dict):
        raise AnnotationError(f"{path}: expected YouCook2's {{\"database\": {{ID: {{...}}}}}}, "
                              f"got {type(raw).__name__}{' without a database object' if isinstance(raw, dict) else ''}")
    for vid, info in base.items():
        where = f"{path} ({vid})"
        if not isinstance(info, dict):
            table.problem(where, f"expected an object, got {type(info).__name__}; skipped")
            continue
        duration, why = _duration(info)
        why = _id_problem(vid) or why
        subset, segments = info.get("subset"), info.get("annotations")
        if not why and (not isinstance(subset, str) or subset not in _YOUCOOK_SPLITS):  # a list is unhashable
            why = f"'subset' must be one of {', '.join(_YOUCOOK_SPLITS)}, got {str(subset)[:40]!r}"
        if not why and not (isinstance(segments, list) and all(isinstance(a, dict) for a in segments)):
            why = "'annotations' must be a list of {segment, sentence} objects"
        if why:
            table.problem(where, f"{why}; skipped")
            continue
        recipe = info.get("recipe_type")
        stems = [vid] + ([f"{subset}/{recipe}/{vid}"] if isinstance(recipe, str) and recipe.isalnum() else [])
        pairs = [(a.get("segment"), a.get("sentence")) for a in segments]
        _add_video(table, vid, _find_video(data, stems), pairs, duration, _YOUCOOK_SPLITS[subset], str(path))
