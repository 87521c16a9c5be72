"""Space-time mixing attention (``clip.temporal_attention=st_mix``, Open-VCLIP; issue 14, part): off or
with one frame it is open_clip's image tower bit for bit; on, a frame's features depend on its
neighbours (and only on its own video's); the parameters are unchanged; model folders keep it."""

from __future__ import annotations

import pytest
import torch

from caption.config import load
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.parts import build_video_text_model

VIT = ["clip.pretrained=null", "video.num_frames=4", "pretrain.head=meanP", "clip.custom={embed_dim: 32, "
       "vision_cfg: {layers: 2, width: 64, head_width: 32, patch_size: 16, image_size: 32}, "
       "text_cfg: {layers: 1, width: 32, heads: 2, context_length: 77, vocab_size: 49408}}"]


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    plain = build_video_text_model(load(None, VIT)).eval()
    mixed = build_video_text_model(load(None, VIT + ["clip.temporal_attention=st_mix"])).eval()
    mixed.load_state_dict(plain.state_dict())  # the same weights: the switch adds none
    return plain, mixed


def test_the_parameters_are_image_clips_and_one_frame_is_image_clip_exactly():
    plain, mixed = _models()
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in mixed.state_dict().items()}
    frames = torch.randn(3, 1, 3, 32, 32)  # three videos of one frame
    with torch.no_grad():
        want = plain.clip.encode_image(frames.flatten(0, 1))
        assert torch.equal(mixed.encode_frames(frames)[:, 0], want)
        assert torch.equal(plain.encode_frames(frames)[:, 0], want)


def test_a_frame_depends_on_its_neighbours_but_never_on_another_video():
    plain, mixed = _models()
    torch.manual_seed(1)
    video = torch.randn(1, 4, 3, 32, 32)
    shuffled = video[:, [0, 3, 2, 1]]  # frame 0 keeps its place, its neighbour changes
    with torch.no_grad():
        assert torch.equal(plain.encode_frames(video)[0, 0], plain.encode_frames(shuffled)[0, 0])  # per-frame CLIP
        a, b = mixed.encode_frames(video)[0, 0], mixed.encode_frames(shuffled)[0, 0]
        assert not torch.allclose(a, b, atol=1e-4)
        other = torch.randn(1, 4, 3, 32, 32)
        pair = torch.cat([video, other])  # batched with another video, and with padding
        mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
        torch.testing.assert_close(mixed.encode_frames(pair, mask)[0], mixed.encode_frames(video)[0],
                                   rtol=1e-5, atol=1e-5)
        alone = mixed.encode_frames(other[:, :2])[0]
        torch.testing.assert_close(mixed.encode_frames(pair, mask)[1, :2], alone, rtol=1e-5, atol=1e-5)


def test_the_switch_survives_the_model_folder(tmp_path):
    from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained

    _, mixed = _models()
    save_pretrained(mixed, tmp_path / "m")
    again, spec = from_pretrained(tmp_path / "m")
    assert spec.clip.temporal_attention == "st_mix" and again.frame_layout is not None
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.encode_frames(frames), mixed.encode_frames(frames))


def test_st_mix_needs_a_vit():
    resnet = ["clip.pretrained=null", "clip.temporal_attention=st_mix", "clip.custom={embed_dim: 32, "
              "vision_cfg: {layers: [1, 1, 1, 1], width: 16, image_size: 32}, "
              "text_cfg: {layers: 1, width: 32, heads: 2, context_length: 77, vocab_size: 49408}}"]
    with pytest.raises(ConfigError, match="st_mix needs a ViT image tower"):
        build_video_text_model(load(None, resnet))
