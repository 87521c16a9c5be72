"""Zero-shot recognition (``vcap classify``): labels and templates, prompt ensembling, and the command
on a tiny stage-1 model trained with ActionCLIP's loss on label prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retrieval_pretrain.foundation.errors import DatasetError
from vcap_toolkit.cli.main import main
from vcap_toolkit.jobs.recognition import TEMPLATES, class_embeddings, read_labels, read_templates


def test_labels_from_a_file_a_label_map_or_a_list(tmp_path, shared_data):
    k400 = read_labels(str(shared_data / "videos" / "mmaction2" / "label_map_k400.txt"))
    assert len(k400) == 400 and k400[0] == "abseiling" and "arm wrestling" in k400
    (tmp_path / "l.txt").write_text("# motions\n0 walking\n1, running\n\njumping\n")
    assert read_labels(str(tmp_path / "l.txt")) == ["walking", "running", "jumping"]
    assert read_labels("left, right ,up") == ["left", "right", "up"]
    (tmp_path / "dup.txt").write_text("left\nright\nleft\n")
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'dup.txt'}:3: label 'left' repeats {tmp_path / 'dup.txt'}:1"):
        read_labels(str(tmp_path / "dup.txt"))
    with pytest.raises(DatasetError, match="no labels"):
        read_labels(" , ")
    with pytest.raises(DatasetError, match="exactly once"):
        read_templates(["a video of"])
    for bad in ("a {} {x}", "a {} {", "a {}}"):
        with pytest.raises(DatasetError, match="no other brace"):
            read_templates([bad])
    for missing in (str(tmp_path / "no_labels.txt"), str(tmp_path)):
        with pytest.raises(DatasetError, match="not a label file"):
            read_labels(missing)
    (tmp_path / "bom.txt").write_text("\ufeffcircle\nsquare\n", encoding="utf-8")
    assert read_labels(str(tmp_path / "bom.txt")) == ["circle", "square"]
    assert read_templates(None) == TEMPLATES and len(TEMPLATES) == 16


def test_a_class_is_the_normalised_mean_of_its_normalised_templates(motion_model):
    from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
    from retrieval_pretrain.modeling.model_folder import from_pretrained

    net, spec = from_pretrained(motion_model[0])
    tokenize, cpu = tokenizer_from_spec(spec), torch.device("cpu")
    templates = ["a {}", "the {} video", "{}"]
    classes = class_embeddings(net, tokenize, ["moving up", "moving left"], templates, cpu)  # (2, D)
    with torch.no_grad():
        for row, label in zip(classes, ["moving up", "moving left"]):
            each = torch.nn.functional.normalize(net.encode_text(tokenize([t.format(label) for t in templates])), dim=-1)
            torch.testing.assert_close(row, torch.nn.functional.normalize(each.mean(0), dim=-1))
    assert torch.allclose(classes.norm(dim=-1), torch.ones(2)) and not torch.allclose(classes[0], classes[1])


def test_classify_names_the_motion_far_above_chance(motion_model, tmp_path, capsys):
    model, truth = motion_model
    labels = sorted(set(truth.values()))
    folder = Path(next(iter(truth))).parent
    code = main(["classify", str(folder), "run.num_workers=0", "--model", str(model), "--labels", ",".join(labels), "--template", "{}",
                 "--top", "2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["predictions"]) == set(truth) and result["failed"] == {}
    top1 = {video: ranked[0][0] for video, ranked in result["predictions"].items()}
    accuracy = sum(top1[v] == truth[v] for v in truth) / len(truth)
    chance = 1 / len(labels)
    assert len(labels) >= 4 and accuracy >= 3 * chance, (accuracy, chance, top1)
    for ranked in result["predictions"].values():
        assert len(ranked) == 2 and 0 < ranked[1][1] <= ranked[0][1] <= 1


def test_classify_names_unreadable_videos_and_bad_labels(motion_model, tmp_path, capsys):
    model, truth = motion_model
    good = next(iter(truth))
    (tmp_path / "bad.mp4").write_text("not a video")
    assert main(["classify", good, str(tmp_path / "bad.mp4"), "--model", str(model), "--labels", "a,b",
                 "run.num_workers=0"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(good + "\t") and f"warning: not classified: {tmp_path / 'bad.mp4'}" in err
    (tmp_path / "labels.txt").write_text("a\na\n")
    assert main(["classify", good, "--model", str(model), "--labels", str(tmp_path / "labels.txt")]) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"vcap: dataset error: {tmp_path / 'labels.txt'}:2")


def test_plain_clip_from_the_config_and_unknown_model_names(motion_model, tmp_path, capsys):
    """Without --model, the config's clip section is a plain CLIP with mean-pooled frames (here a
    random tiny architecture: the probabilities are meaningless but complete); a --model that is
    neither a folder nor an open_clip name is a model folder error."""
    good = next(iter(motion_model[1]))
    tiny = ["run.num_workers=0", "video.num_frames=4", "clip.pretrained=null", "clip.custom={embed_dim: 32, "
            "vision_cfg: {layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}, "
            "text_cfg: {layers: 1, width: 32, heads: 2, context_length: 77, vocab_size: 49408}}"]
    assert main(["classify", good, *tiny, "--labels", "up,down,left", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [ranked] = result["predictions"].values()
    assert [label for label, _ in ranked] and sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-4)
    assert main(["classify", good, "--model", "NoSuchNet-7", "--labels", "up,down"]) == 5
    assert "neither a model folder nor an open_clip model name" in capsys.readouterr().err
