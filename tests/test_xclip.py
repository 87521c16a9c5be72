"""X-CLIP as a stage-1 video tower (``clip.kind=xclip``, issue 14 item 1): transformers' own
``XCLIPModel`` on a tiny random config, CPU only, no network.

Parity references are the library's ``get_video_features``, ``get_text_features`` and
``forward``'s ``logits_per_video`` / loss; then the toolkit's pairwise path (block scoring,
padding), model folders, the offline errors, and a real run on generated mp4 files: training,
``vcap extract``, ``vcap eval-retrieval`` and a stage-2 run on the extracted features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from demo_clips import cli_args, make_clips

from caption.config import load
from retrieval_pretrain.foundation.errors import ConfigError, WeightsUnavailableError
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer, tokenizer_from_spec
from retrieval_pretrain.modeling.loss import info_nce, info_nce_scores
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained
from retrieval_pretrain.modeling.parts import build_loss, build_video_text_model, param_groups
from retrieval_pretrain.modeling.xclip import XClipVideoTextModel, spread_real_frames, text_attention_mask
from retrieval_pretrain.stage1.encode import pair_score_matrix

ROOT = Path(__file__).resolve().parents[1]
T = 4
TINY = ("{projection_dim: 32, prompt_layers: 1, prompt_num_attention_heads: 2, "
        "text_config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}, "
        "vision_config: {hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2, "
        "image_size: 32, patch_size: 16, mit_hidden_size: 32, mit_intermediate_size: 64, "
        "mit_num_hidden_layers: 1, mit_num_attention_heads: 2}}")
XCLIP = ["clip.kind=xclip", "clip.model=tiny-xclip", "clip.pretrained=null", f"clip.custom={TINY}",
         f"video.num_frames={T}", "pretrain.freeze=[]"]
CAPTIONS = ["a red square moves left", "a blue circle", "so great!~ a green triangle turns", "a dog"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the module's torch ops on one thread


def _model(extra: list[str] = (), seed: int = 0) -> tuple[XClipVideoTextModel, object]:
    cfg = load(None, [*XCLIP, *extra])
    torch.manual_seed(seed)
    return build_video_text_model(cfg).eval(), cfg


def _inputs(cfg, batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, 3, 32, 32, generator=g), build_tokenizer(cfg)(CAPTIONS[:batch])


# ----------------------------------------------------------------------------- parity with transformers


def test_embeddings_equal_transformers_own_features():
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    assert isinstance(model, XClipVideoTextModel) and scores_pairwise(model)
    with torch.no_grad():
        want_v = F.normalize(model.clip.get_video_features(pixel_values=frames).pooler_output, dim=-1)
        want_t = F.normalize(model.clip.get_text_features(input_ids=tokens, attention_mask=text_attention_mask(tokens))
                             .pooler_output, dim=-1)
        torch.testing.assert_close(model.encode_video(frames), want_v, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_text(tokens), want_t, rtol=0, atol=1e-6)
        # the per-frame features stage 2 caches are the MIT's output; their mean is the video embedding
        seq = model.encode_frames(frames)
        assert seq.shape == (4, T, 32)
        torch.testing.assert_close(model.pool(seq), want_v, rtol=0, atol=1e-6)


def test_prompted_logits_and_loss_equal_xclip_forward():
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    with torch.no_grad():
        ref = model.clip(input_ids=tokens, pixel_values=frames, attention_mask=text_attention_mask(tokens),
                         return_loss=True)
        out = model(frames, None, tokens)
        torch.testing.assert_close(out["logits"], ref.logits_per_video, rtol=0, atol=1e-5)
        loss = build_loss(cfg)(out, tokens)
        torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)
        # the prompt generator matters: the prompt-free dot product is another matrix
        plain = out["logit_scale"] * out["video"] @ out["text"].T
        assert not torch.allclose(plain, out["logits"], atol=1e-4)
        # the score-matrix loss is InfoNCE itself when the scores are a dot product
        torch.testing.assert_close(info_nce_scores(plain), info_nce(out["video"], out["text"], out["logit_scale"]))


def test_toolkit_tokens_read_right_by_xclip_text_model():
    """Pad 0 and X-CLIP's argmax pooling: the end token (49407) is the largest id, so argmax finds
    it; trailing zeros never reach it (causal attention), so the embedding equals that of the
    unpadded ids. But 0 is also "!" inside a word: ``ids != 0`` as the attention mask would hide it."""
    model, cfg = _model()
    tokens = build_tokenizer(cfg)(CAPTIONS)
    assert tokens.shape[1] == model.context_length == 77 and int(tokens[:, 0].unique()) == 49406
    eos = tokens.argmax(dim=-1)
    assert (tokens[torch.arange(4), eos] == 49407).all() and (tokens[2, 1:eos[2]] == 0).any()  # "!~" holds id 0
    with torch.no_grad():
        padded = model.encode_text(tokens)
        for i in range(4):
            alone = model.encode_text(tokens[i:i + 1, : int(eos[i]) + 1])  # no padding at all
            torch.testing.assert_close(padded[i:i + 1], alone, rtol=0, atol=1e-6)
        unmasked = F.normalize(model.clip.get_text_features(input_ids=tokens).pooler_output, dim=-1)
        torch.testing.assert_close(padded, unmasked, rtol=0, atol=1e-6)
        wrong = F.normalize(model.clip.get_text_features(input_ids=tokens, attention_mask=(tokens != 0).long())
                            .pooler_output, dim=-1)
        assert not torch.allclose(wrong[2], padded[2], atol=1e-4)  # the "!" caption
        torch.testing.assert_close(wrong[[0, 1, 3]], padded[[0, 1, 3]], rtol=0, atol=1e-6)


def test_every_part_of_xclip_learns_and_new_modules_get_the_new_lr():
    """Message tokens, MIT and prompt generator all receive gradients from the retrieval loss;
    ``param_groups`` puts exactly them (not CLIP's towers) in the new-layer group."""
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    model.train()
    build_loss(cfg)(model(frames, None, tokens), tokens).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for part in ("message_fc", "message_attn", "clip.mit.", "prompts_generator", "prompts_visual_projection",
                 "clip.text_model", "clip.vision_model.embeddings"):
        got = [g for n, g in grads.items() if part in n]
        assert got and all(g is not None for g in got) and any(g.abs().sum() > 0 for g in got), part
    clip_params, new_params = param_groups(model)
    new_names = {n for n, p in model.named_parameters() if any(p is q for q in new_params)}
    assert new_names and all(("message_" in n or ".mit." in f".{n}" or "prompts_" in n) for n in new_names)
    assert any("prompts_generator" in n for n in new_names) and any("message_attn" in n for n in new_names)
    assert not any(n.startswith(("clip.text_model", "clip.visual_projection")) for n in new_names)
    assert len(clip_params) + len(new_params) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- the pairwise path


def test_block_scoring_equals_the_batch_logits():
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    with torch.no_grad():
        out = model(frames, None, tokens)
        state = model.encode_video_state(frames)
        texts = model.encode_text_state(tokens)
        per_video = [{k: v[i] for k, v in state.items()} for i in range(4)]
        for block in (1, 3, 64):  # one pair at a time, ragged blocks, everything at once
            sim = pair_score_matrix(model, per_video, texts, torch.device("cpu"), pairs_per_block=block)
            torch.testing.assert_close(sim * out["logit_scale"], out["logits"], rtol=0, atol=1e-5)


def test_padding_frames_are_never_read_and_real_frames_are_spread():
    """Fewer real frames than X-CLIP's fixed count: the real frames are spread over the T positions
    (3 real of 4: positions show frames 0, 1, 1, 2); padding contents change nothing; the rows of
    real frames in ``encode_frames`` hold those frames' features; the embedding is X-CLIP's own on
    the spread clip."""
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False], [True, True, False, False]])
    source, _, _ = spread_real_frames(mask)
    assert source.tolist() == [[0, 1, 2, 3], [0, 1, 1, 2], [0, 0, 0, 0], [0, 0, 1, 1]]
    garbage = frames.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 3, 32, 32)
    zeros = frames.clone()
    zeros[~mask] = 0
    with torch.no_grad():
        a, b = model.encode_frames(garbage, mask), model.encode_frames(zeros, mask)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        spread = frames[torch.arange(4)[:, None], source]  # (4, T, 3, 32, 32)
        want = F.normalize(model.clip.get_video_features(pixel_values=spread).pooler_output, dim=-1)
        torch.testing.assert_close(model.pool(a, mask), want, rtol=0, atol=1e-6)
        own = model.encode_frames(spread)  # clip order, unspread
        torch.testing.assert_close(a[1, :3], own[1, [0, 1, 3]], rtol=0, atol=1e-6)  # first showing of each frame
        torch.testing.assert_close(a[0], own[0], rtol=0, atol=0)  # a full video is fed unchanged
        logits = model(garbage, mask, tokens)["logits"]
        ref = model.clip(input_ids=tokens, pixel_values=spread, attention_mask=text_attention_mask(tokens))
        torch.testing.assert_close(logits, ref.logits_per_video, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="exactly 4 frames"):
        model.encode_frames(frames[:, :3])


