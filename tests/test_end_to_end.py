"""End to end through the `vcap` command line on real mp4 files: stage 1 -> extract (interrupted and
resumed) -> stage 2 (memorises 8 captions) -> evaluate -> caption real clips and a bad file.
Also: stage 1 resumed after k steps gives the same next-step loss as an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading.features import FeatureStore
from retrieval_pretrain.stage1.extract import extract_features
from vcap_toolkit.cli.main import main

CONFIG = CONFIG_PATH  # the demo's config, shipped in the package
# A 1-layer ViT tower: the demo's ResNet tower has BatchNorm, whose running statistics are still
# near their initial values after the few steps these tests train, so its eval-mode features
# would barely differ between videos.
TINY = ["video.num_frames=4", "pretrain.batch_size=4", "pretrain.epochs=1", "run.num_workers=0", "run.log_every=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
        "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """8 training videos with ONE distinct caption each (so memorisation is well defined) and 4 test
    videos, rendered as real H.264 mp4 files by the demo generator."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=4, frames=8, size=64, seed=3, captions_per_video=1)
    ann = demo_data.generate_dataset(folder, spec, progress=False)
    lines = [json.loads(x) for x in ann.read_text().splitlines()]
    assert len({tuple(x["captions"]) for x in lines if x["split"] == "train"}) == 8
    return folder


def _args(data: Path, extra: list[str] = ()) -> list[str]:
    return ["--config", str(CONFIG), f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}", *TINY, *extra]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r}


def _cut_after(run: Path, cut: Path, step: int) -> None:
    """``cut`` = ``run`` as it was when training had checkpointed step ``step`` (later checkpoints,
    the model and later log lines removed): what a run killed after that checkpoint leaves."""
    shutil.copytree(run, cut)
    for ckpt in (cut / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(cut / "model")
    lines = (cut / "log.jsonl").read_text().splitlines()
    (cut / "log.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x).get("step", 0) <= step
                                           and "val_loss" not in x and "best_epoch" not in x))


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_stage1_resumed_mid_epoch_ends_where_an_uninterrupted_run_ends(tiny_data, tmp_path):
    """8 videos, batch 4: 2 steps per epoch, 4 in all. Resume from the checkpoint of step 3 (mid
    epoch 1, so resuming must skip the batch already seen); the next loss and the final weights
    equal the uninterrupted run's."""
    from retrieval_pretrain.stage1.train import train

    cfg = load(CONFIG, _args(tiny_data)[2:] + ["pretrain.epochs=2", "pretrain.save_every=1"])
    straight = train(cfg, tmp_path / "straight")
    state = json.loads((tmp_path / "straight" / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 1)
    _cut_after(tmp_path / "straight", tmp_path / "cut", 3)
    resumed = train(cfg, tmp_path / "cut", resume=True)
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "cut")
    assert sorted(b) == [1, 2, 3, 4]  # steps 1-3 were not trained again
    assert a[4] == pytest.approx(b[4], rel=1e-5, abs=1e-6) and a[4] != pytest.approx(a[3], rel=1e-3)
    _same_weights(straight, resumed)


