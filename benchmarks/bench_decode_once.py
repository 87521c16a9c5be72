"""Would loader workers speed up stage 1's decode-once pass under `vcap demo`'s spinning threads?

    python -m benchmarks.bench_decode_once --data vcap_demo/data --policy ACTIVE --workers 0 2 0 2
    python -m benchmarks.bench_decode_once --data vcap_demo/data --policy PASSIVE --workers 0 2 0 2
    python -m benchmarks.bench_decode_once --data vcap_demo/data --policy ACTIVE --spincount 300000 --workers 0 0

One process per policy (OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads): the demo's stage-1
model is built and runs one forward pass over 128 frames - so torch's OpenMP threads exist and, with
``ACTIVE``, spin between parallel regions, as they do when ``vcap pretrain`` fills its frame cache -
and then ``FrameCache`` (``video.cache_frames=16``) decodes every training clip of the demo data once,
with each ``--workers`` count in turn. Prints the seconds of each fill. BENCHMARKS.md ("Demo speed")
lists what this measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict[int, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder `vcap demo` generated (OUTPUT/data)")
    p.add_argument("--policy", choices=("ACTIVE", "PASSIVE"), required=True, help="OMP_WAIT_POLICY of this process")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 0, 2], help="worker counts, filled in this order")
    p.add_argument("--spincount", type=int, default=None,
                   help="GOMP_SPINCOUNT of this process (vcap demo's active waits: 300000; unset: libgomp's default)")
    args = p.parse_args(argv)
    if "torch" in sys.modules:
        p.error("torch is loaded already: the wait policy would not apply (run this module as a new process)")
    os.environ["OMP_WAIT_POLICY"] = args.policy
    if args.spincount is not None:
        os.environ["GOMP_SPINCOUNT"] = str(args.spincount)
    import torch

    from caption.demo.run import demo_config
    from retrieval_pretrain.modeling.parts import build_video_text_model
    from retrieval_pretrain.reading.annotations import load_annotations
    from retrieval_pretrain.stage1.config import configured_image_size
    from retrieval_pretrain.stage1.kept_frames import FrameCache

    cfg = demo_config(Path(args.data))
    size = configured_image_size(cfg.clip)
    model = build_video_text_model(cfg)
    with torch.no_grad():
        model.clip.encode_image(torch.randn(128, 3, size, size))
    clips = [e.clip for e in load_annotations(cfg.data).split("train")]
    seconds: dict[int, list[float]] = {}
    for workers in args.workers:
        t = time.perf_counter()
        FrameCache(clips, cfg.video.cache_frames, size, num_workers=workers, progress=False)
        seconds.setdefault(workers, []).append(round(time.perf_counter() - t, 2))
        spin = f" (GOMP_SPINCOUNT={args.spincount})" if args.spincount is not None else ""
        print(f"{args.policy} waits{spin}, {workers} workers: {seconds[workers][-1]} s for {len(clips)} clips", flush=True)
    return seconds


if __name__ == "__main__":
    main()