_GLOO = """
import json, sys
import torch, torch.distributed as dist
from retrieval_pretrain.modeling.loss import info_nce_scores
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
n = 3 if rank == 0 else 2
logits = torch.randn(n, n, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
loss = info_nce_scores(logits)
dist.destroy_process_group()
json.dump([loss.item()], open(out, "w"))
"""


def test_pairwise_loss_over_two_processes_weights_each_batch_by_its_share(tmp_path):
    """3 + 2 pairs on two gloo processes, each scoring its own batch: the mean of the processes'
    values (what DDP averages) is the size-weighted mean of the local losses."""
    from conftest import run_gloo_pair

    got = [r[0] for r in run_gloo_pair(_GLOO, tmp_path)]
    local = [info_nce_scores(torch.randn(n, n, generator=torch.Generator().manual_seed(r), dtype=torch.float64)).item()
             for r, n in ((0, 3), (1, 2))]
    assert got[0] == pytest.approx(local[0] * 3 * 2 / 5, abs=1e-12) and got[1] == pytest.approx(local[1] * 2 * 2 / 5)
    assert np.mean(got) == pytest.approx((3 * local[0] + 2 * local[1]) / 5, abs=1e-12)


# ----------------------------------------------------------------------------- folders, loading, config


def test_model_folder_rebuilds_without_a_download(tmp_path, monkeypatch):
    model, cfg = _model()
    frames, tokens = _inputs(cfg)
    folder = save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    info = json.loads((folder / "config.json").read_text())
    assert info["clip"]["kind"] == "xclip" and info["head"] == "mit" and info["embed_dim"] == 32
    assert info["clip"]["arch"]["vision_config"]["num_frames"] == T and info["clip"]["arch"]["projection_dim"] == 32
    assert info["image_size"] == 32 and info["image_mean"] == list(model.image_mean)
    assert info["image_mean"] == [0.48145466, 0.4578275, 0.40821073]  # CLIP's OpenAI values, as XCLIPProcessor
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again, spec = from_pretrained(folder)
    assert isinstance(again, XClipVideoTextModel)
    with torch.no_grad():
        assert torch.equal(again.encode_video(frames), model.encode_video(frames))
        assert torch.equal(again.encode_text(tokens), model.encode_text(tokens))
        assert torch.equal(again(frames, None, tokens)["logits"], model(frames, None, tokens)["logits"])
    assert torch.equal(tokenizer_from_spec(spec)(CAPTIONS), build_tokenizer(cfg)(CAPTIONS))


