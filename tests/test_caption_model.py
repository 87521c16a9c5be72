"""The stage-2 caption model (BART machinery): decoding semantics, masking, causality, folders, a
tiny overfit run, and the loss; its settings under the names users type, the decoding config handed
whole to generation, and folders of the previous release. Tiny configs, CPU, no mocks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from caption.config import CaptionConfig, load
from caption.evaluate import caption_batches
from caption.pipeline import CaptionPipeline
from caption.tokenizer import CaptionTokenizer
from decoders.config import CaptionModelSettings, DecodeConfig
from decoders.loss import caption_loss
from decoders.model import CaptionModel, CaptionModelConfig, caption_model_config
from retrieval_pretrain.foundation.errors import ModelFolderError

PAD, BOS, EOS = 0, 2, 3
FEAT = 16


def tiny_model(vocab: int = 40, seed: int = 0, eos_bias: float = 2.0, init_std: float = 0.2) -> CaptionModel:
    """A random tiny model whose outputs vary (wider init than training's 0.02) and sometimes end
    early (EOS logit bias), so decoding differences show."""
    torch.manual_seed(seed)
    settings = CaptionModelSettings(vocab_size=vocab, hidden_size=32, num_heads=4, ffn_size=64, max_frames=8,
                                    max_length=16, dropout=0.0)
    cfg = caption_model_config(settings, FEAT, init_std=init_std)
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
        CaptionModelSettings(hiden_size=8)
    with pytest.raises(ValueError, match="settings.hidden_size=30 is not a multiple of settings.num_heads=4"):
        caption_model_config(CaptionModelSettings(hidden_size=30, num_heads=4), FEAT)
    with pytest.raises(ValueError, match="frame positions"):
        model(frame_features=torch.randn(1, 20, FEAT), decoder_input_ids=ids[:1])
    with pytest.warns(UserWarning, match="max_new_tokens=40"):
        assert model.generate_captions(x[:2], mask[:2], DecodeConfig(num_beams=1, max_new_tokens=40)).shape[1] <= 15


def test_greedy_equals_manual_argmax_and_beam_one(model, frames):
    x, mask = frames
    got = model.generate_captions(x, mask, DecodeConfig(num_beams=1, max_new_tokens=10))
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
        greedy_decode = DecodeConfig(num_beams=1, max_new_tokens=10, length_penalty=lp)
        greedy, g_score = model.generate_captions(x, mask, greedy_decode, return_scores=True)
        beam_decode = DecodeConfig(num_beams=4, max_new_tokens=10, length_penalty=lp)
        beam, b_score = model.generate_captions(x, mask, beam_decode, return_scores=True)
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
        cached = model.generate_captions(x, mask, DecodeConfig(num_beams=beams, max_new_tokens=10))
        uncached = model.generate_captions(x, mask, DecodeConfig(num_beams=beams, max_new_tokens=10), use_cache=False)
        assert torch.equal(cached, uncached)


def test_no_repeat_ngram_size_is_applied(model, frames):
    x, mask = frames
    out = model.generate_captions(x, mask, DecodeConfig(num_beams=3, max_new_tokens=10, no_repeat_ngram_size=1))
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
    assert torch.equal(model.generate_captions(x, mask, DecodeConfig(num_beams=3, max_new_tokens=8)),
                       model.generate_captions(noisy, mask, DecodeConfig(num_beams=3, max_new_tokens=8)))


def test_save_and_load_round_trip(model, frames, tmp_path):
    x, mask = frames
    model.config.video_tower = {"fingerprint": "abc123", "dim": FEAT}
    model.config.decode = {"num_beams": 3}
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = CaptionModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.video_tower == {"fingerprint": "abc123", "dim": FEAT}
    assert loaded.config.decode == {"num_beams": 3}
    assert loaded.config.feature_dim == FEAT and loaded.config.settings == model.config.settings
    assert (loaded.config.settings.max_frames, loaded.config.settings.max_length) == (8, 16)
    assert loaded.lm_head.weight is loaded.model.shared.weight
    ids = torch.randint(4, 40, (8, 5))
    ids[:, 0] = BOS
    assert torch.equal(model(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits,
                       loaded(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits)
    assert torch.equal(model.generate_captions(x, mask, DecodeConfig(num_beams=3, max_new_tokens=10)),
                       loaded.generate_captions(x, mask, DecodeConfig(num_beams=3, max_new_tokens=10)))


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
        got, got_scores = model.generate_captions(x, mask, DecodeConfig(num_beams=v ** n, max_new_tokens=n,
                                                                        length_penalty=lp), return_scores=True)
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
    model = CaptionModel(caption_model_config(CaptionModelSettings(
        vocab_size=40, hidden_size=32, num_heads=4, ffn_size=64, max_frames=8, max_length=12, dropout=0.0), FEAT))
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
    out = model.generate_captions(x, mask, DecodeConfig(num_beams=1, max_new_tokens=10))
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


# ----------------------------------------------------------------------------- settings, decoding, old folders


def _other(value: object) -> object:
    """A valid setting other than ``value`` (a default): ints doubled, floats halved, bools flipped."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 if isinstance(value, int) else value / 2
    raise AssertionError(f"no test value for a setting of {value!r}: teach _other one")


def test_every_model_setting_reaches_the_model_under_its_name():
    """The caption section's model fields are ``CaptionModelSettings``' (iterated, so a new one is
    checked too): each, typed in a vcap config under its name, is what the model's config reads
    back under the same name, and each changes what the model's config.json records."""
    names = [f.name for f in dataclasses.fields(CaptionModelSettings)]
    assert issubclass(CaptionConfig, CaptionModelSettings)
    assert [f.name for f in dataclasses.fields(CaptionConfig)][: len(names)] == names
    default = CaptionModelSettings()
    changed = {n: _other(getattr(default, n)) for n in names}
    cfg = load(None, [f"caption.{n}={v}" for n, v in changed.items()])
    assert cfg.caption.model_settings() == CaptionModelSettings(**changed)
    assert caption_model_config(cfg.caption, FEAT).settings == CaptionModelSettings(**changed)
    base = caption_model_config(default, FEAT).to_dict()
    for n, v in changed.items():
        one = caption_model_config(dataclasses.replace(default, **{n: v}), FEAT)
        assert one.settings == dataclasses.replace(default, **{n: v}), n
        assert one.to_dict() != base, f"{n} does not reach the model's config"


def test_the_settings_mean_what_their_names_say():
    s = CaptionModelSettings(hidden_size=24, num_heads=3, ffn_size=40, encoder_layers=2, decoder_layers=1,
                             dropout=0.25, max_frames=5, max_length=9, vocab_size=33)
    m = CaptionModel(caption_model_config(s, FEAT))
    enc, dec = m.model.encoder, m.model.decoder
    assert (len(enc.layers), len(dec.layers)) == (2, 1)
    assert m.frame_proj.weight.shape == (24, FEAT) and m.model.shared.weight.shape == (33, 24)
    for layer in [*enc.layers, *dec.layers]:
        assert layer.fc1.weight.shape == (40, 24) and layer.self_attn.num_heads == 3
        assert layer.self_attn.dropout == 0.25 and layer.dropout == 0.25
    assert m.config.max_position_embeddings == 9  # one table size covers max_frames and max_length
    with pytest.raises(ValueError, match="10 frames, but the model has frame positions for 9"):
        m(frame_features=torch.randn(1, 10, FEAT), decoder_input_ids=torch.tensor([[BOS]]))


def test_the_decode_config_reaches_generation_whole(model, frames):
    x, mask = frames
    greedy = model.generate_captions(x, mask, DecodeConfig(num_beams=1, max_new_tokens=10))
    assert torch.equal(pad_to(greedy, 10), manual_greedy(model, x, mask, 10))  # num_beams=1: greedy
    short = model.generate_captions(x, mask, DecodeConfig(num_beams=1, max_new_tokens=3))
    assert short.shape[1] == 3 and torch.equal(short, greedy[:, :3])  # max_new_tokens: the same, cut
    beam = model.generate_captions(x, mask, DecodeConfig(num_beams=4, max_new_tokens=10))
    assert not torch.equal(pad_to(beam, 10), pad_to(greedy, 10))
    length = {lp: (model.generate_captions(x, mask, DecodeConfig(num_beams=4, max_new_tokens=10, length_penalty=lp))
                   != PAD).sum(1) for lp in (0.0, 3.0)}
    assert (length[3.0] >= length[0.0]).all() and (length[3.0] > length[0.0]).any()  # a higher lp: longer captions
    assert torch.equal(model.generate_captions(x, mask, DecodeConfig(num_beams=4, max_new_tokens=10, batch_size=1)),
                       beam)  # batch_size is the callers' batching, not a generation setting
    with pytest.warns(UserWarning, match="max_new_tokens=28"):  # DecodeConfig()'s 28 > this model's 15
        assert torch.equal(model.generate_captions(x, mask), model.generate_captions(x, mask, DecodeConfig()))


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> object:
    path = tmp_path_factory.mktemp("tok") / CaptionTokenizer.FILENAME
    CaptionTokenizer.train(["a red ball moves left", "a blue cube moves right", "a green ring spins slowly",
                            "the small square jumps up and down"], 40, path)
    return path


def test_evaluation_decodes_with_the_config_it_is_given(frames, tokenizer_file):
    x, mask = frames
    tok = CaptionTokenizer.load(tokenizer_file)
    m = tiny_model(vocab=tok.vocab_size, seed=3)
    loader = [{"video_ids": [f"v{i}" for i in range(len(x))], "frame_features": x, "frame_mask": mask}]
    seen = []
    for decode in (DecodeConfig(num_beams=1, max_new_tokens=2),
                   DecodeConfig(num_beams=3, max_new_tokens=12, length_penalty=3.0)):
        got = caption_batches(m, tok, loader, decode, torch.device("cpu"), progress=False)
        assert [c for _, c in got] == tok.decode_batch(m.generate_captions(x, mask, decode).tolist())
        seen.append(got)
    assert seen[0] != seen[1]


# config.json as the previous release wrote it (make_config + save_pretrained): BART's names only,
# and `decode` without batch_size. The architecture is tiny_model()'s.
OLD_CONFIG = {
    "activation_dropout": 0.0, "activation_function": "gelu", "architectures": ["CaptionModel"],
    "attention_dropout": 0.0, "bos_token_id": 2, "classifier_dropout": 0.0, "d_model": 32,
    "decode": {"length_penalty": 0.5, "max_new_tokens": 12, "no_repeat_ngram_size": 2, "num_beams": 3},
    "decoder_attention_heads": 4, "decoder_ffn_dim": 64, "decoder_layerdrop": 0.0, "decoder_layers": 3,
    "decoder_start_token_id": 2, "dropout": 0.0, "dtype": "float32", "encoder_attention_heads": 4,
    "encoder_ffn_dim": 64, "encoder_layerdrop": 0.0, "encoder_layers": 1, "eos_token_id": 3, "feature_dim": FEAT,
    "forced_eos_token_id": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}, "init_std": 0.2,
    "is_decoder": False, "is_encoder_decoder": True, "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
    "max_caption_length": 16, "max_frames": 8, "max_position_embeddings": 16, "model_type": "vcap-caption",
    "pad_token_id": 0, "scale_embedding": False, "tie_word_embeddings": True, "transformers_version": "5.25.0",
    "use_cache": True, "video_tower": {"dim": FEAT, "fingerprint": "abc"}, "vocab_size": 40,
}


