"""How long stage 1's training loader takes for an epoch of the demo, without the model's steps.

    python -m benchmarks.bench_stage1_loader --data vcap_demo/data [--epochs 4] [--keep-freed-memory]

Builds stage 1 as ``vcap pretrain`` does with the demo's config (``train.setup``: the frame cache
is filled first) in a scratch folder, then iterates the training loader for ``--epochs`` epochs and
prints each epoch's seconds and a checksum of every batch's frames and tokens. To compare two
versions of the code, run it from each checkout in turn (e.g. ``PYTHONPATH=/path/to/worktree``),
alternating: equal checksums say the items are the same. BENCHMARKS.md ("Demo speed") lists what
this measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder `vcap demo` generated (OUTPUT/data)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep-freed-memory", action="store_true", help="glibc's malloc keeps freed memory (vcap demo's)")
    args = p.parse_args(argv)
    import torch

    from retrieval_pretrain.foundation.machine import keep_freed_memory

    if args.keep_freed_memory:
        keep_freed_memory()

    from caption.demo.run import demo_config
    from retrieval_pretrain.stage1 import train as stage1

    torch.set_num_threads(args.threads)
    cfg = demo_config(Path(args.data))
    with tempfile.TemporaryDirectory() as scratch:
        acc = stage1.make_accelerator(cfg.run.mixed_precision, cfg.pretrain.grad_accum, cfg.run.device, cfg.run.seed)
        run = stage1.setup(cfg, Path(scratch) / "stage1", acc)
        seconds, checksum = [], 0.0
        for epoch in range(args.epochs):
            run.sampler.use_epoch(epoch)
            start = time.perf_counter()
            for batch in run.loader:
                checksum += float(batch["frames"][:, :, 0].sum()) + float(batch["tokens"].sum())
            seconds.append(round(time.perf_counter() - start, 3))
    result = {"code": str(Path(stage1.__file__).parents[2]), "epoch_s": seconds, "checksum": checksum}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
