"""The stand-in for pretrained CLIP weights (``benchmarks.standin``): its palette and pictures, and a
short real training whose checkpoint the toolkit loads strictly, as it would a pretrained CLIP file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import standin
from caption.demo.captions import COLOURS, SHAPES, caption_attributes


def test_extended_palette_holds_the_demo_palette_and_extras() -> None:
    assert standin.STANDIN_COLOURS[: len(COLOURS)] == COLOURS
    assert standin.STANDIN_SHAPES[: len(SHAPES)] == SHAPES
    assert set(standin.EXTRA_COLOURS) and not set(standin.EXTRA_COLOURS) & set(COLOURS)
    assert set(standin.EXTRA_SHAPES) and not set(standin.EXTRA_SHAPES) & set(SHAPES)
    assert len(standin.all_pairs()) == len(standin.STANDIN_COLOURS) * len(standin.STANDIN_SHAPES)


def test_captions_name_colour_or_shape_and_never_a_motion() -> None:
    rng = np.random.default_rng(0)
    for colour, shape in standin.all_pairs():
        for _ in range(8):
            caption = standin.make_caption(colour, shape, "slate", rng)
            named = caption_attributes(caption)  # the demo's own caption parser
            assert named["motion"] is None, caption
            assert colour in caption.split() or shape in caption.split(), caption
            if colour in COLOURS and colour in caption.split():
                assert named["colour"] == colour, caption


def test_where_captions_say_the_stills_place_and_size_and_fit_the_text_tower() -> None:
    """``where``: a caption's place phrase is the side the object is nearest to and its size word is
    which half of SIZE_RANGE it is in; about half the captions have each; none passes 16 tokens."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    rng = np.random.default_rng(5)
    places = sizes = 0
    low, high = standin.SIZE_RANGE
    for i in range(400):
        colour, shape = standin.all_pairs()[i % 90]
        image, background, traj = standin.render_still(colour, shape, rng)
        caption = standin.make_caption(colour, shape, background, rng, traj)
        cx, cy, d = float(traj.cx[0]), float(traj.cy[0]), float(traj.size[0])
        for phrase in ("on the left", "on the right", "at the top", "at the bottom"):
            if caption.endswith(phrase):
                places += 1
                horizontal = abs(cx - 0.5) >= abs(cy - 0.5)
                want = (("on the left" if cx < 0.5 else "on the right") if horizontal
                        else ("at the top" if cy < 0.5 else "at the bottom"))
                assert phrase == want, (caption, cx, cy)
        words = caption.split()
        for word in ("small", "big"):
            if word in words:
                sizes += 1
                assert word == ("small" if d < (low + high) / 2 else "big"), (caption, d)
        assert len(tok.encode(caption)) + 2 <= 16, caption
        assert colour in words or shape in words, caption
    assert 150 < places < 250 and 150 < sizes < 250, (places, sizes)


def test_extra_shape_masks_are_nonempty_and_distinct() -> None:
    masks = {s: standin.shape_mask(s, 64) for s in standin.STANDIN_SHAPES}
    for shape in standin.EXTRA_SHAPES:
        cover = masks[shape].mean()
        assert 0.2 < cover < 0.8, (shape, cover)
        for other, mask in masks.items():
            if other != shape:  # pixels on which the two shapes disagree
                assert (mask != masks[shape]).mean() > 0.05, (shape, other)


def test_stills_are_deterministic_for_a_seed_and_vary_across_seeds() -> None:
    pairs = [("pink", "heart"), ("red", "star"), ("cyan", "ring"), ("blue", "hexagon")]
    a, caps_a = standin.still_batch(pairs, np.random.default_rng([3, 0]))
    b, caps_b = standin.still_batch(pairs, np.random.default_rng([3, 0]))
    c, _ = standin.still_batch(pairs, np.random.default_rng([4, 0]))
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and caps_a == caps_b
    assert not np.array_equal(a, c)
    for (colour, shape), caption in zip(pairs, caps_a):  # each caption names the colour, the shape or both
        assert colour in caption or shape in caption


def test_a_demo_shape_still_is_the_demo_renderer_s_pixels() -> None:
    from caption.demo.render import Trajectory, render_background, render_frames

    rng = np.random.default_rng(0)
    bg = render_background("slate", 64, rng)
    traj = Trajectory(np.array([0.4]), np.array([0.6]), np.array([0.3]))
    rgb = np.array([225.0, 30.0, 30.0])
    assert np.array_equal(standin.render_object("star", rgb, bg, traj), render_frames("star", rgb, bg, traj))


def test_a_short_training_writes_a_checkpoint_the_toolkit_loads_strictly(tmp_path) -> None:
    from safetensors.torch import load_file

    from caption.config import load
    from caption.demo.run import CONFIG_PATH
    from retrieval_pretrain.foundation.errors import WeightsUnavailableError
    from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained
    from retrieval_pretrain.modeling.parts import build_video_text_model

    path = standin.train_standin(tmp_path / "standin.safetensors", steps=3, batch_size=16, progress=False)
    saved = load_file(str(path))
    again = load_file(str(standin.train_standin(tmp_path / "again.safetensors", steps=3, batch_size=16,
                                                progress=False)))
    assert all(torch.equal(saved[k], again[k]) for k in saved)  # seeded

    cfg = load(CONFIG_PATH, [f"clip.pretrained={path}", "pretrain.head=meanP", "pretrain.head_input_norm=false"])
    net = build_video_text_model(cfg)
    clip_state = net.clip.state_dict()
    assert set(clip_state) == set(saved)
    assert all(torch.equal(clip_state[k], saved[k]) for k in saved)
    fresh = build_video_text_model(load(CONFIG_PATH, ["pretrain.head=meanP", "pretrain.head_input_norm=false"]))
    assert not torch.equal(fresh.clip.visual.attnpool.c_proj.weight, net.clip.visual.attnpool.c_proj.weight)

    folder = save_pretrained(net, tmp_path / "stage1")
    loaded, _ = from_pretrained(folder)
    assert all(torch.equal(loaded.clip.state_dict()[k], saved[k]) for k in saved)

    # strict: the same file under another architecture is refused, naming the file
    other = load(CONFIG_PATH, [f"clip.pretrained={path}", "clip.custom.embed_dim=64"])
    with pytest.raises(WeightsUnavailableError, match="standin.safetensors"):
        build_video_text_model(other)


def test_a_pt_checkpoint_loads_too(tmp_path) -> None:
    from caption.config import load
    from caption.demo.run import CONFIG_PATH
    from retrieval_pretrain.modeling.backbones import build_clip

    path = standin.train_standin(tmp_path / "standin.pt", steps=1, batch_size=8, progress=False)
    state = torch.load(path, weights_only=True)
    clip, _, _, _ = build_clip(load(CONFIG_PATH, [f"clip.pretrained={path}"]).clip)
    assert all(torch.equal(clip.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("argv, said", [
    (["--output", "{tmp}"], "a folder"),
    (["--output", "{tmp}/no/such/x.safetensors"], "does not exist"),
    (["--output", "{tmp}/x.safetensors", "--steps", "0"], "--steps 0"),
    (["--output", "{tmp}/x.safetensors", "--batch-size", "1"], "--batch-size 1"),
])
def test_the_command_refuses_bad_arguments_before_training(tmp_path, capsys, argv, said) -> None:
    with pytest.raises(SystemExit) as e:
        standin.main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not list(tmp_path.glob("*.safetensors"))
