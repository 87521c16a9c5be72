"""The stage-2 caption model (BART machinery): decoding semantics, masking, causality, folders, a
tiny overfit run, and the loss. Tiny configs, CPU, no mocks."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from decoders.loss import caption_loss
from decoders.model import CaptionModel, CaptionModelConfig, make_config

PAD, BOS, EOS = 0, 2, 3
FEAT = 16


def tiny_model(vocab: int = 40, seed: int = 0, eos_bias: float = 2.0, init_std: float = 0.2, **kw) -> CaptionModel:
    """A random tiny model whose outputs vary (wider init than training's 0.02) and sometimes end
    early (EOS logit bias), so decoding differences show."""
    torch.manual_seed(seed)
    cfg = make_config(feature_dim=FEAT, vocab_size=vocab, hidden_size=32, num_heads=4, ffn_size=64,
                      max_frames=8, max_length=16, dropout=0.0, init_std=init_std, **kw)
    model = CaptionModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias[0, EOS] = eos_bias
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the module's torch ops on one thread


@pytest.fixture(scope="module")
def model() -> CaptionModel:
    return tiny_model()


@pytest.fixture(scope="module")
def frames() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, FEAT, generator=g)  # (B, T, F)
    mask = torch.ones(8, 6, dtype=torch.bool)  # (B, T)
    mask[1, 4:] = False
    mask[5, 2:] = False
    return x, mask


def pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=PAD)


def manual_greedy(model: CaptionModel, x: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Argmax decoding by hand: full (uncached) forward passes, PAD after EOS."""
    seq = torch.full((x.shape[0], 1), BOS)  # (B, 1)
    done = torch.zeros(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(frame_features=x, frame_mask=mask, decoder_input_ids=seq).logits[:, -1].argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == EOS
    return seq[:, 1:]


def test_config_and_shapes(model, frames):
    x, mask = frames
    cfg = model.config
    assert isinstance(cfg, CaptionModelConfig) and cfg.model_type == "vcap-caption"
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.forced_eos_token_id) == (1, 3, None)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (PAD, BOS, EOS, BOS)
    assert model.lm_head.weight is model.model.shared.weight  # tied output layer
    ids = torch.randint(4, 40, (8, 5))
    assert model(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits.shape == (8, 5, 40)
    with pytest.raises(TypeError, match="hiden_size"):
        make_config(feature_dim=4, vocab_size=10, hiden_size=8)
    with pytest.raises(ValueError, match="frame positions"):
        model(frame_features=torch.randn(1, 20, FEAT), decoder_input_ids=ids[:1])
    with pytest.warns(UserWarning, match="max_new_tokens=40"):
        assert model.generate_captions(x[:2], mask[:2], num_beams=1, max_new_tokens=40).shape[1] <= 15


def test_greedy_equals_manual_argmax_and_beam_one(model, frames):
    x, mask = frames
    got = model.generate_captions(x, mask, num_beams=1, max_new_tokens=10)
    want = manual_greedy(model, x, mask, 10)
    assert torch.equal(pad_to(got, 10), want)
    assert (got == EOS).any() and not (got == EOS).all(dim=1).any()  # some end early, some run out


def test_beam_scores_are_consistent_and_beat_greedy(model, frames):
    """The score beam search ranks by (sum log p / length ** lp, EOS counted) is what
    ``sequence_scores`` recomputes by teacher forcing; beam search's pick scores at least as well
    as greedy's under it. (Not a theorem for small beams: beam search may prune greedy's prefix;
    it holds on these inputs, and exactly in the exhaustive test below.)"""
    x, mask = frames
    for lp in (0.0, 1.0):
        greedy, g_score = model.generate_captions(x, mask, num_beams=1, max_new_tokens=10, length_penalty=lp,
                                                  return_scores=True)
        beam, b_score = model.generate_captions(x, mask, num_beams=4, max_new_tokens=10, length_penalty=lp,
                                                return_scores=True)
        torch.testing.assert_close(b_score, model.sequence_scores(x, mask, beam, lp), atol=1e-5, rtol=0)
        torch.testing.assert_close(g_score, model.sequence_scores(x, mask, greedy, lp), atol=1e-5, rtol=0)
        assert (b_score >= g_score - 1e-5).all()
        assert (b_score > g_score + 1e-3).any()  # beam search finds better captions on some inputs
        # after the first EOS only PAD (transformers' beam search itself fills with EOS when PAD is 0)
        after = (beam == EOS).long().cumsum(1) - (beam == EOS).long() > 0
        assert (beam[after] == PAD).all()


def test_cached_and_uncached_generation_agree(model, frames):
    x, mask = frames
    for beams in (1, 3):
        cached = model.generate_captions(x, mask, num_beams=beams, max_new_tokens=10)
        uncached = model.generate_captions(x, mask, num_beams=beams, max_new_tokens=10, use_cache=False)
        assert torch.equal(cached, uncached)


def test_no_repeat_ngram_size_is_applied(model, frames):
    x, mask = frames
    out = model.generate_captions(x, mask, num_beams=3, max_new_tokens=10, no_repeat_ngram_size=1)
    for row in out.tolist():
        words = [t for t in row if t not in (PAD, EOS)]
        assert len(words) == len(set(words)), row


def test_decoder_is_causal(model, frames):
    x, mask = frames
    ids = torch.randint(4, 40, (8, 7), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = BOS
    base = model(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits  # (B, L, V)
    for k in (1, 4, 6):
        changed = ids.clone()
        changed[:, k] = (changed[:, k] + 7) % 36 + 4
        logits = model(frame_features=x, frame_mask=mask, decoder_input_ids=changed).logits
        torch.testing.assert_close(logits[:, :k], base[:, :k], atol=1e-6, rtol=0)
        assert not torch.allclose(logits[:, k:], base[:, k:], atol=1e-4)


def test_padding_frames_never_matter(model, frames):
    x, mask = frames
    ids = torch.randint(4, 40, (8, 5), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = BOS
    noisy = x.clone()
    noisy[~mask] = 50 * torch.randn(int((~mask).sum()), FEAT)
    a = model(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits
    b = model(frame_features=noisy, frame_mask=mask, decoder_input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # and a padded video decodes as the same video without its padding
    alone = model(frame_features=x[5:6, :2], frame_mask=mask[5:6, :2], decoder_input_ids=ids[5:6]).logits
    torch.testing.assert_close(a[5:6], alone, atol=1e-5, rtol=0)
    assert torch.equal(model.generate_captions(x, mask, num_beams=3, max_new_tokens=8),
                       model.generate_captions(noisy, mask, num_beams=3, max_new_tokens=8))


def test_save_and_load_round_trip(model, frames, tmp_path):
    x, mask = frames
    model.config.video_tower = {"fingerprint": "abc123", "dim": FEAT}
    model.config.decode = {"num_beams": 3}
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = CaptionModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.video_tower == {"fingerprint": "abc123", "dim": FEAT}
    assert loaded.config.decode == {"num_beams": 3}
    assert (loaded.config.feature_dim, loaded.config.max_frames, loaded.config.max_caption_length) == (FEAT, 8, 16)
    assert loaded.lm_head.weight is loaded.model.shared.weight
    ids = torch.randint(4, 40, (8, 5))
    ids[:, 0] = BOS
    assert torch.equal(model(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits,
                       loaded(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits)
    assert torch.equal(model.generate_captions(x, mask, num_beams=3, max_new_tokens=10),
                       loaded.generate_captions(x, mask, num_beams=3, max_new_tokens=10))


def test_beam_search_with_enough_beams_is_exhaustive():
    """With vocab 6 and 3 new tokens there are 156 captions: 1 + 5 + 25 ending in EOS at step 1/2/3,
    plus 125 that run out of tokens (5*5 non-EOS prefixes x 5 non-EOS last tokens). transformers'
    beam search ranks finished captions by sum log p / (generated tokens, EOS included) ** lp and is
    exact here because (a) every candidate of every step (at most 25 running x 6) fits among the
    ``num_beams`` kept ones, so nothing is pruned, and (b) its early-stop heuristic - which
    bounds a running beam by its current-length score, not an upper bound when lp > 0 - never
    fires while fewer than ``num_beams`` captions have finished. With fewer beams neither holds."""
    model = tiny_model(vocab=6, seed=5, eos_bias=1.5, init_std=0.2)
    v, n = 6, 3
    words = [t for t in range(v) if t != EOS]
    seqs = [list(p) + [EOS] for k in range(n) for p in itertools.product(words, repeat=k)]
    seqs += [list(p) for p in itertools.product(words, repeat=n)]
    assert len(seqs) == 156
    tokens = torch.tensor([s + [PAD] * (n - len(s)) for s in seqs])  # (156, 3)
    x = torch.randn(5, 4, FEAT, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(5, 4, dtype=torch.bool)
    winners = set()
    for lp in (0.0, 1.0, 2.0):
        got, got_scores = model.generate_captions(x, mask, num_beams=v ** n, max_new_tokens=n, length_penalty=lp,
                                                  return_scores=True)
        for b in range(5):
            scores = model.sequence_scores(x[b:b + 1].expand(len(seqs), -1, -1), mask[b:b + 1].expand(len(seqs), -1),
                                           tokens, lp)  # (156,)
            best = int(scores.argmax())
            assert pad_to(got, n)[b].tolist() == tokens[best].tolist(), (lp, b)
            assert got_scores[b].item() == pytest.approx(scores[best].item(), abs=1e-5)
            winners.add((len(seqs[best]), seqs[best][-1] == EOS))
    # the optimum is sometimes an immediate EOS, sometimes a full caption with or without EOS
    assert {(1, True), (3, True), (3, False)} <= winners


def test_tiny_model_overfits_four_captions():
    torch.manual_seed(0)
    model = CaptionModel(make_config(feature_dim=FEAT, vocab_size=40, hidden_size=32, num_heads=4, ffn_size=64,
                                     max_frames=8, max_length=12, dropout=0.0))
    x = torch.randn(4, 5, FEAT)  # (B, T, F)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2, 3:] = False
    captions = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16, 17], [18, 6, 19]]
    tokens = torch.zeros(4, 8, dtype=torch.long)  # (B, L): BOS caption EOS PAD...
    for i, c in enumerate(captions):
        tokens[i, : len(c) + 2] = torch.tensor([BOS] + c + [EOS])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(400):
        logits = model(frame_features=x, frame_mask=mask, decoder_input_ids=tokens[:, :-1]).logits
        loss = caption_loss(logits, tokens[:, 1:], label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    model.eval()
    out = model.generate_captions(x, mask, num_beams=1, max_new_tokens=10)
    assert [row[: row.index(EOS)] for row in out.tolist()] == captions


def test_caption_loss_ignores_padding_and_matches_bart(model, frames):
    x, mask = frames
    logits = torch.randn(2, 5, 40)
    labels = torch.tensor([[7, 8, 3, 0, 0], [9, 10, 11, 12, 3]])
    want = F.cross_entropy(torch.cat([logits[0, :3], logits[1]]), torch.cat([labels[0, :3], labels[1]]),
                           label_smoothing=0.1)
    torch.testing.assert_close(caption_loss(logits, labels, 0.1), want)
    assert caption_loss(logits, torch.zeros_like(labels)).item() == 0.0
    ids = torch.tensor([[BOS, 7, 8, 3, 0], [BOS, 9, 10, 11, 12]]).repeat(4, 1)
    out = model(frame_features=x, frame_mask=mask, decoder_input_ids=ids[:, :-1], labels=ids[:, 1:])
    torch.testing.assert_close(out.loss, caption_loss(out.logits, ids[:, 1:], 0.0))
