"""Stage-1 step time of prompt tuning (``pretrain.mode=prompt``) against full fine-tuning, in one run.

    python -m benchmarks.bench_prompt [--epochs 2] [--workers 2]

On the demo's quick data (364 training clips, cached in ``--data``) with the demo's tiny configuration
(caption/demo/tiny_demo.yaml), ``vcap pretrain``'s training function runs three times with the same
data, head, batch and epochs, and the loops' own ``StepTimer`` fields (``data_s`` / ``compute_s`` of
log.jsonl, the first step left out) give each one's seconds per step:

1. ``full``, decoding every step (``video.cache_frames=0``);
2. ``full``, frames decoded once into memory (the demo's ``video.cache_frames=16``);
3. ``prompt``: CLIP frozen, frames encoded once by the image tower (the same 16 frames per video),
   training on features: prompts 2 + 2 around captions of at most 12 tokens (the tiny text tower
   has 16 positions).

Also each run's wall time and its time outside the steps (setup: the one-off decoding, for ``prompt``
also the image-tower pass; and saving the model). Prints a JSON summary as the last line, with the step-time ratios.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from benchmarks.bench_training import quick_demo_arguments, split_times  # noqa: E402
from caption.config import load  # noqa: E402
from caption.demo import CONFIG_PATH  # noqa: E402
from caption.demo import data as demo_data  # noqa: E402

RUNS = {
    "full, decode every step": ["video.cache_frames=0"],
    "full, frames in memory": ["video.cache_frames=16"],
    "prompt, features in memory": ["video.cache_frames=16", "pretrain.mode=prompt", "pretrain.prompt.prefix=2",
                                   "pretrain.prompt.suffix=2"],
}


def main(argv: list[str] | None = None) -> dict:
    args = quick_demo_arguments(__doc__, "epochs of each run").parse_args(argv)
    from retrieval_pretrain.stage1.train import train as pretrain

    data = Path(args.data)
    demo_data.generate_dataset(data, demo_data.quick_spec())
    common = [f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}", f"run.num_workers={args.workers}",
              "run.log_every=1", "pretrain.save_every=0", f"pretrain.epochs={args.epochs}", "pretrain.max_words=12"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(RUNS.items()):
            run = Path(tmp) / f"run{i}"
            start = time.perf_counter()
            pretrain(load(CONFIG_PATH, common + extra), run)
            wall = time.perf_counter() - start
            times = split_times(run / "log.jsonl")
            every = split_times(run / "log.jsonl", skip_first=False)  # the time outside steps: setup and saving
            results[name] = {**times, "wall_s": round(wall, 1),
                             "outside_steps_s": round(wall - every["data_s"] - every["compute_s"], 1)}
    base = results["full, decode every step"]["step_s"]
    cached = results["full, frames in memory"]["step_s"]
    prompt = results["prompt, features in memory"]["step_s"]
    for name, r in results.items():
        print(f"{name:<28} {1000 * r['step_s']:7.1f} ms/step (data {r['data_share']:.0%}), wall {r['wall_s']:.0f} s, "
              f"outside steps {r['outside_steps_s']:.0f} s",
              file=sys.stderr)
    summary = {"runs": results, "full_decode_over_prompt": round(base / prompt, 2),
               "full_cached_over_prompt": round(cached / prompt, 2), "epochs": args.epochs, "workers": args.workers,
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