def _old_folder(model: CaptionModel, folder, tokenizer_file, **config) -> CaptionPipeline:
    """``model``'s weights beside an old-form config.json (``config`` changes it); loaded as users do."""
    model.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**OLD_CONFIG, **config}))
    (folder / CaptionTokenizer.FILENAME).write_bytes(tokenizer_file.read_bytes())
    return CaptionPipeline.from_pretrained(folder, device=torch.device("cpu"), load_tower=False)


def test_a_folder_of_the_previous_release_loads_and_captions_as_before(model, frames, tmp_path, tokenizer_file):
    x, mask = frames
    pipe = _old_folder(model, tmp_path / "old", tokenizer_file)
    loaded = pipe.model
    assert loaded.config.settings == CaptionModelSettings(hidden_size=32, num_heads=4, ffn_size=64, encoder_layers=1,
                                                          decoder_layers=3, dropout=0.0, max_frames=8, max_length=16,
                                                          vocab_size=40)
    ids = torch.randint(4, 40, (8, 5), generator=torch.Generator().manual_seed(4))
    ids[:, 0] = BOS
    assert torch.equal(model(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits,
                       loaded(frame_features=x, frame_mask=mask, decoder_input_ids=ids).logits)
    decode = pipe.default_decode()
    assert decode == DecodeConfig(num_beams=3, max_new_tokens=12, length_penalty=0.5, no_repeat_ngram_size=2)
    assert torch.equal(loaded.generate_captions(x, mask, decode), model.generate_captions(x, mask, decode))
    # this release writes the same architecture under the same BART names
    now = json.loads(caption_model_config(loaded.config.settings, FEAT, init_std=0.2).to_json_string())
    same = [k for k in OLD_CONFIG if k not in ("decode", "video_tower", "architectures", "dtype")]
    assert {k: now[k] for k in same} == {k: OLD_CONFIG[k] for k in same}


def test_saved_decoding_settings_are_read_checked(model, tmp_path, tokenizer_file, capsys):
    """A name this release does not know is left out with a warning; a known one with a bad value
    is an error naming the folder."""
    pipe = _old_folder(model, tmp_path / "newer", tokenizer_file, decode={"num_beams": 2, "beam_width": 4})
    capsys.readouterr()
    assert pipe.default_decode() == DecodeConfig(num_beams=2)
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("warning: ") and "beam_width" in said[0]  # one line
    for bad in ({"num_beams": "3"}, {"num_beams": 0}, {"length_penalty": None}, [3]):
        folder = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        pipe = _old_folder(model, folder, tokenizer_file, decode=bad)
        with pytest.raises(ModelFolderError, match=str(folder)), warnings.catch_warnings():
            warnings.simplefilter("error")
            pipe.default_decode()
    assert _old_folder(model, tmp_path / "none", tokenizer_file, decode=None).default_decode() == DecodeConfig()
