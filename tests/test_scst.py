"""Self-critical sequence training: the policy-gradient sign, the baselines, plain multinomial
sampling, and a short SCST run on real mp4s (stage 1 -> features -> cross-entropy -> SCST) that
raises the training set's CIDEr, checkpoints and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from caption.demo import data as demo_data
from caption.scst import leave_one_out_baseline
from decoders.config import CaptionModelSettings, DecodeConfig
from decoders.loss import generated_mask, scst_loss_sums
from decoders.model import CaptionModel, caption_model_config
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading.features import FeatureStore

S1_TINY = ["video.num_frames=4", "pretrain.batch_size=8", "pretrain.epochs=2", "run.num_workers=0",
           "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
           "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "video.cache_frames=0"]
S2_TINY = ["caption.hidden_size=64", "caption.ffn_size=128", "caption.dropout=0.0", "caption.batch_size=8",
           "caption.select_by=last", "decode.num_beams=1", "run.log_every=1", "caption.vocab_size=200"]


def test_policy_gradient_raises_the_above_baseline_sample():
    """Two sampled captions of one video, rewards 1 and 0, baseline 0.5: one gradient step on the
    logits must raise p(first caption) and lower p(second)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, requires_grad=True)  # (B=2 samples, L=3, V=6)
    tokens = torch.tensor([[4, 5, 3], [5, 3, 0]])  # EOS = 3, then PAD
    rewards = np.array([1.0, 0.0])
    advantage = torch.tensor(rewards - 0.5)

    def seq_logp(lg: torch.Tensor) -> torch.Tensor:
        lp = lg.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return (lp * generated_mask(tokens, 3)).sum(1)

    total, count = scst_loss_sums(logits, tokens, advantage, eos_id=3)
    assert count.item() == 5  # 3 tokens + 2 tokens (EOS included, PAD not)
    (total / count).backward()
    before = seq_logp(logits.detach())
    after = seq_logp(logits.detach() - 0.5 * logits.grad)
    assert after[0] > before[0] and after[1] < before[1]
    # Equal rewards: no gradient at all.
    logits.grad = None
    total, count = scst_loss_sums(logits, tokens, torch.zeros(2), eos_id=3)
    (total / count).backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_leave_one_out_baseline():
    r = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])
    assert leave_one_out_baseline(r, 3).tolist() == [2.5, 2.0, 1.5, 25.0, 25.0, 10.0]


def test_config_checks():
    with pytest.raises(ConfigError, match="samples >= 2"):
        load(None, ["caption.objective=scst", "caption.scst.samples=1"])
    with pytest.raises(ConfigError, match="no reward"):
        load(None, ["caption.reward.cider_weight=0"])
    with pytest.raises(ConfigError, match="not one of"):
        load(None, ["caption.scst.baseline=best"])
    assert load(None, ["caption.scst.samples=1", "caption.scst.baseline=greedy"]).caption.scst.samples == 1
    for bad in ("caption.reward.cider_weight=.nan", "caption.reward.clip_weight=.inf", "caption.scst.temperature=.inf",
                "caption.lr=.nan"):
        with pytest.raises(ConfigError, match="not a finite number"):
            load(None, [bad])
    with pytest.raises(ConfigError, match=r"must be in \[0.01, 100.0\]"):
        load(None, ["caption.scst.temperature=1e-45"])  # torch.multinomial would fail on inf probabilities


def test_sampling_is_plain_multinomial():
    """The first sampled token follows softmax(logits / T) over the whole vocabulary: no top-k
    truncation (transformers' default top_k=50 would cut off 150 of these 200 tokens)."""
    torch.manual_seed(0)
    cfg = caption_model_config(CaptionModelSettings(vocab_size=200, hidden_size=16, num_heads=2, ffn_size=32,
                                                    max_length=4), feature_dim=8)
    model = CaptionModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.copy_(torch.randn(1, 200) * 0.3)  # a spread-out first-token distribution
    feats = torch.randn(1, 3, 8)
    n = 6000
    tokens = model.sample_captions(feats, None, num_samples=n, temperature=1.0, max_new_tokens=1)
    assert tokens.shape == (n, 1)
    with torch.no_grad():
        bos = torch.full((1, 1), cfg.decoder_start_token_id)
        p = model(frame_features=feats, decoder_input_ids=bos).logits[0, 0].softmax(-1)
    counts = torch.bincount(tokens[:, 0], minlength=200).double()
    expected = n * p.double()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 199 + 5 * 20  # 199 degrees of freedom: mean 199, sd 20
    beyond_top50 = p.argsort(descending=True)[50:]
    assert counts[beyond_top50].sum() / n > 0.9 * p[beyond_top50].sum()  # most of the mass is outside the top 50
    # Temperature -> 0 is greedy.
    cold = model.sample_captions(feats, None, num_samples=3, temperature=1e-4, max_new_tokens=3)
    greedy = model.generate_captions(feats, None, DecodeConfig(num_beams=1, max_new_tokens=3))
    assert torch.equal(cold, greedy.expand(3, -1))


