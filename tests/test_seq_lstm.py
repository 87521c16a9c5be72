"""CLIP4Clip's ``seqLSTM`` head (issue 14, part): padding frames do not leak into real ones, frame
order matters, and a stage-1 model with it trains, saves, reloads to identical embeddings and
extracts features."""

from __future__ import annotations

import json

import numpy as np
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from retrieval_pretrain.modeling.heads import build_head


def test_padding_does_not_leak_and_order_matters():
    torch.manual_seed(0)
    head = build_head(16, "seqLSTM", layers=1, num_frames=6).eval()
    x = torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    with torch.no_grad():
        out = head(x, mask)  # (2, 4, 16)
        alone = head(x[:1, :3], torch.ones(1, 3, dtype=torch.bool))
        torch.testing.assert_close(out[0, :3], alone[0], rtol=1e-6, atol=1e-6)  # the pad changed nothing
        torch.testing.assert_close(out[0, 3], x[0, 3])  # a padding position: the residual alone
        flipped = head(x.flip(1)[1:], None)  # the second video, frames reversed
        assert not torch.allclose(flipped.flip(1)[0], out[1], atol=1e-4)  # the LSTM reads the order
    assert sum(p.numel() for p in head.parameters()) == 4 * 16 * (16 + 16 + 2)  # nn.LSTM(16, 16): 4 gates


def test_a_seq_lstm_model_trains_saves_reloads_and_extracts(tmp_path):
    from retrieval_pretrain.modeling.model_folder import from_pretrained
    from retrieval_pretrain.stage1.data import Preprocess
    from retrieval_pretrain.stage1.encode import embed_videos
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train

    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=2, frames=8, size=64, seed=3, captions_per_video=1)
    ann = demo_data.generate_dataset(tmp_path / "data", spec, progress=False, workers=1)
    cfg = load(CONFIG_PATH, [f"data.annotations={ann}", f"data.videos={ann.parent}", "video.num_frames=4",
                             "pretrain.batch_size=4", "pretrain.epochs=2", "run.num_workers=0", "pretrain.save_every=0", "run.log_every=1",
                             "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
                             "clip.custom.text_cfg.layers=1", "pretrain.head=seqLSTM", "pretrain.head_layers=1",
                             "pretrain.head_input_norm=false"])
    model_dir = train(cfg, tmp_path / "s1")
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "s1" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    a, spec = from_pretrained(model_dir)
    b, _ = from_pretrained(model_dir)
    assert spec.head == "seqLSTM" and a.head.lstm is not None
    videos = [(p.stem, p) for p in sorted((ann.parent / "videos").glob("*.mp4"))[:3]]
    pre = Preprocess.for_model(spec)
    ea, _ = embed_videos(a, videos, pre, torch.device("cpu"), 3, 0)
    eb, _ = embed_videos(b, videos, pre, torch.device("cpu"), 3, 0)
    for vid in ea:
        assert torch.equal(ea[vid], eb[vid])
    report = extract_features(model_dir, cfg, tmp_path / "feats")
    assert report["extracted"] == 10 and report["failed"] == 0
