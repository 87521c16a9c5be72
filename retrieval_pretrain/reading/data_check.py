"""``vcap data check``: what a caption dataset holds, and what is wrong with it, before a long run.

Per split: videos, captions, captions per video and caption length in words. Then everything that
would make a run skip something: malformed annotation entries (from ``load_annotations``), entries
whose video file is missing, and - with ``probe`` - video files that exist but cannot be read
(truncated, or failing to decode one of the frames a run would sample: ``video_probe``);
and what a run would use without a word though it is probably wrong: splits that none of
``data.train_split`` / ``val_split`` / ``test_split`` names (``Train``, ``dev``, ``testing``: never
trained or evaluated on; a near miss gets a hint), and video paths outside ``data.videos``.
The summary is one JSON-able dict (``check_dataset``); ``report_text`` turns it into a few lines for
a person. ``vcap data check`` prints both and exits 0 only when nothing is wrong.
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from retrieval_pretrain.reading.annotation_table import normalize_split, split_role
from retrieval_pretrain.reading.annotations import Annotations, load_annotations
from retrieval_pretrain.reading.clips import seconds
from retrieval_pretrain.reading.data_config import DataConfig, VideoConfig
from retrieval_pretrain.reading.video import probe_video

MAX_LISTED_MISSING = 20


def _stats(values: list[float], mean: bool = True) -> dict[str, float]:
    if not values:
        return {}
    out = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    if mean:
        out["mean"] = round(statistics.fmean(values), 3)
    return out


def split_summary(ann: Annotations) -> dict[str, dict[str, Any]]:
    """Per split: ``videos``, ``captions``, ``captions_per_video`` (min/median/max/mean) and
    ``caption_words`` (min/median/max, whitespace-separated words)."""
    out = {}
    for name in ann.splits():
        entries = ann.split(name)
        per_video = [len(e.captions) for e in entries]
        words = [len(c.split()) for e in entries for c in e.captions]
        out[name] = {
            "videos": len(entries),
            "captions": sum(per_video),
            "captions_per_video": _stats(per_video),
            "caption_words": _stats(words, mean=False),
        }
    return out


SPLIT_KEYS = ("train_split", "val_split", "test_split")


def unused_splits(ann: Annotations, data: DataConfig) -> list[dict[str, Any]]:
    """``[{split, videos, hint?}]`` for each split of the annotations that no configured split name
    (``data.train_split`` / ``val_split`` / ``test_split``) uses; ``hint`` when it is a near miss
    of one (case, or ``dev``/``training``/``testing``: ``annotation_table.split_role``)."""
    used = {normalize_split(getattr(data, key)) for key in SPLIT_KEYS}
    out = []
    for name in ann.splits():
        if name in used:
            continue
        item: dict[str, Any] = {"split": name, "videos": len(ann.split(name))}
        for key in SPLIT_KEYS:
            configured = getattr(data, key)
            if split_role(name) == split_role(configured):
                item["hint"] = (f"looks like split '{configured}' (data.{key}): rename it in the annotations, "
                                f"or set data.{key}={name}")
                break
        out.append(item)
    return out


def _reason(path: Path, err: Exception) -> str:
    """One line ``path: reason``: the error's own message when it starts with the path
    (``VideoReadError``), else ``path: Type: message`` (first line; decord appends a C++ trace)."""
    text = str(err).strip()
    if text.startswith(str(path)):
        return text.splitlines()[0]
    first = text.splitlines()[0] if text else ""
    return f"{path}: {type(err).__name__}" + (f": {first}" if first else "")


def probe_videos(paths: list[Path], probe_fn: Callable[[Path], Any], progress: bool = True,
                 found: dict[Path, Any] | None = None) -> list[dict[str, str]]:
    """Open each file with ``probe_fn``; return ``[{path, reason}]`` for those that raise (and put
    what it returned for the others in ``found``)."""
    bad = []
    for path in tqdm(paths, desc="probing videos", unit="video", file=sys.stderr, disable=not progress):
        try:
            info = probe_fn(path)
        except Exception as e:  # a bad file is reported, never fatal
            bad.append({"path": str(path), "reason": _reason(path, e)})
        else:
            if found is not None:
                found[path] = info
    return bad


def ranges_past_the_end(entries: list[Any], found: dict[Path, Any]) -> list[dict[str, str]]:
    """``[{path, reason}]`` for each time range that starts at or past the end of its probed video
    (every read of it would fail: ``clips.frames_in_range``)."""
    bad = []
    for e in entries:
        info = found.get(Path(e.path))
        duration = info.get("duration") if isinstance(info, dict) else None
        if e.start is not None and isinstance(duration, (int, float)) and e.start >= duration:
            bad.append({"path": str(e.path), "reason": f"{e.path}: the range {seconds(e.start)}-{seconds(e.end)} s "
                                                      f"starts past the end of the video ({seconds(duration)} s long)"})
    return bad


def video_probe(video: VideoConfig) -> Callable[[Path], Any]:
    """The default probe: ``retrieval_pretrain.reading.video.probe_video`` refusing truncated files and
    decoding every frame a run with ``video`` would sample - the ``eval_sampling`` and
    ``train_sampling`` picks of ``num_frames`` frames, the first and last frame of each TSN segment
    (training's random picks lie between), the last frame, and with ``cache_frames`` the frame
    cache's uniform picks."""
    samplings = {(video.num_frames, video.eval_sampling), (video.num_frames, video.train_sampling)}
    if video.cache_frames > 0:
        samplings.add((video.cache_frames, "uniform"))
    return functools.partial(probe_video, samplings=sorted(samplings))


def _probed(ann: Annotations, existing: list[Path], probe_fn: Callable[[Path], Any], progress: bool) -> dict[str, Any]:
    """``unreadable_videos``: the files ``probe_fn`` cannot read, and the ranges past their video's end."""
    found: dict[Path, Any] = {}
    items = probe_videos(existing, probe_fn, progress=progress, found=found)
    items += ranges_past_the_end(ann.entries, found)
    return {"count": len(items), "probed": len(existing), "items": items}


def check_dataset(data: DataConfig, probe: bool = False, probe_fn: Callable[[Path], Any] | None = None,
                  progress: bool = True, video: VideoConfig | None = None) -> dict[str, Any]:
    """Summarise the dataset ``data`` describes (a JSON-able dict).

    Args:
        data: the dataset section of a config.
        probe: also read every existing video file.
        probe_fn: ``probe_fn(path)`` raises when a file is unreadable; default
            ``video_probe(video)``.
        progress: show a tqdm bar on stderr while probing.
        video: the frame sampling a run uses (the config's ``video`` section; default
            ``VideoConfig()``), for the default probe.

    Returns:
        ``format``, ``annotations``, ``videos_dir``, ``splits`` (see ``split_summary``),
        ``total`` ({videos, captions}), ``problems`` ([{source, reason}]) and ``problem_count``,
        ``missing_videos`` ({count, total, paths: the first 20}), ``unreadable_videos``
        ({count, probed, items: [{path, reason}]}, ``None`` without ``probe``), ``unused_splits``
        (see ``unused_splits``), ``clipped_segments`` ({count, items}: ranges cut at their video's duration,
        kept), ``outside_videos`` ({count, items: [{source, reason}]}: entries
        whose video path is outside ``data.videos``), and ``ok``: no problems, no missing and no
        unreadable videos, no unused split and no video path outside the video folder.

    Raises:
        AnnotationError: an annotation file that cannot be read at all.
    """
    ann = load_annotations(data, warn=False)  # paths outside data.videos: listed in the summary instead
    paths = list(dict.fromkeys(Path(e.path) for e in ann.entries))  # unique, in table order
    missing = [p for p in paths if not p.is_file()]
    unreadable = None
    if probe:
        probe_fn = probe_fn or video_probe(video if video is not None else VideoConfig())
        gone = set(missing)
        unreadable = _probed(ann, [p for p in paths if p not in gone], probe_fn, progress)
    summary = {
        "format": data.format,
        "annotations": str(data.annotations),
        "split_files": dict(data.split_files),
        "videos_dir": str(data.videos),
        "splits": split_summary(ann),
        "total": {"videos": len(ann.entries), "captions": sum(len(e.captions) for e in ann.entries),
                  "source_videos": len({e.source for e in ann.entries})},
        "problem_count": len(ann.problems),
        "problems": [{"source": q.source, "reason": q.reason} for q in ann.problems],
        "unused_splits": unused_splits(ann, data),
        "outside_videos": {"count": len(ann.outside), "items": [{"source": q.source, "reason": q.reason}
                                                                 for q in ann.outside]},
        "clipped_segments": {"count": len(ann.clipped), "items": [{"source": q.source, "reason": q.reason}
                                                                  for q in ann.clipped]},
        "missing_videos": {"count": len(missing), "total": len(paths),
                           "paths": [str(p) for p in missing[:MAX_LISTED_MISSING]]},
        "unreadable_videos": unreadable,
    }
    summary["ok"] = not ann.problems and not missing and not (unreadable and unreadable["count"])
    summary["ok"] = summary["ok"] and not summary["unused_splits"] and not ann.outside and bool(ann.entries)
    return summary


def _split_and_path_lines(s: dict[str, Any]) -> list[str]:
    """The report's lines on unused splits and on video paths outside the video folder."""
    lines = []
    unused = s["unused_splits"]
    if unused:
        lines.append(f"splits not used by data.train_split / val_split / test_split: {len(unused)} "
                     "(never trained or evaluated on)")
        lines.extend(f"  {u['split']} ({u['videos']} videos)" + (f": {u['hint']}" if "hint" in u else "")
                     for u in unused)
    out = s["outside_videos"]
    if out["count"]:
        lines.append(f"video paths outside the video folder: {out['count']} (kept; set data.videos to a folder "
                     "that holds them all if that is meant)")
        lines.extend(f"  {q['source']}: {q['reason']}" for q in out["items"][:10])
        if out["count"] > 10:
            lines.append(f"  ... and {out['count'] - 10} more (see the JSON)")
    return lines


def report_text(s: dict[str, Any]) -> str:
    """A few lines for a person."""
    lines = [f"dataset: format {s['format']}, annotations {s['annotations'] or '-'}, videos {s['videos_dir'] or '.'}"]
    for name, sp in s["splits"].items():
        cpv, words = sp["captions_per_video"], sp["caption_words"]
        lines.append(f"  {name:<6} {sp['videos']:>7} videos {sp['captions']:>8} captions | captions/video "
                     f"{cpv['min']}-{cpv['max']} (mean {cpv['mean']}) | words/caption {words['min']}-"
                     f"{words['max']} (median {words['median']:g})")
    if not s["total"]["videos"]:
        lines.append("no videos at all: the annotations hold no usable entry")
    lines.append(f"annotation problems: {s['problem_count']}")
    for q in s["problems"][:10]:
        lines.append(f"  {q['source']}: {q['reason']}")
    if s["problem_count"] > 10:
        lines.append(f"  ... and {s['problem_count'] - 10} more (see the JSON)")
    lines.extend(_split_and_path_lines(s))
    if s["total"]["source_videos"] != s["total"]["videos"]:
        lines.append(f"time ranges: {s['total']['videos']} clips of {s['total']['source_videos']} videos")
    cut = s["clipped_segments"]
    if cut["count"]:
        lines.append(f"segments cut at their video's duration: {cut['count']} (kept)")
        lines.extend(f"  {q['source']}: {q['reason']}" for q in cut["items"][:5])
        if cut["count"] > 5:
            lines.append(f"  ... and {cut['count'] - 5} more (see the JSON)")
    m = s["missing_videos"]
    lines.append(f"missing video files: {m['count']} of {m['total']}")
    lines.extend(f"  {p}" for p in m["paths"][:5])
    if m["count"] > 5:
        lines.append(f"  ... and {m['count'] - 5} more")
    u = s["unreadable_videos"]
    if u is None:
        lines.append("unreadable video files: not probed (use --probe)")
    else:
        lines.append(f"unreadable video files: {u['count']} of {u['probed']} probed")
        lines.extend(f"  {it['reason']}" for it in u["items"][:10])
        if u["count"] > 10:
            lines.append(f"  ... and {u['count'] - 10} more (see the JSON)")
    lines.append("OK" if s["ok"] else "NOT OK")
    return "\n".join(lines)
