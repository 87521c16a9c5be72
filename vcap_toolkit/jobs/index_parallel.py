"""``vcap index`` under ``accelerate launch``: several processes (GPUs, or machines sharing the index
folder) embed one library, each its own share into its own shards, then one merge step.

    accelerate launch --num_processes 4 -m vcap_toolkit.cli.main index VIDEOS --model M --output IDX
    accelerate launch --multi_gpu --num_processes 2 -m vcap_toolkit.cli.main index ...   # CPU: 2 processes

1. The main process claims and locks ``IDX``, makes (or checks) the index, merges what a killed
   run's processes left in ``IDX/parts/`` and repairs the shards; the others wait.
2. Every process lists the files to embed (the same list: the index is read-only meanwhile) and
   takes its contiguous share (``PartialState.split_between_processes``). It embeds its share into
   ``IDX/parts/rankR`` - an index of its own, one shard at a time, so a process killed midway loses
   at most the shard it was filling.
3. The failures of all shares are gathered; the main process merges every part's shards into the
   index (``VideoIndex.merge_parts``: each read and checked, then written as a shard of the index),
   drops the rows of files gone, writes ``failures.json`` and brings the vector index up to date
   (``search.finish_index``) - the one step that needs all the shards.

A rerun - of one process or several - first merges whatever complete part shards a killed run
left, so nothing embedded in them is embedded again. Only the main process prints the report.
"""

from __future__ import annotations

import pickle
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from retrieval_pretrain.foundation.accelerate_setup import pick_device, process_state
from retrieval_pretrain.foundation.errors import FeatureStoreError
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.foundation.ownership import claim_folder
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained
from retrieval_pretrain.stage1.data import Preprocess
from vcap_toolkit.jobs.index_store import VideoIndex
from vcap_toolkit.jobs.index_upkeep import INDEX
from vcap_toolkit.jobs.search import (
    SHARD_VIDEOS,
    build_index,
    check_vectors_kind,
    encode_shard,
    finish_index,
    open_for_indexing,
    plan_index,
    window_spec,
)
from vcap_toolkit.jobs.vector_index import AUTO


def index_videos(model_dir: Path, videos: Sequence[Path], output: Path, device: str = "auto", batch_size: int = 8,
                 num_workers: int = 0, shard_size: int = SHARD_VIDEOS, unlisted: Sequence[tuple[str, str]] = (),
                 segments: float | None = None, stride: float | None = None,
                 vectors: str = AUTO) -> dict[str, Any] | None:
    """``search.build_index`` in one process, or across the processes of an ``accelerate launch``
    (module docstring). Returns the report in the main process, None in the others."""
    state = process_state(device)
    if state.num_processes == 1:
        return build_index(model_dir, videos, output, pick_device(device), batch_size, num_workers, shard_size,
                           unlisted, segments, stride, vectors)
    windows = window_spec(segments, stride)
    check_vectors_kind(vectors)
    dev = state.device if device != "cpu" and state.device.type != "cpu" else torch.device("cpu")
    claim_folder(output, INDEX, write=state.is_main_process, wait=state.wait_for_everyone)  # before .lock exists
    with folder_lock(output, "vcap index", state):
        return _index_shares(state, Path(model_dir), videos, Path(output), dev, batch_size, num_workers, shard_size,
                             unlisted, windows, vectors)


def _index_shares(state: PartialState, model_dir: Path, videos: Sequence[Path], output: Path, device: torch.device,
                  batch_size: int, num_workers: int, shard_size: int, unlisted: Sequence[tuple[str, str]],
                  windows: dict[str, float] | None, vectors: str) -> dict[str, Any] | None:
    repaired, error = 0, None
    if state.is_main_process:
        try:
            model, spec, index, repaired = open_for_indexing(model_dir, output, device, windows)
        except Exception as e:  # said by every process, not left for the others to wait on
            error = _portable(e)
    error = broadcast_object_list([error], from_process=0)[0]  # the index is ready before any process reads it
    if error is not None:
        raise error
    if not state.is_main_process:
        model, spec = from_pretrained(model_dir, device=device)
        index = VideoIndex(output)
    plan = plan_index(index, videos, say=state.is_main_process)
    t0, done, failures = time.perf_counter(), 0, []
    with state.split_between_processes(plan.pending) as share:
        share = list(share)
        try:
            part = index.part(state.process_index)
            encode = partial(encode_shard, model, model_dir, part, Preprocess.for_model(spec), device, batch_size,
                             num_workers, spec.eval_sampling, scores_pairwise(model), windows)
            for shard in (share[i:i + shard_size] for i in range(0, len(share), shard_size)):
                kept, failed = encode(shard)
                failures += [{"path": p, "reason": r} for p, r in failed]
                done += len(kept)
        except Exception as e:
            error = _portable(e)
    print(f"index: process {state.process_index} embedded {done} of its {len(share)} videos", file=sys.stderr)
    shares = gather_object([{"done": done, "failures": failures, "error": error}])
    errors = [s["error"] for s in shares if s["error"] is not None]
    if errors:  # every process raises the first one (what was saved stays in the parts: a rerun merges it)
        raise errors[0]
    report = None
    if state.is_main_process:
        index.merge_parts()
        report = finish_index(index, plan, [{"path": p, "reason": r} for p, r in unlisted]
                              + [f for s in shares for f in s["failures"]], sum(s["done"] for s in shares),
                              repaired, len(unlisted), vectors, t0)
        report.update(processes=state.num_processes, indexed_per_process=[s["done"] for s in shares])
    state.wait_for_everyone()
    return report


def _portable(error: Exception) -> Exception:
    """``error`` as it can travel to the other processes (pickled): itself, or its message in a
    ``FeatureStoreError`` when its type cannot be rebuilt from its arguments."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return FeatureStoreError(f"{type(error).__name__}: {error}")
