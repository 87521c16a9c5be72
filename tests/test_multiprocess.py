"""Stage 2 under two processes (torchrun, gloo on the CPU): validation runs on every process, each on
its shard of the val split, and the shards are combined with ``gather_for_metrics`` - the logged
val loss equals the one a single process computes over the whole split for the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from caption.config import load
from caption.data import CaptionPairs, collate_pairs
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from caption.pipeline import load_caption_model
from caption.tokenizer import CaptionTokenizer, normalize_caption
from caption.train import validation_loss
from retrieval_pretrain.annotations import load_annotations
from retrieval_pretrain.features import FeatureStore

TINY = ["video.num_frames=4", "pretrain.batch_size=4", "pretrain.epochs=1", "run.num_workers=0", "run.log_every=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
        "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0", "run.device=cpu"]
# 5 val videos x 2 captions in batches of 3: the two processes' shards are uneven, so Accelerate pads
# the last batch with repeated items, which gather_for_metrics must drop again.
STAGE2 = ["caption.batch_size=4", "caption.epochs=1", "caption.vocab_size=120", "caption.max_length=40",
          "decode.max_new_tokens=12", "decode.num_beams=2", "caption.save_every=0", "caption.dropout=0.0",
          "decode.batch_size=2", "caption.eval_batch_size=3"]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> tuple[Path, list[str]]:
    from retrieval_pretrain.extract import extract_features
    from retrieval_pretrain.train import train

    root = tmp_path_factory.mktemp("mp")
    spec = demo_data.DemoSpec(num_train=8, num_val=5, num_test=2, frames=8, size=64, seed=3, captions_per_video=2)
    demo_data.generate_dataset(root / "data", spec, progress=False)
    args = TINY + [f"data.annotations={root / 'data' / 'annotations.jsonl'}", f"data.videos={root / 'data'}"]
    cfg = load(CONFIG_PATH, args)
    extract_features(train(cfg, root / "s1"), cfg, root / "feats")
    return root / "feats", args


def test_two_process_validation_equals_one_process_over_the_whole_split(features, tmp_path):
    feats, args = features
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "caption.cli", "train",
           "--config", str(CONFIG_PATH), "--features", str(feats), "--output", str(tmp_path / "run"), *args, *STAGE2]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epoch = [r for r in records if "val_loss" in r]
    assert len(epoch) == 1 and epoch[0]["step"] == 2  # 16 pairs in global batches of 2 x 4

    model_dir = tmp_path / "run" / "model"
    cfg = load(CONFIG_PATH, args + STAGE2)
    tok = CaptionTokenizer.load(model_dir / CaptionTokenizer.FILENAME)
    val = load_annotations(cfg.data).split("val")
    pairs = [(e.video_id, tok.encode(normalize_caption(c), cfg.caption.max_length)) for e in val for c in e.captions]
    assert len(pairs) == 10
    loader = DataLoader(CaptionPairs(FeatureStore(feats), pairs, cfg.caption.max_frames), batch_size=7,
                        collate_fn=lambda items: collate_pairs(items, tok.PAD))
    single = validation_loss(load_caption_model(model_dir), loader, cfg.caption.label_smoothing, tok.PAD)
    assert epoch[0]["val_loss"] == pytest.approx(single, abs=2e-5)
