"""A long video as time windows: fixed-length windows or shots, and captions that repeat merged.

``vcap caption --segments`` and ``vcap evaluate`` on a dense dataset caption a video window by window
(``CaptionPipeline.caption_windows``); this module says where the windows are and what becomes of
their captions:

* ``segment_windows(duration, seconds)`` - consecutive windows of ``seconds`` from 0 to the video's
  end. The last one is shorter; a tail shorter than a quarter window (``TAIL_FRACTION``) is not a
  window of its own but joins the one before (so the last window lasts 0.25 to 1.25 windows): a
  caption of a few frames says little, and dropping it would leave the video's end uncaptioned.
* ``shot_windows`` - the shots PySceneDetect's content detector finds (HSV difference between
  consecutive frames; Castellano, ``scenedetect.ContentDetector``), bounded by ``bound_shots``: a cut
  less than ``min_segment`` after the previous kept cut, or before the video's end, is dropped (the
  short shot joins its neighbour; a flash of a few frames is no shot); a shot longer than
  ``max_segment`` is split into equal parts no longer than that.
* ``merge_captions`` - consecutive windows with the identical caption become one.

Times are seconds, rounded to the millisecond (what subtitles, ``--json`` and clip ids show). The
video's end is the end of its last frame (``reading.video.probe_video``, the reader the windows are
decoded with), so the windows cover the video exactly and each holds frames.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from retrieval_pretrain.foundation.errors import ConfigError, VideoReadError
from retrieval_pretrain.reading.clips import MIN_WINDOW
from retrieval_pretrain.reading.video import probe_video

SHOTS = "shots"
TAIL_FRACTION = 0.25  # a last window shorter than this share of a window joins the one before
SHOTS_MISSING = ("--segments shots needs PySceneDetect, which is not installed: pip install 'scenedetect>=0.7' "
                 "(or reinstall vcap-toolkit, which depends on it)")


@dataclass(frozen=True)
class WindowSpec:
    """How a video is cut: ``segments`` seconds per window, or ``"shots"`` (then shots shorter than
    ``min_segment`` merge and longer ones split at ``max_segment``). Checked when made: a value that
    cannot make sense is a ``ConfigError`` naming the option."""

    segments: float | str = 10.0
    min_segment: float = 2.0
    max_segment: float = 30.0

    def __post_init__(self) -> None:
        if self.segments != SHOTS:
            _positive("--segments", self.segments, f"a number of seconds > 0 or '{SHOTS}'", MIN_WINDOW)
            object.__setattr__(self, "segments", float(self.segments))
        _positive("--min-segment", self.min_segment)
        _positive("--max-segment", self.max_segment, least=MIN_WINDOW)
        if self.max_segment < self.min_segment:
            raise ConfigError(f"--max-segment {self.max_segment:g} is shorter than --min-segment {self.min_segment:g}")

    @property
    def shots(self) -> bool:
        return self.segments == SHOTS

    def as_dict(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the windows."""
        if self.shots:
            return {"segments": SHOTS, "min_segment": self.min_segment, "max_segment": self.max_segment}
        return {"segments": self.segments}


def _positive(option: str, value: Any, what: str = "a number of seconds > 0", least: float = 0.0) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"{option} {value!r}: give {what}")
    if value < least:
        raise ConfigError(f"{option} {value:g}: windows shorter than {least:g} s are not cut (times are kept to "
                          "the millisecond, and a window must hold a frame); give a longer one")


def parse_segments(text: str) -> float | str:
    """``--segments``' value: ``"shots"`` or a number of seconds > 0 (``ConfigError`` otherwise)."""
    if text.strip().lower() == SHOTS:
        return SHOTS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    _positive("--segments", value, f"a number of seconds > 0 or '{SHOTS}'", MIN_WINDOW)
    return value


def check_shots_available() -> None:
    """``ConfigError`` saying how to install PySceneDetect when it is missing (before any work)."""
    if importlib.util.find_spec("scenedetect") is None:
        raise ConfigError(SHOTS_MISSING)


def _ms(x: float) -> float:
    return float(round(x, 3))