# ----------------------------------------------------------------------------- a short real run


@pytest.fixture(scope="module")
def xe_run(tmp_path_factory):
    """8 demo videos x 3 captions (real mp4s); stage 1, features, and a cross-entropy caption model.

    A stage-1 tower trained for seconds barely tells the 8 videos apart (its caption model gives
    most of them the same caption: train CIDEr 1.7), so no caption model on its features can be
    shown to improve per video. Each video's cached features are therefore moved apart - a
    distinct random direction per video plus a tenth of the real features, written through the
    feature store - so this test measures stage 2's SCST, not stage 1."""
    from caption.train import train as train_captions
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train as train_retrieval

    root = tmp_path_factory.mktemp("scst")
    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=1, frames=8, size=64, seed=11, captions_per_video=3)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    data = [f"data.annotations={ann}", f"data.videos={ann.parent}"]
    cfg = load(CONFIG_PATH, data + S1_TINY)
    s1 = train_retrieval(cfg, root / "s1")
    extract_features(s1, cfg, root / "feats")
    store, rng = FeatureStore(root / "feats"), np.random.default_rng(0)
    for vid in sorted(json.loads(x)["video"].rsplit(".", 1)[0] for x in ann.read_text().splitlines()):
        if store.has(vid):
            real = np.asarray(store.load(vid, mmap=False), dtype=np.float32)
            store.write(vid, (3 * rng.normal(size=(1, real.shape[1])) + 0.1 * real).astype(np.float16))
    xe = train_captions(load(CONFIG_PATH, data + S1_TINY + S2_TINY + ["caption.epochs=40"]), root / "feats",
                        root / "xe")
    return root, data, xe


def _train_cider(root: Path, data: list[str], model: Path) -> float:
    from caption.evaluate import evaluate

    cfg = load(CONFIG_PATH, data + S1_TINY + S2_TINY)
    return evaluate(model, cfg, features=root / "feats", split="train", output=root / f"eval_{model.parent.name}")["CIDEr"]