def test_a_transformers_folder_loads_strictly_by_from_pretrained(tmp_path):
    """``clip.model`` = a folder written by ``XCLIPModel.save_pretrained``: its weights, exactly;
    ``clip.pretrained=null`` takes only its architecture; a folder with a tensor missing is refused."""
    from safetensors.torch import load_file, save_file

    source, _ = _model(seed=3)
    source.clip.save_pretrained(tmp_path / "hf")
    loaded, cfg = _model(["clip.custom=null", f"clip.model={tmp_path / 'hf'}", "clip.pretrained=weights"])
    for (n, a), (_, b) in zip(source.clip.state_dict().items(), loaded.clip.state_dict().items()):
        assert torch.equal(a, b), n
    fresh, _ = _model(["clip.custom=null", f"clip.model={tmp_path / 'hf'}"], seed=4)
    assert not torch.equal(fresh.clip.logit_scale, source.clip.logit_scale) or not torch.equal(
        fresh.clip.text_projection.weight, source.clip.text_projection.weight)
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    weights.pop(next(k for k in weights if "prompts_generator" in k))
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        _model(["clip.custom=null", f"clip.model={tmp_path / 'hf'}", "clip.pretrained=weights"])
    with pytest.raises(WeightsUnavailableError, match="no such folder"):
        _model(["clip.custom=null", f"clip.model={tmp_path / 'nothing'}", "clip.pretrained=weights"])


