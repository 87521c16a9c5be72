"""CLIP4Clip's ``tightTransf`` similarity head (issue 14, item 3): a cross-modal transformer scores
each (text, video) pair. Tiny real open_clip CLIP, CPU only, no network.

Parity references are open_clip's own ``encode_text`` (the end-token row of the token features)
and its ``ResidualAttentionBlock`` (the masked block forward); then the pairwise contract (a pair's
score is independent of the batch; padding frames and tokens change nothing; frame order does),
CLIP4Clip's text-block initialisation, model folders, and a real run on generated mp4 files:
training, ``vcap eval-retrieval`` through the pairwise path, ``vcap extract`` and stage 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_clips import cli_args, make_clips

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained
from retrieval_pretrain.modeling.parts import build_video_text_model, param_groups
from retrieval_pretrain.modeling.tight_transf import TightTransfModel, block_forward, text_token_features
from retrieval_pretrain.stage1.encode import pair_score_matrix

T = 4
TINY = ["video.num_frames=4", "pretrain.head=tightTransf", "pretrain.head_layers=1", "clip.custom.text_cfg.layers=1",
        "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}"]
CAPTIONS = ["a red square moves left", "a blue circle", "a green triangle turns slowly to the right", "a dog"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the module's torch ops on one thread


def _model(extra: list[str] = (), seed: int = 0) -> tuple[TightTransfModel, object]:
    cfg = load(CONFIG_PATH, [*TINY, *extra])
    torch.manual_seed(seed)
    return build_video_text_model(cfg).eval(), cfg


def _inputs(cfg, batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, 3, 64, 64, generator=g), build_tokenizer(cfg)(CAPTIONS[:batch])


def _scores(model: TightTransfModel, frames: torch.Tensor, mask: torch.Tensor | None,
            tokens: torch.Tensor) -> torch.Tensor:
    return model.pair_scores(model.encode_video_state(frames, mask), model.encode_text_state(tokens))  # (Bv, Bt)


# ----------------------------------------------------------------------------- parity with open_clip


def test_token_features_and_block_forward_equal_open_clip():
    model, cfg = _model()
    _, tokens = _inputs(cfg)
    assert isinstance(model, TightTransfModel) and scores_pairwise(model) and model.head_kind == "tightTransf"
    with torch.no_grad():
        feats = text_token_features(model.clip, tokens)  # (4, context, D)
        end = tokens.argmax(dim=-1)
        torch.testing.assert_close(feats[torch.arange(4), end], model.clip.encode_text(tokens), rtol=0, atol=1e-6)
        short = text_token_features(model.clip, tokens[:, :12])  # causal: a shorter run, the same rows
        torch.testing.assert_close(short, feats[:, :12], rtol=0, atol=1e-5)
        # the masked block forward is open_clip's block with the (P * heads, N, N) mask spelt out
        block = model.cross.transformer.resblocks[0]
        x = torch.randn(3, 7, model.embed_dim)
        keep = torch.tensor([[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
        bias = torch.zeros(3, 7).masked_fill(~keep, float("-inf"))[:, None, :].expand(3, 7, 7)
        want = block(x, attn_mask=bias.repeat_interleave(block.attn.num_heads, dim=0))
        torch.testing.assert_close(block_forward(block, x, keep[:, None, None, :]), want, rtol=0, atol=1e-5)


def test_text_blocks_start_the_cross_encoder_where_widths_agree():
    """CLIP4Clip's trick: the cross encoder's blocks (and frame positions) start as CLIP's first
    text blocks. Here the text width equals the joint width (128); with more cross layers than the
    text tower has, it starts random (and says so)."""
    model, _ = _model(["pretrain.head_input_norm=false"])
    assert model.head_from_text
    for (name, a), (_, b) in zip(model.cross.transformer.resblocks[0].state_dict().items(),
                                 model.clip.transformer.resblocks[0].state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(model.cross.frame_position_embeddings, model.clip.positional_embedding[:T])
    deeper, _ = _model(["pretrain.head_layers=2"])
    assert not deeper.head_from_text and len(deeper.cross.transformer.resblocks) == 2
    clip_params, new_params = param_groups(deeper)
    new = {n for n, p in deeper.named_parameters() if any(p is q for q in new_params)}
    assert new and all(n.startswith("cross.") for n in new) and len(clip_params) + len(new_params) == len(
        list(deeper.parameters()))


# ----------------------------------------------------------------------------- the pairwise contract


def test_a_pair_score_does_not_depend_on_the_rest_of_the_batch():
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    with torch.no_grad():
        out = model(frames, None, tokens)
        state, texts = model.encode_video_state(frames), model.encode_text_state(tokens)
        batched = model.pair_scores(state, texts)  # (4, 4)
        assert not torch.allclose(batched, batched[:1].expand(4, -1), atol=1e-4)  # videos score differently
        torch.testing.assert_close(out["logit_scale"] * batched, out["logits"], rtol=0, atol=1e-5)
        for v in range(4):
            for t in range(4):
                alone = model.pair_scores({k: s[v:v + 1] for k, s in state.items()}, texts[t:t + 1])
                torch.testing.assert_close(alone[0, 0], batched[v, t], rtol=0, atol=1e-6)
        per_video = [{k: s[i] for k, s in state.items()} for i in range(4)]
        for block in (1, 3, 64):  # one pair at a time, ragged blocks, everything at once
            sim = pair_score_matrix(model, per_video, texts, torch.device("cpu"), pairs_per_block=block)
            torch.testing.assert_close(sim, batched, rtol=0, atol=1e-6)
        # the meanP fallback embeddings: CLIP's caption embedding, the mean of normalised frames
        torch.testing.assert_close(out["text"], model.encode_text(tokens), rtol=0, atol=1e-6)
        torch.testing.assert_close(out["video"], model.encode_video(frames), rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_frames(frames), model.clip.encode_image(frames.flatten(0, 1)).view(
            4, T, -1), rtol=0, atol=1e-6)


def test_padding_frames_and_padding_tokens_change_no_score():
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False], [True, True, False, False]])
    garbage = frames.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 3, 64, 64)
    with torch.no_grad():
        want = _scores(model, frames * mask[..., None, None, None], mask, tokens)
        torch.testing.assert_close(_scores(model, garbage, mask, tokens), want, rtol=0, atol=0)
        for v in range(1, 4):  # each video alone, cut to its real frames: the same scores
            n = int(mask[v].sum())
            alone = _scores(model, frames[v:v + 1, :n], None, tokens)
            torch.testing.assert_close(alone[0], want[v], rtol=0, atol=1e-6)
        # token ids after the end token: other ids, or cut off, change nothing
        end = tokens.argmax(dim=-1)
        noisy = tokens.clone()
        after = torch.arange(tokens.shape[1])[None, :] > end[:, None]
        noisy[after] = torch.randint(1, 49000, (int(after.sum()),))
        torch.testing.assert_close(_scores(model, garbage, mask, noisy), want, rtol=0, atol=1e-6)
        for t in range(4):
            alone = _scores(model, garbage, mask, tokens[t:t + 1, : int(end[t]) + 1])
            torch.testing.assert_close(alone[:, 0], want[:, t], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="end token lies past"):
        model.encode_text_state(torch.cat([tokens[:, :1], torch.ones(4, 20, dtype=torch.long),
                                           torch.full((4, 1), 49407)], dim=1))


@pytest.mark.parametrize("input_norm", [True, False])
def test_permuting_frames_changes_the_scores(input_norm):
    """The frame-position table is what shows the cross encoder the order: without it (zeros) a
    flipped video scores the same up to rounding (attention is blind to key order); with it the
    scores move far beyond rounding. (From a random tiny tower every pair scores nearly alike at
    initialisation, so the table is set to std 1 to see the effect clearly.)"""
    model, cfg = _model([f"pretrain.head_input_norm={str(input_norm).lower()}"])
    frames, tokens = _inputs(cfg)
    with torch.no_grad():
        model.cross.frame_position_embeddings.zero_()
        blind = (_scores(model, frames.flip(1), None, tokens) - _scores(model, frames, None, tokens)).abs().max()
        model.cross.frame_position_embeddings.normal_(std=1.0)
        seen = (_scores(model, frames.flip(1), None, tokens) - _scores(model, frames, None, tokens)).abs().max()
    assert blind < 1e-6 and seen > 1e-5 and seen > 100 * blind, (blind, seen)


def test_model_folder_rebuilds_to_identical_scores(tmp_path):
    model, cfg = _model(["pretrain.head_input_norm=false"])
    frames, tokens = _inputs(cfg)
    with torch.no_grad():  # move the cross encoder off its initial values
        for p in model.cross.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = save_pretrained(model, tmp_path / "m")
    info = json.loads((folder / "config.json").read_text())
    assert info["head"] == "tightTransf" and info["head_layers"] == 1 and info["head_init_from_text"] is True
    assert info["head_input_norm"] is False and info["max_words"] == 16
    again, _ = from_pretrained(folder)
    assert isinstance(again, TightTransfModel) and again.head_from_text and again.text_length == 16
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4, [True, False, False, False]])
    with torch.no_grad():
        assert torch.equal(_scores(again, frames, mask, tokens), _scores(model, frames, mask, tokens))
        assert torch.equal(again.encode_video(frames), model.encode_video(frames))
    save_pretrained(again, tmp_path / "m2")
    assert json.loads((tmp_path / "m2" / "config.json").read_text()) == info  # a reload describes itself alike


# ----------------------------------------------------------------------------- real files, real entries


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("tight_clips"))


def _run_args(data: Path, extra: list[str] = ()) -> list[str]:
    return cli_args(data, *TINY, "pretrain.batch_size=4", "run.num_workers=0", "run.log_every=1",
                    "video.cache_frames=0", *extra)


def test_train_evaluate_extract_and_stage2_on_real_files(clips, tmp_path, capsys):
    from retrieval_pretrain.reading.features import FeatureStore
    from vcap_toolkit.cli.main import main

    s1 = tmp_path / "s1"
    train = ["pretrain.epochs=10", "pretrain.lr=1e-3", "pretrain.clip_lr=1e-3", "pretrain.save_every=5"]
    assert main(["pretrain", "--output", str(s1), *_run_args(clips, train)]) == 0
    losses = [r["loss"] for r in map(json.loads, (s1 / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert "step_20" in {p.name for p in (s1 / "checkpoints").iterdir()}
    assert json.loads((s1 / "model" / "config.json").read_text())["head"] == "tightTransf"

    capsys.readouterr()
    assert main(["eval-retrieval", "--model", str(s1 / "model"), "--dsl", "--split", "train",
                 "--output", str(tmp_path / "r"), *_run_args(clips)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["videos"] == 8 and "dsl_v2t_R@1" in metrics
    assert metrics["t2v_R@1"] > 0.125, metrics  # better than chance on the videos it trained on

    # the pairwise path scored these: the cross encoder's ranking of the eight training videos
    model, spec = from_pretrained(s1 / "model")
    from retrieval_pretrain.stage1.data import Preprocess
    from retrieval_pretrain.stage1.encode import video_states

    rows = [json.loads(x) for x in (clips / "annotations.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    pre = Preprocess.for_model(spec)
    states, failures = video_states(model, [(r["video"], clips / r["video"]) for r in train_rows], pre,
                                    torch.device("cpu"), 4, 0)
    assert not failures and len(states) == 8 and states[train_rows[0]["video"]]["frames"].shape == (T, 128)

    feats = tmp_path / "feats"
    assert main(["extract", "--model", str(s1 / "model"), "--output", str(feats), *_run_args(clips)]) == 0
    store = FeatureStore(feats)
    files = sorted(store.dir.glob("*.npy"))
    assert len(files) == 12 and store.meta()["dim"] == 128 and store.meta()["head"] == "tightTransf"
    for p in files:
        a = store.load(p.stem)
        assert a.dtype == np.float16 and a.shape == (T, 128)  # the image tower's frame features

    s2 = tmp_path / "s2"
    stage2 = ["caption.epochs=2", "caption.batch_size=8", "caption.vocab_size=120", "caption.save_every=0",
              "decode.num_beams=1"]
    assert main(["train", "--features", str(feats), "--output", str(s2), *_run_args(clips, stage2)]) == 0
    assert {"config.json", "model.safetensors", "video_tower"} <= {p.name for p in (s2 / "model").iterdir()}

    # index / search / classify go through the cross encoder too (the index stores each video's state)
    idx = tmp_path / "idx"
    assert main(["index", *[str(clips / r["video"]) for r in train_rows], "--model", str(s1 / "model"),
                 "--output", str(idx), "--num-workers", "0"]) == 0
    query = train_rows[0]["captions"][0]
    capsys.readouterr()
    assert main(["search", str(idx), query, "--top", "8", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec

    with torch.no_grad():
        text = model.encode_text_state(tokenizer_from_spec(spec)([query]))
        stacked = {k: torch.stack([states[r["video"]][k] for r in train_rows]) for k in ("video", "frames", "mask")}
        exact = model.pair_scores(stacked, text)[:, 0]
    by_path = {str(clips / r["video"]): float(exact[i]) for i, r in enumerate(train_rows)}
    assert [p for p, _ in got] == sorted(by_path, key=by_path.get, reverse=True)
    np.testing.assert_allclose([s for _, s in got], [by_path[p] for p, _ in got], atol=2e-2)  # fp16 states
    assert main(["classify", str(clips / train_rows[0]["video"]), "--labels", "red,blue,green",
                 "--model", str(s1 / "model"), "--template", "a {} shape", "--json"]) == 0

    # the caption model knows its tower: `vcap caption` works from its folder alone
    clip_file = clips / train_rows[1]["video"]
    capsys.readouterr()
    assert main(["caption", str(clip_file), "--model", str(s2 / "model"), "--beam", "1", "--json"]) == 0
    captions = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["captions"]
    assert list(captions) == [str(clip_file)] and isinstance(captions[str(clip_file)], str)
    assert json.loads((s2 / "model" / "video_tower" / "config.json").read_text())["head"] == "tightTransf"