def test_scst_raises_train_cider_and_resumes_exactly(xe_run, tmp_path):
    from caption.train import train as train_captions

    root, data, xe = xe_run
    scst = data + S1_TINY + S2_TINY + ["caption.objective=scst", "caption.epochs=10", "caption.lr=3e-4",
                                       "caption.warmup_ratio=0", "caption.scst.samples=4", "caption.batch_size=4",
                                       "caption.save_every=1"]
    cfg = load(CONFIG_PATH, scst)
    out = train_captions(cfg, root / "feats", root / "sc", init_from=xe)
    before, after = _train_cider(root, data, xe), _train_cider(root, data, out)
    assert after > before + 0.1, (before, after)
    records = [json.loads(x) for x in (root / "sc" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert len(steps) == 20 and all({"baseline", "cider", "sample_s", "reward_s"} <= set(r) for r in steps)
    assert np.mean([r["reward"] for r in steps[-3:]]) > np.mean([r["reward"] for r in steps[:3]])

    # Killed after step 13's checkpoint (mid epoch 6), resumed: the same samples, rewards and weights as the straight run.
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(root / "sc", cut)
    for ckpt in (cut / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > 13:
            shutil.rmtree(ckpt)
    shutil.rmtree(cut / "model")
    out2 = train_captions(cfg, root / "feats", cut, resume=True, init_from=xe)
    again = [json.loads(x) for x in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in again if "reward" in r] == [r["reward"] for r in steps]
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(out2 / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scst_with_the_clip_reward_and_greedy_baseline(xe_run):
    from caption.train import train as train_captions

    root, data, xe = xe_run
    cfg = load(CONFIG_PATH, data + S1_TINY + S2_TINY + [
        "caption.objective=scst", "caption.epochs=2", "caption.lr=1e-3", "caption.scst.samples=2",
        "caption.scst.baseline=greedy", "caption.reward.clip_weight=1.0", "caption.reward.cider_weight=0.5"])
    train_captions(cfg, root / "feats", root / "sc_clip", init_from=xe)
    steps = [json.loads(x) for x in (root / "sc_clip" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "reward" in r]
    assert len(steps) == 2
    for r in steps:
        assert -1.0 <= r["clip"] <= 1.0 and r["cider"] >= 0
        assert r["reward"] == pytest.approx(0.5 * r["cider"] + r["clip"], abs=2e-5)


def test_reports_from_the_command_line(xe_run, tmp_path, capsys):
    """`vcap evaluate --report`, `vcap report RUN2` and `vcap caption --report`: every video of the
    split in the page with its frames (JPEG data URIs), caption, references and CIDEr; nothing
    loaded from outside the file."""
    import re

    from vcap_toolkit.cli.main import main

    root, data, xe = xe_run
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(xe), "--features", str(root / "feats"), "--split", "train", "--output",
                 str(out), "--report", "--config", str(CONFIG_PATH), *data, *S1_TINY, *S2_TINY]) == 0
    page = (out / "report.html").read_text()
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 8
    for vid in preds:
        assert page.count(f">{vid}<") == 1, vid
    assert len(re.findall(r'<img[^>]+src="data:image/jpeg;base64,', page)) == 8 * 6
    assert "<svg" in page and page.count("<polyline") >= 2  # the run's curves (loss, lr)
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "http://" not in page and "https://" not in page

    capsys.readouterr()
    assert main(["report", str(root / "xe")]) == 0
    assert capsys.readouterr().out.strip() == str(root / "xe" / "report.html")
    assert (root / "xe" / "report.html").read_text().count("<polyline") >= 2

    clip = sorted((root / "data" / "videos").glob("*.mp4"))[0]
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("hello")
    assert main(["caption", str(clip), str(bad), "--model", str(xe), "--report", str(tmp_path / "c.html")]) == 1
    page = (tmp_path / "c.html").read_text()
    assert str(clip) in page and "not captioned" in page and str(bad) in page


def test_report_paths_are_checked_before_any_work(tmp_path):
    from vcap_toolkit.reports.html_page import check_report_path

    video = tmp_path / "v1.mp4"
    video.write_bytes(b"not really")
    with pytest.raises(ConfigError, match="ending in .html"):
        check_report_path(video)  # `vcap caption --report v1.mp4 v2.mp4` would replace v1.mp4
    page = tmp_path / "v1.html"
    with pytest.raises(ConfigError, match="one of the videos"):
        check_report_path(page, [page])
    (tmp_path / "real.html").write_text("x")
    (tmp_path / "link.html").symlink_to(tmp_path / "real.html")
    with pytest.raises(ConfigError, match="symbolic link"):
        check_report_path(tmp_path / "link.html")
    os.mkfifo(tmp_path / "pipe.html")
    (tmp_path / "dir.html").mkdir()
    for special in ("pipe.html", "dir.html"):  # a device such as /dev/null is refused the same way
        with pytest.raises(ConfigError, match="not a regular file"):
            check_report_path(tmp_path / special)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_report_path(tmp_path / "real.html" / "x.html")
    assert check_report_path(tmp_path / "new" / "r.html") == tmp_path / "new" / "r.html"
    with pytest.raises(ConfigError, match="is not a report page that vcap wrote; nothing was changed"):
        check_report_path(tmp_path / "real.html")  # a file vcap did not write is never replaced (issue 25)


def test_scst_refusals_and_warnings(xe_run, tmp_path, capsys):
    """select_by=loss refused for SCST; --init-from must be a caption model folder; a stage-1 tower
    moved away is found in --init-from's video_tower/ (else refused before training); an epoch whose
    samples all tie with their baseline is said to have learned nothing."""
    import shutil

    from caption.train import train as train_captions
    from retrieval_pretrain.foundation.errors import FeatureStoreError

    root, data, xe = xe_run
    base = data + S1_TINY + S2_TINY + ["caption.objective=scst", "caption.epochs=1", "caption.scst.samples=2"]
    with pytest.raises(ConfigError, match="select_by=loss ranks epochs by cross-entropy"):
        train_captions(load(CONFIG_PATH, base + ["caption.select_by=loss"]), root / "feats", tmp_path / "a", init_from=xe)
    cfg = load(CONFIG_PATH, base)
    for bad, why in ((tmp_path / "nope", "does not exist"), (root / "xe", "did you mean"),
                     (root / "s1" / "model", "not a caption model")):
        with pytest.raises(ConfigError, match=why):
            train_captions(cfg, root / "feats", tmp_path / "b", init_from=bad)
    # Features whose stage-1 folder is gone
    moved = tmp_path / "feats"
    shutil.copytree(root / "feats", moved)
    meta = json.loads((moved / "meta.json").read_text())
    meta["tower"] = str(tmp_path / "gone" / "model")
    (moved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match="is gone"):
        train_captions(load(CONFIG_PATH, data + S1_TINY + S2_TINY + ["caption.epochs=1"]), moved, tmp_path / "c")
    assert not (tmp_path / "c" / "checkpoints").exists()
    capsys.readouterr()
    out = train_captions(load(CONFIG_PATH, base + ["caption.scst.max_new_tokens=1"]), moved, tmp_path / "d",
                         init_from=xe)
    assert (out / "video_tower" / "model.safetensors").is_file()
    assert "learned nothing" in capsys.readouterr().err  # one-token samples: every reward 0


def test_evaluate_names_annotation_rows_it_left_out(xe_run, tmp_path, capsys):
    from caption.evaluate import evaluate

    root, data, xe = xe_run
    ann = Path(data[0].split("=", 1)[1])
    rows = ann.read_text().splitlines()
    dup = tmp_path / "ann.jsonl"
    dup.write_text("\n".join(rows + [rows[0]]) + "\n")  # the same video id twice: the second is left out
    cfg = load(CONFIG_PATH, [f"data.annotations={dup}", data[1], *S1_TINY, *S2_TINY])
    metrics = evaluate(xe, cfg, features=root / "feats", split="train", output=tmp_path / "ev")
    assert metrics["annotation_problems"] == 1
    assert "warning: left out:" in capsys.readouterr().err