def test_a_hub_name_offline_says_how_to_supply_the_model(tmp_path):
    """The real ``from_pretrained`` path with the Hub offline and an empty cache, in a fresh process
    (huggingface_hub reads HF_HUB_OFFLINE at import)."""
    code = (
        "from caption.config import load\n"
        "from retrieval_pretrain.foundation.errors import WeightsUnavailableError\n"
        "from retrieval_pretrain.modeling.parts import build_video_text_model\n"
        "cfg = load(None, ['clip.kind=xclip', 'clip.model=microsoft/xclip-base-patch32', 'clip.custom=null',"
        " 'clip.pretrained=weights', 'video.num_frames=8'])\n"
        "try:\n    build_video_text_model(cfg)\nexcept WeightsUnavailableError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "cannot get X-CLIP 'microsoft/xclip-base-patch32'" in text
    assert "HF_HUB_OFFLINE=1" in text and "save_pretrained" in text and "clip.custom" in text


@pytest.mark.parametrize("extra, message", [
    (["video.num_frames=6", "clip.custom.vision_config.num_frames=4"], "video.num_frames=6"),
    (["clip.custom.vision_config.hidden_sizee=8"], "unknown X-CLIP config keys hidden_sizee"),
    (["clip.custom.projection_dim=16"], "mit_hidden_size=32 must equal projection_dim=16"),
    (["clip.pretrained=somewhere.safetensors"], "set clip.pretrained=null"),
    (["clip.temporal_attention=st_mix"], "does not apply to clip.kind=xclip"),
    (["clip.custom.text_config.vocab_size=1000"], "smaller than the CLIP BPE vocabulary"),
])
def test_configs_that_cannot_make_sense_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        _model(extra)


def test_frame_count_follows_video_num_frames_when_not_given():
    model, _ = _model(["video.num_frames=6"])
    assert model.num_frames == 6 and model.clip.mit.position_embedding.shape[1] == 6


# ----------------------------------------------------------------------------- real files, real entries


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Clips of 3 frames each: fewer than the 4 X-CLIP takes, so every clip is spread."""
    return make_clips(tmp_path_factory.mktemp("xclip_clips"), frames=3)


def _run_args(data: Path, extra: list[str] = ()) -> list[str]:
    return cli_args(data, *XCLIP, "pretrain.batch_size=4", "run.num_workers=0", "run.log_every=1",
                    "video.cache_frames=0", *extra)


def test_train_extract_evaluate_and_stage2_on_real_files(clips, tmp_path, capsys):
    from retrieval_pretrain.reading.features import FeatureStore
    from vcap_toolkit.cli.main import main

    s1 = tmp_path / "s1"
    train = ["pretrain.epochs=10", "pretrain.lr=1e-3", "pretrain.clip_lr=1e-3", "pretrain.save_every=5"]
    assert main(["pretrain", "--output", str(s1), *_run_args(clips, train)]) == 0
    losses = [r["loss"] for r in map(json.loads, (s1 / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert "step_20" in {p.name for p in (s1 / "checkpoints").iterdir()}
    assert json.loads((s1 / "model" / "config.json").read_text())["clip"]["kind"] == "xclip"

    capsys.readouterr()
    assert main(["eval-retrieval", "--model", str(s1 / "model"), "--dsl", "--split", "train",
                 "--output", str(tmp_path / "r"), *_run_args(clips)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["videos"] == 8 and 0 <= metrics["t2v_R@1"] <= 1 and "dsl_v2t_R@1" in metrics

    feats = tmp_path / "feats"
    assert main(["extract", "--model", str(s1 / "model"), "--output", str(feats), *_run_args(clips)]) == 0
    store = FeatureStore(feats)
    files = sorted(store.dir.glob("*.npy"))
    assert len(files) == 12 and store.meta()["dim"] == 32 and store.meta()["head"] == "mit"
    model, info = from_pretrained(s1 / "model")
    for p in files:
        a = store.load(p.stem)
        assert a.dtype == np.float16 and a.shape == (3, 32)  # one row per real frame

    # Stage 2 reads them: a short caption-model run on the X-CLIP features.
    s2 = tmp_path / "s2"
    stage2 = ["caption.epochs=2", "caption.batch_size=8", "caption.vocab_size=120", "caption.save_every=0",
              "decode.num_beams=1"]
    assert main(["train", "--features", str(feats), "--output", str(s2), *_run_args(clips, stage2)]) == 0
    assert {"config.json", "model.safetensors", "video_tower"} <= {p.name for p in (s2 / "model").iterdir()}

    # the caption model knows its tower: `vcap caption` works from its folder alone
    clip_file = sorted(clips.rglob("*.mp4"))[0]
    capsys.readouterr()
    assert main(["caption", str(clip_file), "--model", str(s2 / "model"), "--beam", "1", "--json"]) == 0
    captions = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["captions"]
    assert list(captions) == [str(clip_file)] and isinstance(captions[str(clip_file)], str)
    assert json.loads((s2 / "model" / "video_tower" / "config.json").read_text())["clip"]["kind"] == "xclip"
