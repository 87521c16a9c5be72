"""The end-to-end pipeline: video files in, captions out.

    video -> frame sampling (decord, in DataLoader workers) -> CLIP preprocessing -> stage-1 video
      tower -> per-frame features -> caption model (beam search) -> caption

A caption model folder is self-contained: ``config.json`` + ``model.safetensors`` (the caption
model), ``tokenizer.model`` (sentencepiece) and ``video_tower/`` (the stage-1 model it was trained
on), so ``CaptionPipeline.from_pretrained(folder)`` needs nothing else::

    pipe = CaptionPipeline.from_pretrained("runs/caption/model")
    pipe.caption(["a.mp4", "b.mp4"])   # -> {"a.mp4": "a man is cooking", ...}
    pipe.caption(["long.mp4"], segments=10)   # -> {"long.mp4": [TimedCaption(0.0, 10.0, "..."), ...]}

A long video is captioned window by window (``caption_windows``; where the windows lie:
``caption.windows``): each window's frames are sampled inside it and decoded in DataLoader workers,
a batch at a time, so memory stays flat whatever the video's length; consecutive windows with the
same caption merge.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from caption.tokenizer import CaptionTokenizer
from caption.windows import TimedCaption, WindowSpec, merge_captions, video_windows
from decoders.config import MAX_BEAMS, DecodeConfig
from decoders.model import CaptionModel
from retrieval_pretrain.foundation.accelerate_setup import pick_device
from retrieval_pretrain.foundation.errors import ConfigError, ModelFolderError, VideoReadError, check_finite
from retrieval_pretrain.foundation.hub import resolve_model_folder
from retrieval_pretrain.modeling.model_folder import from_pretrained as load_video_tower
from retrieval_pretrain.modeling.model_folder import model_fingerprint
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.modeling.spec import FORMAT as STAGE1_FORMAT
from retrieval_pretrain.modeling.spec import ModelSpec
from retrieval_pretrain.reading.clips import Clip, as_clip, clip_id
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import encode_video_batches

TOWER_DIR = "video_tower"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


def expand_videos(items: Sequence[str | Path]) -> tuple[list[Path], list[VideoReadError]]:
    """The video files to caption, and the entries of the given folders that could not be listed.

    Files are taken as given (one that cannot be read is reported when it is captioned). A folder
    becomes its video files (by extension, recursively, sorted); other files in it are ignored.
    An entry of a folder that leads nowhere is never dropped silently: a broken symbolic link, a
    symbolic link loop, or a folder that cannot be listed (permission denied) is returned as a
    ``VideoReadError`` naming its path and reason, to be counted as a failed input. (A broken link
    is reported whatever its name: what it pointed to - a video, a folder of videos - is unknown.)

    Symbolic links are followed - to video files and to folders, so a folder of links to dataset
    folders works - but never into a folder that is already being listed above them (a link to
    its own parent folder is reported as a symbolic link loop instead of being walked forever).

    Raises:
        VideoReadError: nothing to caption and nothing to report: no file given, or folders
            without a video file.
    """
    out: list[Path] = []
    failed: list[VideoReadError] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            before = len(failed)
            found = sorted(_folder_videos(p, {}, failed))
            if not found and len(failed) == before:
                print(f"warning: no video files ({', '.join(VIDEO_EXTENSIONS)}) in folder {p}", file=sys.stderr)
            out.extend(found)
        else:
            out.append(p)
    if not out and not failed:
        raise VideoReadError(", ".join(map(str, items)) or "(nothing given)",
                             f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    return out, failed


def _folder_videos(folder: Path, above: dict[tuple[int, int], Path], failed: list[VideoReadError]) -> list[Path]:
    """The video files under ``folder``; ``above``: the folders being listed, (device, inode) -> path.
    Entries that lead nowhere are appended to ``failed``."""
    try:
        st = folder.stat()
        with os.scandir(folder) as it:
            names = sorted(entry.name for entry in it)
    except OSError as e:
        failed.append(VideoReadError(folder, f"cannot list folder: {e.strerror or e}"))
        return []
    above = {**above, (st.st_dev, st.st_ino): folder}
    found: list[Path] = []
    for name in names:
        path = folder / name
        try:
            target = _follow(path)
        except VideoReadError as e:
            failed.append(e)
            continue
        if stat.S_ISDIR(target.st_mode):
            loop = above.get((target.st_dev, target.st_ino))
            if loop is not None:
                failed.append(VideoReadError(path, f"symbolic link loop (leads back to folder {loop})"))
            else:
                found.extend(_folder_videos(path, above, failed))
        elif stat.S_ISREG(target.st_mode) and path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(path)
    return found


def _follow(path: Path) -> os.stat_result:
    """What ``path`` leads to (links followed); ``VideoReadError`` naming why it leads nowhere."""
    try:
        return path.stat()
    except OSError as e:
        if not path.is_symlink():
            raise VideoReadError(path, f"cannot read: {e.strerror or e}") from e
        if e.errno == errno.ELOOP:
            raise VideoReadError(path, "symbolic link loop") from e
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise VideoReadError(path, f"broken symbolic link (to {os.readlink(path)}, which does not exist)") from e
        raise VideoReadError(path, f"cannot follow symbolic link: {e.strerror or e}") from e


def _check_kind(folder: Path) -> None:
    """A stage-1 model folder given where a caption model belongs is said as such (a hostile round's
    find: transformers printed 200 lines, then the folder was called a mismatch of its own files)."""
    try:
        kind = json.loads((folder / "config.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError, RecursionError):
        return  # no readable config: from_pretrained's own error names it
    if kind == STAGE1_FORMAT:
        raise ModelFolderError(f"{folder} is a stage-1 (video-text retrieval) model folder, not a caption model: give "
                               "the caption model's folder (vcap train's RUN2/model); a stage-1 model is what "
                               "vcap extract, index and classify take")


def load_caption_model(folder: str | Path) -> CaptionModel:
    """The caption model in ``folder``, loaded strictly: a missing, unexpected or misshapen tensor,
    or an unreadable file, is a ``ModelFolderError`` naming the folder (never a random init)."""
    folder = Path(folder)
    _check_kind(folder)
    try:
        model, info = CaptionModel.from_pretrained(folder, output_loading_info=True)
    except Exception as e:  # transformers raises OSError, ValueError, JSON and safetensors errors
        raise ModelFolderError(f"{folder}: cannot load the caption model ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from e
    wrong = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, list(v)[:5]))}" for k, v in wrong.items())
        raise ModelFolderError(f"{folder / 'model.safetensors'} does not match its config.json ({detail})")
    check_finite(model.state_dict().items(), str(folder / "model.safetensors"))
    if not isinstance(model.config.video_tower, (dict, type(None))):
        raise ModelFolderError(f"{folder / 'config.json'}: 'video_tower' must be a mapping (what the stage-1 tower "
                               f"is), got {type(model.config.video_tower).__name__}")
    return model


def _check_tower(folder: Path, tower_dir: Path, want: str | None) -> None:
    """The video tower must be the one the caption model was trained on (its weights' fingerprint):
    a stage-1 folder retrained in place would otherwise give wrong features without a word."""
    have = model_fingerprint(tower_dir)
    if want != have:
        raise ModelFolderError(f"{tower_dir} is not the video tower {folder} was trained on (fingerprint {have}, "
                               f"recorded {want}); use the stage-1 model the caption model was trained with")


class CaptionPipeline:
    """A caption model with its tokenizer and stage-1 video tower, ready to caption video files."""

    def __init__(self, model: CaptionModel, tokenizer: CaptionTokenizer, tower: StageOneModel | None,
                 tower_spec: ModelSpec | None, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.tower, self.tower_spec = tower, tower_spec  # the stage-1 video tower and its spec

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "auto",
                        load_tower: bool = True) -> "CaptionPipeline":
        folder = resolve_model_folder(folder)  # a path, or a Hub id org/name[@revision] (foundation.hub)
        if not (folder / "config.json").is_file():
            raise ModelFolderError(f"{folder} is not a caption model folder (no config.json)")
        device = pick_device(device, key="--device") if isinstance(device, str) else device
        model = load_caption_model(folder).to(device).eval()
        tok_path = folder / CaptionTokenizer.FILENAME
        if not tok_path.is_file():
            raise ModelFolderError(f"{folder} has no {CaptionTokenizer.FILENAME}: not a complete caption model folder")
        tokenizer = CaptionTokenizer.load(tok_path)
        tower = spec = None
        if load_tower:
            tower_dir = folder / TOWER_DIR
            if not tower_dir.is_dir():
                source = (model.config.video_tower or {}).get("source")
                if not source or not Path(source).is_dir():
                    raise ModelFolderError(
                        f"{folder} has no {TOWER_DIR}/ and the stage-1 model it was trained on "
                        f"({source or 'unknown'}) is not there either"
                    )
                tower_dir = Path(source)
            _check_tower(folder, tower_dir, (model.config.video_tower or {}).get("fingerprint"))
            tower, spec = load_video_tower(tower_dir, device=device)
            tower.eval()
        return cls(model, tokenizer, tower, spec, device)

    def default_decode(self) -> DecodeConfig:
        """The decoding the model was validated with (``config.json``'s ``decode``), else the defaults.
        A recorded setting of the wrong type or range is a ``ModelFolderError`` naming the folder; one
        this release does not know (a newer release's) is left out with a warning."""
        where = Path(self.model.config.name_or_path or "the caption model") / "config.json"
        try:
            decode, unknown = DecodeConfig.from_saved(self.model.config.decode)
        except ValueError as e:
            raise ModelFolderError(f"{where}: the recorded decoding settings are not valid ({e})") from None
        if unknown:
            print(f"warning: {where}: decoding settings this release does not know are left out: "
                  f"{', '.join(unknown)}", file=sys.stderr)
        return decode

    @torch.no_grad()
    def caption_videos(self, videos: Sequence[tuple[str, Path | Clip]], decode: DecodeConfig | None = None,
                       num_workers: int = 2, batch_size: int | None = None, unit: str = "video",
                       progress: bool = True) -> dict[str, str | Exception]:
        """``{id: caption}``; a video that cannot be read maps to the exception naming it. A progress
        bar on stderr counts the items (``unit``: what it calls them)."""
        if self.tower is None:
            raise RuntimeError("this pipeline was loaded without its video tower")
        decode = decode or self.default_decode()
        pre = Preprocess.for_model(self.tower_spec)
        results: dict[str, str | Exception] = {}
        path_to_id = {str(as_clip(p)): vid for vid, p in videos}  # failures name the file (and range)
        batches = encode_video_batches(self.tower, list(videos), pre, self.device, batch_size or decode.batch_size,
                                       num_workers, method=self.tower_spec.eval_sampling, progress=False)
        with tqdm(total=len(videos), desc="caption", unit=unit, file=sys.stderr, disable=not progress) as bar:
            for ids, seq, mask, failed in batches:
                for path, reason in failed:
                    results[path_to_id[path]] = RuntimeError(reason)
                bar.update(len(ids) + len(failed))
                if not ids:
                    continue
                # Stage 2 trained on fp16-cached features: round the same way so captions match `evaluate`.
                feats = seq.half().float()  # (B, T, D)
                tokens = self.model.generate_captions(feats, mask, decode)
                results.update(zip(ids, self.tokenizer.decode_batch(tokens.tolist())))
        return {vid: results[vid] for vid, _ in videos if vid in results}

    def caption_windows(self, videos: Sequence[tuple[str, str | Path]], windows: WindowSpec,
                        decode: DecodeConfig | None = None, num_workers: int = 2, batch_size: int | None = None,
                        progress: bool = True) -> dict[str, list[TimedCaption] | VideoReadError]:
        """Caption each video window by window: ``{id: [TimedCaption, ...]}`` in time order, consecutive
        windows with the same caption merged (``caption.windows``). A video that cannot be read maps to
        the ``VideoReadError`` naming it; a window that cannot be read is a ``TimedCaption`` with its
        ``error``. The windows of all videos are captioned as one stream of batches."""
        plans: dict[str, list[tuple[float, float]] | VideoReadError] = {}
        for vid, path in tqdm(videos, desc="windows", unit="video", file=sys.stderr,
                              disable=not progress or not windows.shots):
            try:
                plans[vid] = video_windows(path, windows)
            except VideoReadError as e:
                plans[vid] = e
        items = [(clip_id(vid, s, e), Clip(Path(path), s, e)) for vid, path in videos
                 if not isinstance(plans[vid], Exception) for s, e in plans[vid]]
        results = self.caption_videos(items, decode, num_workers, batch_size, unit="window", progress=progress)
        out: dict[str, list[TimedCaption] | VideoReadError] = {}
        for vid, _ in videos:
            if isinstance(plans[vid], Exception):
                out[vid] = plans[vid]
                continue
            timed = []
            for s, e in plans[vid]:
                r = results.get(clip_id(vid, s, e), RuntimeError("not captioned"))
                timed.append(TimedCaption(s, e, r) if isinstance(r, str) else TimedCaption(s, e, None, str(r)))
            out[vid] = merge_captions(timed)
        return out

    def caption(self, paths: Sequence[str | Path], num_beams: int | None = None, batch_size: int = 8,
                num_workers: int = 2, segments: float | str | WindowSpec | None = None
                ) -> dict[str, str | list[TimedCaption] | Exception]:
        """Caption video files: ``{path: caption or exception}`` in input order. With ``segments``
        (seconds per window, ``"shots"``, or a ``WindowSpec``), each file window by window:
        ``{path: [TimedCaption, ...] or exception}`` (``caption_windows``)."""
        decode = self.default_decode()
        if num_beams is not None:
            if isinstance(num_beams, bool) or not isinstance(num_beams, int) or not 1 <= num_beams <= MAX_BEAMS:
                raise ConfigError(f"num_beams={num_beams!r}: give a whole number from 1 to {MAX_BEAMS}")
            decode = dataclasses.replace(decode, num_beams=num_beams)
        videos = [(str(p), Path(p)) for p in paths]
        if segments is not None:
            spec = segments if isinstance(segments, WindowSpec) else WindowSpec(segments)
            return self.caption_windows(videos, spec, decode, num_workers=num_workers, batch_size=batch_size)
        return self.caption_videos(videos, decode, num_workers=num_workers, batch_size=batch_size)
