"""Pipeline throughput, measured in one run so the ratios compare like with like.

    python -m benchmarks.bench_pipeline [--videos N] [--repeat R]

1. Loader: videos/s of ``VideoClipDataset`` (decord decode of 12 uniform frames + CLIP
   preprocessing at 224 px) on the real clips in ../shared/data/videos, per DataLoader worker.
2. Extraction: ``vcap extract``'s loop (decode in workers, overlapped with the tower) against the
   model-only forward on the same, pre-decoded frames (a tiny tower, so decode dominates; plus the
   ViT-B/32 tower's model-only rate for scale).
3. Captioning: captions/s of batched beam-5 generation against one video at a time, for the
   paper-size caption model (hidden 768, 12 heads, 1+3 layers, vocab 8000; random weights).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from decoders.config import CaptionModelSettings, DecodeConfig  # noqa: E402
from decoders.model import CaptionModel, caption_model_config  # noqa: E402
from retrieval_pretrain.modeling.backbones import build_clip  # noqa: E402
from retrieval_pretrain.modeling.model import VideoTextModel  # noqa: E402
from retrieval_pretrain.modeling.parts import build_temporal_head  # noqa: E402
from retrieval_pretrain.stage1.config import ClipConfig  # noqa: E402
from retrieval_pretrain.stage1.data import Preprocess, VideoClipDataset, collate_videos  # noqa: E402

CLIPS = ["mmaction2/test.mp4", "mmaction2/demo.mp4", "mmaction2/test_video_structuralize.mp4",
         "decord/flipping_a_pancake.mkv", "swinbert/G0mjFqytJt4_000152_000162.mp4", "torchcodec/nasa_13013.mp4",
         "mmaction2/rawvideo_part_0.mp4", "mmaction2/demo_spatiotemporal_det.mp4"]
TINY = {"embed_dim": 128, "vision_cfg": {"layers": 3, "width": 128, "head_width": 32, "patch_size": 32, "image_size": 224},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 1}}


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="videos per measurement (clips repeat)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "videos"))
    args = ap.parse_args()
    torch.manual_seed(0)
    clips = [Path(args.shared) / c for c in CLIPS]
    videos = [(f"v{i}", clips[i % len(clips)]) for i in range(args.videos)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.videos} videos, best of {args.repeat}\n")

    clip, mean, std, _ = build_clip(ClipConfig(model="tiny", pretrained=None, custom=TINY))
    head, _ = build_temporal_head("seqTransf", 2, 12, clip)
    tower = VideoTextModel(clip, head, image_mean=mean, image_std=std).eval()
    pre = Preprocess(12, 224, mean, std)

    print("1. loader: decode 12 frames + preprocess at 224 px")
    rates = {}
    for workers in (0, 1, 2):
        loader = DataLoader(VideoClipDataset(videos, pre), batch_size=4, num_workers=workers, collate_fn=collate_videos)
        sec = timed(lambda: [b for b in loader], args.repeat)
        rates[workers] = args.videos / sec
        print(f"   workers={workers}: {rates[workers]:6.1f} videos/s  ({rates[workers] / max(workers, 1):.1f} per worker)")

    print("\n2. extraction loop vs model-only forward on the same frames (tiny tower, 12 frames, batch 8)")
    loader = DataLoader(VideoClipDataset(videos, pre), batch_size=8, num_workers=2, collate_fn=collate_videos)
    batches = [b for b in loader]

    @torch.no_grad()
    def model_only() -> None:
        for b in batches:
            tower.encode_frames(b["frames"], b["mask"])

    @torch.no_grad()
    def pipeline() -> None:
        for b in DataLoader(VideoClipDataset(videos, pre), batch_size=8, num_workers=2, collate_fn=collate_videos):
            tower.encode_frames(b["frames"], b["mask"])

    m_sec, p_sec = timed(model_only, args.repeat), timed(pipeline, args.repeat)
    print(f"   model only: {args.videos / m_sec:6.1f} videos/s; whole extraction loop: {args.videos / p_sec:6.1f} "
          f"videos/s; loop/model-only time = {p_sec / m_sec:.2f}x")
    vit, _, _, _ = build_clip(ClipConfig(model="ViT-B-32", pretrained=None))
    vit_tower = VideoTextModel(vit, build_temporal_head("seqTransf", 4, 12, vit)[0]).eval()
    few = batches[0]
    with torch.no_grad():
        vit_sec = timed(lambda: vit_tower.encode_frames(few["frames"], few["mask"]), 1)
    n = int(few["mask"].sum())
    print(f"   ViT-B/32 tower, model only: {n / vit_sec:6.1f} frames/s = {few['frames'].shape[0] / vit_sec:.2f} videos/s "
          f"(vs loader {rates[2]:.1f} videos/s with 2 workers)")

    print("\n3. captioning: paper-size caption model, 12 frames x 512-d features, beam 5, 20 new tokens")
    model = CaptionModel(caption_model_config(CaptionModelSettings(hidden_size=768, num_heads=12, ffn_size=3072),
                                              feature_dim=512)).eval()
    n_cap = 16
    feats, mask = torch.randn(n_cap, 12, 512), torch.ones(n_cap, 12, dtype=torch.bool)
    decode = DecodeConfig(num_beams=5, max_new_tokens=20)
    # Random weights rarely emit EOS, so every caption runs the full 20 steps in both settings.
    one = timed(lambda: [model.generate_captions(feats[i:i + 1], mask[i:i + 1], decode) for i in range(n_cap)], 1)
    batched = timed(lambda: model.generate_captions(feats, mask, decode), args.repeat)
    print(f"   one at a time: {n_cap / one:6.2f} captions/s; batched ({n_cap}): {n_cap / batched:6.2f} captions/s; "
          f"speed-up {one / batched:.2f}x")


if __name__ == "__main__":
    main()