def test_whole_pipeline_from_the_command_line(tiny_data, tmp_path, shared_data, capsys):
    s1 = tmp_path / "s1"
    assert main(["pretrain", "--output", str(s1), *_args(tiny_data, ["pretrain.epochs=2"])]) == 0
    assert sorted(p.name for p in (s1 / "model").iterdir()) == ["config.json", "model.safetensors"]
    # The folder now belongs to that run: a second run into it is refused (exit 2), before any work.
    capsys.readouterr()
    assert main(["pretrain", "--output", str(s1), *_args(tiny_data, ["pretrain.epochs=3"])]) == 2
    assert "already holds a run" in capsys.readouterr().err.strip().splitlines()[-1]

    assert main(["eval-retrieval", "--model", str(s1 / "model"), "--dsl", "--output", str(tmp_path / "r"),
                 *_args(tiny_data)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["videos"] == 4 and 0 <= metrics["t2v_R@1"] <= 1 and "dsl_t2v_R@1" in metrics
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == metrics

    # Extraction stopped after 3 videos (the others' files gone), then rerun: equals a clean run,
    # recomputes nothing it had.
    cfg = load(CONFIG, _args(tiny_data)[2:])
    feats, clean = tmp_path / "feats", tmp_path / "feats_clean"
    assert extract_features(s1 / "model", cfg, feats)["extracted"] == 12
    store = FeatureStore(feats)
    for p in sorted(store.dir.glob("*.npy"))[3:]:
        p.unlink()
    first = sorted(store.dir.glob("*.npy"))
    assert len(first) == 3
    stamps = {p: p.stat().st_mtime_ns for p in first}
    report = extract_features(s1 / "model", cfg, feats)
    assert (report["done_before"], report["extracted"], report["failed"]) == (3, 9, 0)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert main(["extract", "--model", str(s1 / "model"), "--output", str(clean), *_args(tiny_data)]) == 0
    clean_files = sorted(FeatureStore(clean).dir.glob("*.npy"))
    assert [p.name for p in clean_files] == sorted(p.name for p in store.dir.glob("*.npy"))
    for p in clean_files:
        a, b = np.load(p), np.load(store.dir / p.name)
        assert a.dtype == np.float16 and a.shape == (4, store.meta()["dim"])
        # The resumed run encoded these videos in other batches (3 + 9 vs 8 + 4); CPU matmuls round
        # differently with the batch shape, which can flip the last fp16 bit (measured: 1 value in
        # 512 off by 1 ULP). Anything beyond fp16 rounding would be a real difference.
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not list(store.dir.glob(".tmp*"))

    # Stage 2 memorises the 8 training captions (greedy decoding).
    s2 = tmp_path / "s2"
    stage2 = ["caption.epochs=120", "caption.batch_size=8", "caption.lr=2e-3", "caption.dropout=0.0",
              "caption.label_smoothing=0.0", "caption.warmup_ratio=0.02", "caption.vocab_size=120",
              "caption.max_length=40", "decode.max_new_tokens=38",
              "decode.num_beams=1", "caption.save_every=0"]
    assert main(["train", "--features", str(feats), "--output", str(s2), *_args(tiny_data, stage2)]) == 0
    model = s2 / "model"
    assert {"config.json", "model.safetensors", "tokenizer.model", "video_tower"} <= {p.name for p in model.iterdir()}
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--features", str(feats), "--split", "train",
                 "--output", str(tmp_path / "ev"), *_args(tiny_data, stage2)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    refs = {json.loads(x)["video"].rsplit(".", 1)[0]: json.loads(x)["captions"][0]
            for x in (tiny_data / "annotations.jsonl").read_text().splitlines() if json.loads(x)["split"] == "train"}
    from caption.tokenizer import normalize_caption

    exact = sum(preds[v] == normalize_caption(c) for v, c in refs.items())
    assert exact >= 7, f"memorised {exact}/8: {preds}"

    # The same model from the video files (no feature cache) gives the same captions.
    capsys.readouterr()
    train_videos = [str(tiny_data / f"{v}.mp4") for v in sorted(refs)]
    assert main(["caption", *train_videos, "--model", str(model), "--beam", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [out["captions"][p] for p in train_videos] == [preds[v] for v in sorted(refs)]

    # A real clip, a folder, and a bad file: captions for the good ones, the bad one named, exit 1.
    bad = tmp_path / "notavideo.mp4"
    bad.write_text("hello")
    real = shared_data / "videos" / "swinbert" / "G0mjFqytJt4_000152_000162.mp4"
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(shared_data / "videos" / "mmaction2" / "test.mp4", folder / "pool.mp4")
    code = main(["caption", str(real), str(folder), str(bad), "--model", str(model)])
    captured = capsys.readouterr()
    assert code == 1
    lines = dict(line.split("\t") for line in captured.out.strip().splitlines())
    assert set(lines) == {str(real), str(folder / "pool.mp4")} and all(lines.values())
    assert str(bad) in captured.err

    # The model folder is self-contained: it still works after the stage-1 run is gone.
    shutil.rmtree(s1)
    moved = tmp_path / "moved"
    shutil.move(str(model), moved)
    assert main(["caption", str(real), "--model", str(moved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["captions"][str(real)]


def _untrained(cfg: Any) -> Any:
    """The config with 0 epochs: the untrained model, the same seed's initial weights (reading a
    config refuses pretrain.epochs=0, which would pass the random model off as trained)."""
    cfg.pretrain.epochs = 0
    return cfg


def test_stage1_learns_loss_falls_and_r1_beats_the_untrained_model(tiny_data, tmp_path):
    """The same seed gives the same initial weights: 0 epochs is the untrained model."""
    from retrieval_pretrain.stage1.evaluate import evaluate_retrieval
    from retrieval_pretrain.stage1.train import train

    base = _args(tiny_data)[2:] + ["pretrain.save_every=0", "pretrain.lr=3e-3", "pretrain.clip_lr=3e-3"]
    before = train(_untrained(load(CONFIG, base)), tmp_path / "before")
    after = train(load(CONFIG, base + ["pretrain.epochs=12"]), tmp_path / "after")
    cfg = load(CONFIG, base)
    r_before = evaluate_retrieval(before, cfg, split="train", output=tmp_path / "eb")
    r_after = evaluate_retrieval(after, cfg, split="train", output=tmp_path / "ea")
    losses = list(_losses(tmp_path / "after").values())  # one per step, 2 steps per epoch
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
    assert r_after["t2v_R@1"] >= r_before["t2v_R@1"] + 0.25, (r_before, r_after)
    assert r_after["t2v_MeanR"] < r_before["t2v_MeanR"]


def test_stage1_freeze_keeps_those_parameters_fixed_and_trains_the_rest(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from retrieval_pretrain.stage1.train import train

    base = _args(tiny_data)[2:] + ["pretrain.save_every=0", "pretrain.freeze=[clip.token_embedding, clip.visual]"]
    before = load_file(train(_untrained(load(CONFIG, base)), tmp_path / "before") / "model.safetensors")
    after = load_file(train(load(CONFIG, base), tmp_path / "after") / "model.safetensors")
    frozen = [k for k in before if k.startswith(("clip.token_embedding.", "clip.visual."))]
    assert "clip.token_embedding.weight" in frozen and len(frozen) > 10
    assert all(before[k].equal(after[k]) for k in frozen)
    moved = [k for k in before if k not in frozen and not before[k].equal(after[k])]
    assert "clip.text_projection" in moved and any(k.startswith("head.") for k in moved), moved

    with pytest.raises(ConfigError, match=r"'clip.token_embeding' matches no parameter.*clip\.visual"):
        train(load(CONFIG, _args(tiny_data)[2:] + ["pretrain.freeze=[clip.token_embeding]"]), tmp_path / "typo")


@pytest.fixture(scope="module")
def tiny_features(tiny_data, tmp_path_factory) -> Path:
    """A tiny stage-1 model's features of the 12 tiny videos (Python API, no CLI)."""
    from retrieval_pretrain.stage1.train import train

    run = tmp_path_factory.mktemp("s1")
    cfg = load(CONFIG, _args(tiny_data)[2:] + ["pretrain.epochs=1", "pretrain.save_every=0"])
    extract_features(train(cfg, run), cfg, run / "feats")
    return run / "feats"


STAGE2 = ["caption.batch_size=4", "caption.epochs=2", "caption.vocab_size=120", "caption.max_length=40",
          "decode.max_new_tokens=38", "decode.num_beams=1", "caption.save_every=0",
          "caption.val_max_videos=0"]


def _stage2_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if "loss" in r}


def test_stage2_resumed_mid_epoch_ends_where_an_uninterrupted_run_ends(tiny_data, tiny_features, tmp_path):
    """8 captions, batch 4: 2 steps per epoch. Resume from the checkpoint of step 3 (mid-epoch 1, so
    resuming must skip the batch already seen): step 4's loss and the final model equal an
    uninterrupted run's."""
    from caption.train import train

    cfg = load(CONFIG, _args(tiny_data)[2:] + STAGE2 + ["caption.save_every=1"])
    straight = train(cfg, tiny_features, tmp_path / "straight")
    state = json.loads((tmp_path / "straight" / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 1)
    _cut_after(tmp_path / "straight", tmp_path / "cut", 3)
    resumed = train(cfg, tiny_features, tmp_path / "cut", resume=True)
    a, b = _stage2_losses(tmp_path / "straight"), _stage2_losses(tmp_path / "cut")
    assert sorted(b) == [1, 2, 3, 4]
    assert a[4] == pytest.approx(b[4], rel=1e-5, abs=1e-6) and a[4] != pytest.approx(a[3], rel=1e-3)
    _same_weights(straight, resumed)


def test_stage2_init_from_keeps_the_tokenizer_and_starts_trained(tiny_data, tiny_features, tmp_path):
    from caption.train import train

    cfg = load(CONFIG, _args(tiny_data)[2:] + STAGE2 + ["caption.epochs=15", "caption.lr=2e-3"])
    first = train(cfg, tiny_features, tmp_path / "first")
    fresh_step1 = _stage2_losses(tmp_path / "first")[1]
    # Fine-tune on the same features with a config whose own tokenizer would differ (vocab 60).
    tuned = train(load(CONFIG, _args(tiny_data)[2:] + STAGE2 + ["caption.vocab_size=60"]), tiny_features,
                  tmp_path / "tuned", init_from=first)
    assert (tuned / "tokenizer.model").read_bytes() == (first / "tokenizer.model").read_bytes()
    first_losses = _stage2_losses(tmp_path / "first")
    tuned_step1 = _stage2_losses(tmp_path / "tuned")[1]
    # It starts where the first run got to (step 30 of 30), not where that run started.
    assert tuned_step1 < 0.6 * fresh_step1, (fresh_step1, tuned_step1)
    assert tuned_step1 < min(first_losses[s] for s in range(1, 11)), (first_losses, tuned_step1)
    assert (tuned / "video_tower" / "model.safetensors").is_file()


def test_bf16_autocast_and_gradient_accumulation_on_cpu(tiny_data, tiny_features, tmp_path):
    """The precision and accumulation switches run for real (bf16 autocast works on CPUs): 8 videos
    in batches of 4 with 2 batches per optimizer step is 1 step per epoch in each stage."""
    from caption.train import train as train_captioner
    from retrieval_pretrain.stage1.train import train as pretrain

    extra = ["run.mixed_precision=bf16", "pretrain.grad_accum=2", "caption.grad_accum=2", "pretrain.epochs=2",
             "pretrain.save_every=0"]
    cfg = load(CONFIG, _args(tiny_data)[2:] + STAGE2 + extra)
    assert (pretrain(cfg, tmp_path / "s1") / "model.safetensors").is_file()
    s1 = _losses(tmp_path / "s1")
    assert sorted(s1) == [1, 2] and all(np.isfinite(v) for v in s1.values())
    assert (train_captioner(cfg, tiny_features, tmp_path / "s2") / "model.safetensors").is_file()
    s2 = _stage2_losses(tmp_path / "s2")
    assert sorted(s2) == [1, 2] and all(np.isfinite(v) for v in s2.values())


@pytest.mark.parametrize("select_by", ["loss", "CIDEr"])
def test_stage2_keeps_the_epoch_chosen_by_select_by(tiny_data, tiny_features, tmp_path, select_by):
    """The model folder holds the epoch with the best val loss (or val CIDEr): its val loss,
    recomputed from the folder, is the one logged for that epoch."""
    from torch.utils.data import DataLoader

    from caption.data import CaptionPairs, collate_pairs
    from caption.tokenizer import CaptionTokenizer, normalize_caption
    from caption.train import train, validation_loss
    from decoders.model import CaptionModel
    from retrieval_pretrain.reading.annotations import load_annotations

    extra = ["data.val_split=test", "caption.epochs=4", "caption.lr=2e-3", f"caption.select_by={select_by}"]
    cfg = load(CONFIG, _args(tiny_data)[2:] + STAGE2 + extra)
    model_dir = train(cfg, tiny_features, tmp_path / "run")
    epochs = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    key, sign = ("val_loss", -1) if select_by == "loss" else ("val_CIDEr", 1)
    chosen = max(epochs, key=lambda r: (sign * r[key], -r["epoch"]))  # the first of equals wins
    assert epochs[-1]["best_epoch"] == chosen["epoch"]

    tokenizer = CaptionTokenizer.load(model_dir / CaptionTokenizer.FILENAME)
    store = FeatureStore(tiny_features)
    pairs = [(e.video_id, tokenizer.encode(normalize_caption(c), cfg.caption.max_length))
             for e in load_annotations(cfg.data).split("test") for c in e.captions]
    loader = DataLoader(CaptionPairs(store, pairs, cfg.caption.max_frames), batch_size=4,
                        collate_fn=lambda items: collate_pairs(items, tokenizer.PAD))
    loss = validation_loss(CaptionModel.from_pretrained(model_dir), loader, cfg.caption.label_smoothing, tokenizer.PAD)
    assert loss == pytest.approx(chosen["val_loss"], abs=2e-5)
    if select_by == "loss":
        assert chosen["val_loss"] == min(r["val_loss"] for r in epochs)


def test_a_caption_folder_without_its_tower_refuses_a_changed_tower(tiny_data, tiny_features, tmp_path):
    """Without ``video_tower/`` the pipeline uses the stage-1 folder it was trained on - only if its
    weights are still those (fingerprint): a retrained tower would give wrong features silently."""
    from safetensors.torch import load_file, save_file

    from caption.pipeline import CaptionPipeline
    from caption.train import train
    from retrieval_pretrain.foundation.errors import ModelFolderError

    model = train(load(CONFIG, _args(tiny_data)[2:] + STAGE2), tiny_features, tmp_path / "run")
    tower = tmp_path / "tower"
    shutil.copytree(model / "video_tower", tower)
    shutil.rmtree(model / "video_tower")
    config = json.loads((model / "config.json").read_text())
    config["video_tower"]["source"] = str(tower)
    (model / "config.json").write_text(json.dumps(config))
    assert CaptionPipeline.from_pretrained(model, device="cpu").tower is not None  # the same tower: fine
    weights = load_file(tower / "model.safetensors")
    weights["head.frame_position_embeddings"] = weights["head.frame_position_embeddings"] + 1
    save_file(weights, tower / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelFolderError, match="is not the video tower .* was trained on"):
        CaptionPipeline.from_pretrained(model, device="cpu")