def segment_windows(duration: float, seconds: float) -> list[tuple[float, float]]:
    """Consecutive ``(start, end)`` windows of ``seconds`` over ``[0, duration]``; a tail shorter
    than ``TAIL_FRACTION`` of a window joins the window before (one window for a short video)."""
    if not (duration > 0 and seconds > 0):
        raise ValueError(f"need duration > 0 and seconds > 0, got {duration}, {seconds}")
    count = max(1, math.ceil(duration / seconds - 1e-9))
    if count > 1 and duration - (count - 1) * seconds < TAIL_FRACTION * seconds:
        count -= 1
    edges = [_ms(i * seconds) for i in range(count)] + [_ms(duration)]
    return list(zip(edges[:-1], edges[1:]))


def bound_shots(cuts: Sequence[float], duration: float, min_segment: float,
                max_segment: float) -> list[tuple[float, float]]:
    """Windows from shot cuts (seconds): a cut less than ``min_segment`` after the previous kept cut
    (or before ``duration``) is dropped, then each shot longer than ``max_segment`` is split into
    the fewest equal parts no longer than it."""
    kept = [0.0]
    for t in sorted(cuts):
        if t - kept[-1] >= min_segment - 1e-6 and duration - t >= min_segment - 1e-6:
            kept.append(t)
    kept.append(duration)
    windows: list[tuple[float, float]] = []
    for start, end in zip(kept[:-1], kept[1:]):
        parts = max(1, math.ceil((end - start) / max_segment - 1e-9))
        step = (end - start) / parts
        windows += [(_ms(start + i * step), _ms(start + (i + 1) * step)) for i in range(parts)]
    return windows


def detect_cuts(path: str | Path, min_segment: float, progress: bool = False) -> list[float]:
    """Where shots start (seconds, the first shot's 0 left out), by PySceneDetect's
    ``ContentDetector`` (default threshold) reading the file through PyAV; no cut closer than
    ``min_segment`` to the one before. Frames are decoded one at a time (memory stays flat)."""
    try:
        import scenedetect  # deferred: PySceneDetect loads OpenCV (a second or so), only for --segments shots
    except ImportError:
        raise ConfigError(SHOTS_MISSING) from None
    try:
        video = scenedetect.open_video(str(path), backend="pyav", suppress_output=True)  # keep ffmpeg quiet
        manager = scenedetect.SceneManager()
        manager.add_detector(scenedetect.ContentDetector(min_scene_len=float(min_segment)))
        manager.detect_scenes(video, show_progress=progress)
        scenes = manager.get_scene_list(start_in_scene=True)
    except Exception as e:  # PyAV and OpenCV raise their own types on a file they cannot read
        raise VideoReadError(path, f"shot detection failed ({type(e).__name__}: {e})") from None
    return [start.seconds for start, _ in scenes[1:]]


def video_windows(path: str | Path, spec: WindowSpec, progress: bool = False) -> list[tuple[float, float]]:
    """The windows of one video file (``VideoReadError`` naming it when it cannot be read)."""
    duration = float(probe_video(path)["duration"])
    if not spec.shots:
        return segment_windows(duration, float(spec.segments))
    cuts = [t for t in detect_cuts(path, spec.min_segment, progress) if 0 < t < duration]
    return bound_shots(cuts, duration, spec.min_segment, spec.max_segment)


@dataclass(frozen=True)
class TimedCaption:
    """The caption of one window (``start`` / ``end`` seconds), or, for a window that could not be
    read, ``caption`` None and ``error`` the reason."""

    start: float
    end: float
    caption: str | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """``{"start", "end", "caption"}`` (``--json``; plus ``"error"`` for a window that failed)."""
        out: dict[str, Any] = {"start": self.start, "end": self.end, "caption": self.caption}
        if self.error is not None:
            out["error"] = self.error
        return out


def merge_captions(windows: Sequence[TimedCaption]) -> list[TimedCaption]:
    """Consecutive windows (each starting where the one before ends) with the identical caption as
    one window; a window that failed is kept as it is and joins nothing."""
    out: list[TimedCaption] = []
    for w in windows:
        last = out[-1] if out else None
        if (last is not None and w.caption is not None and last.caption == w.caption
                and abs(last.end - w.start) < 1e-6):
            out[-1] = TimedCaption(last.start, w.end, w.caption)
        else:
            out.append(w)
    return out


def clock(x: float) -> str:
    """Seconds as ``H:MM:SS.mmm`` (``0:01:02.500``): how windows are printed."""
    ms = round(x * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    return f"{h}:{m:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
