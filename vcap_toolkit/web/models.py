"""The models ``vcap serve`` uses, loaded once at start (``ServeModels.load``): the caption pipeline
with its stage-1 video tower; the recognizer (``--retrieval-model``, else that same tower object); the
index's model (the recognizer or tower again when its weights are the same file, by fingerprint).
Every model call holds ``ServeModels.lock``: inference runs one request at a time (on a CPU, torch
already spreads one forward pass over all cores), while the app serves files in parallel.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from caption.config import load as load_config
from caption.pipeline import TOWER_DIR, CaptionPipeline
from retrieval_pretrain.foundation.errors import FeatureMismatchError, VideoReadError
from retrieval_pretrain.foundation.hub import resolve_model_folder
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, model_fingerprint
from vcap_toolkit.jobs.moments import Hit
from vcap_toolkit.jobs.recognition import classify_videos, load_recognizer, read_templates
from vcap_toolkit.jobs.search import IndexSearcher
from vcap_toolkit.web.serve_paths import PathGuard, index_folders


class ServeModels:
    """Everything the page uses, loaded once: the caption pipeline, the recognizer and the index.

    ``lock`` is held around every model call (see the module docstring)."""

    def __init__(self, pipe: CaptionPipeline, caption_name: str, recognizer: tuple[Any, dict[str, Any]],
                 recognizer_name: str, index: Any | None = None,
                 search_model: tuple[Any, dict[str, Any]] | None = None):
        self.pipe, self.caption_name = pipe, caption_name
        self.recognizer, self.recognizer_name = recognizer, recognizer_name
        self.index, self.search_model = index, search_model  # index: an IndexSearcher (opened once)
        self.lock = threading.Lock()
        self.index_paths: list[str] = list(dict.fromkeys(index.index.paths())) if index is not None else []
        self.pairwise = index is not None and index.meta.get("scoring") == "pairwise"

    @classmethod
    def load(cls, caption_model: str | Path, retrieval_model: str | Path | None = None,
             index: str | Path | None = None, device: str = "auto") -> "ServeModels":
        """Load the models ``vcap serve`` names. Without ``retrieval_model`` the caption model's
        own stage-1 tower classifies; the index's model is loaded only if it is neither of those.
        The models may be Hub ids, ``org/name[@revision]`` (``foundation.hub``)."""
        pipe = CaptionPipeline.from_pretrained(caption_model, device=device)
        if retrieval_model is not None:
            retrieval_model = resolve_model_folder(retrieval_model, "--retrieval-model")
        tower_print = (pipe.model.config.video_tower or {}).get("fingerprint")
        loaded = {tower_print: (pipe.tower, pipe.tower_spec)} if tower_print else {}
        if retrieval_model is None:
            recognizer, name = (pipe.tower, pipe.tower_spec), f"{caption_model}/{TOWER_DIR} (the caption model's tower)"
        else:
            recognizer = load_recognizer(load_config(None, []), str(retrieval_model), None, pipe.device)
            name = str(retrieval_model)
            if Path(retrieval_model).is_dir():
                loaded[model_fingerprint(retrieval_model)] = recognizer
        video_index = search_model = None
        if index is not None:
            video_index = IndexSearcher(index)
            meta = video_index.meta
            model_dir = Path(meta["model"])
            if meta["model_fingerprint"] not in loaded:
                weights = model_dir / "model.safetensors"
                if not weights.is_file() or model_fingerprint(model_dir) != meta["model_fingerprint"]:
                    raise FeatureMismatchError(f"{index}: the model it was built with ({model_dir}, fingerprint "
                                               f"{meta['model_fingerprint']}) is gone or changed; rebuild the index")
                loaded[meta["model_fingerprint"]] = from_pretrained(model_dir, device=pipe.device)
            search_model = loaded[meta["model_fingerprint"]]
            scoring = meta.get("scoring", "embedding")
            if scores_pairwise(search_model[0]) != (scoring == "pairwise"):
                raise FeatureMismatchError(f"{index}: an index of {scoring} scoring, not what its model "
                                           f"{model_dir} scores by (made by an earlier version of vcap); rebuild it "
                                           "with 'vcap index' into a new folder")
        return cls(pipe, str(caption_model), recognizer, name, video_index, search_model)

    def caption(self, name: str, path: Path, beam: int | None) -> tuple[str, float]:
        """``(caption, seconds of inference)`` of one video; ``VideoReadError`` if it cannot be read."""
        decode = self.pipe.default_decode()
        if beam is not None:
            decode.num_beams = beam
        with self.lock:
            t0 = time.perf_counter()
            result = self.pipe.caption_videos([(name, path)], decode, num_workers=0, batch_size=1)[name]
            seconds = time.perf_counter() - t0
        if not isinstance(result, str):
            raise VideoReadError(name, file_reason(str(result), path))
        return result, seconds

    def classify(self, name: str, path: Path, labels: Sequence[str], top: int) -> tuple[list[tuple[str, float]], float]:
        """``([(label, probability)] * top, seconds)`` for one video, with the built-in prompt ensemble."""
        net, spec = self.recognizer
        with self.lock:
            t0 = time.perf_counter()
            ranked, failed = classify_videos(net, spec, [(name, path)], labels, read_templates(None), self.pipe.device,
                                             top=top, batch_size=1, num_workers=0)
            seconds = time.perf_counter() - t0
        if name not in ranked:
            raise VideoReadError(name, file_reason(next(iter(failed.values()), "could not be read"), path))
        return ranked[name], seconds

    @torch.no_grad()
    def search(self, text: str, top: int) -> tuple[list[Hit], float]:
        """The ``top`` results whose files still exist, best first - videos, or moments of an index
        of windows (overlapping ones of a video collapsed) - by the index model's own score (cosine
        of embeddings through the vector index, or a pairwise model's ``pair_scores``), and the
        seconds it took (``ranking.IndexSearcher``)."""
        model, spec = self.search_model
        device = self.pipe.device
        with self.lock:
            t0 = time.perf_counter()
            tokens = tokenizer_from_spec(spec)([text]).to(device)
            query = model.encode_text(tokens).float().cpu()[0].numpy()  # (D,)
            if self.pairwise:
                found = self.index.by_pairs(model, model.encode_text_state(tokens), query, top, device)
            else:
                found = self.index.by_vector(query, top)
            seconds = time.perf_counter() - t0
        return found, seconds


def file_reason(message: str, path: Path) -> str:
    """A reader's ``"{path}: {reason}"`` without the (temporary) path."""
    return message.removeprefix(f"{path}: ").replace(str(path), "the file")


def path_guard(models: ServeModels, allow: Sequence[str | Path] | None) -> PathGuard:
    """The guard ``vcap serve`` uses: the ``allow`` folders, or by default those of the index's
    videos; the index's own paths readable as stored."""
    return PathGuard(allow if allow is not None else index_folders(models.index_paths), indexed=models.index_paths)
