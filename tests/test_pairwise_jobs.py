"""The jobs that use a stage-1 model directly - zero-shot recognition (``vcap classify`` /
``vcap eval-classify``) and search (``vcap index`` / ``vcap search``) - with a pairwise model
(X-CLIP: its text side is prompted by each video), on a tiny random ``XCLIPModel`` and real mp4 files.

References: transformers' own ``XCLIPModel.forward`` ``logits_per_video`` (X-CLIP's zero-shot
recipe: the softmax of those logits over the label prompts) for recognition, and retrieval
evaluation's pairwise path (``encode.video_states`` + ``encode.pair_score_matrix``) for search.
An embedding model (open_clip) is checked to score exactly as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_xclip import XCLIP, T

from caption.config import load
from retrieval_pretrain.foundation.errors import FeatureMismatchError, FeatureStoreError
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained
from retrieval_pretrain.modeling.parts import build_video_text_model
from retrieval_pretrain.modeling.xclip import text_attention_mask
from retrieval_pretrain.stage1.data import Preprocess, VideoClipDataset, collate_videos
from retrieval_pretrain.stage1.encode import embed_videos, pair_score_matrix, video_states
from retrieval_pretrain.stage1.evaluate import embed_texts
from vcap_toolkit.cli.main import main
from vcap_toolkit.jobs.recognition import (
    class_embeddings,
    class_logits,
    class_probabilities,
    classify_videos,
    evaluate_classification,
    model_scale,
)
from vcap_toolkit.jobs.search import PAIRWISE, VideoIndex, build_index, rank, rank_pairs, search

CPU = torch.device("cpu")
LABELS = ["moving up", "moving down", "moving left", "moving right", "a red square", "a blue circle"]
OPEN_CLIP_TINY = [f"video.num_frames={T}", "clip.pretrained=null", "clip.custom={embed_dim: 32, vision_cfg: "
                  "{layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}, text_cfg: "
                  "{layers: 1, width: 32, heads: 2, context_length: 77, vocab_size: 49408}}"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the module's torch ops on one thread


def _folder(overrides: list[str], path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_video_text_model(load(None, overrides)).eval()
    return save_pretrained(model, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A tiny random X-CLIP model folder, a tiny random open_clip one, and 10 generated mp4 clips
    of 8 frames (more than the 4 taken: every clip is fully real)."""
    from caption.demo import data as demo_data

    root = tmp_path_factory.mktemp("pairwise_jobs")
    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=2, frames=8, size=64, seed=7, captions_per_video=1)
    ann = demo_data.generate_dataset(root / "clips", spec, progress=False, workers=1)
    videos = sorted(str(ann.parent / json.loads(x)["video"]) for x in ann.read_text().splitlines())
    return _folder(XCLIP, root / "xclip", 0), _folder(OPEN_CLIP_TINY, root / "clip", 0), videos


def _frames(net, spec, videos: list[str]) -> torch.Tensor:
    """(V, T, 3, S, S) exactly the frames the jobs feed the model."""
    pre = Preprocess.for_model(spec)
    ds = VideoClipDataset([(v, v) for v in videos], pre, "uniform")
    batch = collate_videos([ds[i] for i in range(len(ds))])
    assert batch["video_ids"] == videos and bool(batch["mask"].all())
    return batch["frames"]


# ----------------------------------------------------------------------------- recognition


def test_classify_probabilities_are_xclip_forward_softmax(world):
    """One template: the probabilities ``vcap classify`` reports are the softmax of transformers'
    ``XCLIPModel.forward(...).logits_per_video`` over the label prompts."""
    net, spec = from_pretrained(world[0])
    videos = world[2]
    assert scores_pairwise(net)
    ranked, failed = classify_videos(net, spec, [(v, Path(v)) for v in videos], LABELS, ["{}"], CPU,
                                     top=len(LABELS), batch_size=3)
    assert failed == {} and list(ranked) == videos
    tokens = tokenizer_from_spec(spec)(LABELS)
    with torch.no_grad():
        ref = net.clip(input_ids=tokens, pixel_values=_frames(net, spec, videos),
                       attention_mask=text_attention_mask(tokens)).logits_per_video.softmax(dim=1)  # (V, C)
    got = torch.tensor([[dict(ranked[v])[label] for label in LABELS] for v in videos])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert float((ref.max(dim=1).values - ref.min(dim=1).values).min()) > 1e-3  # not a flat, uninformative check


def test_templates_average_xclips_logits_and_prompts_matter(world):
    """Several templates: each class's logit is the mean of ``logits_per_video`` over its prompts
    (each prompt conditioned on the video, as X-CLIP scores it). Unlike the prompt-free dot product."""
    net, spec = from_pretrained(world[0])
    videos = world[2][:4]
    templates = ["a video of {}.", "{}"]
    done, logits, failures = class_logits(net, spec, [(v, v) for v in videos], LABELS, templates, CPU, batch_size=4)
    assert done == videos and failures == [] and logits.shape == (4, len(LABELS))
    tokenize = tokenizer_from_spec(spec)
    tokens = tokenize([t.replace("{}", label) for label in LABELS for t in templates])
    frames = _frames(net, spec, videos)
    with torch.no_grad():
        each = net.clip(input_ids=tokens, pixel_values=frames, attention_mask=text_attention_mask(tokens)).logits_per_video
        torch.testing.assert_close(logits, each.view(4, len(LABELS), 2).mean(dim=-1), rtol=0, atol=1e-5)
        plain = model_scale(net) * net.encode_video(frames) @ class_embeddings(net, tokenize, LABELS, templates, CPU).T
    assert not torch.allclose(logits, plain, atol=1e-3)


def test_an_embedding_model_scores_as_before(world):
    """open_clip: the logits are ``class_probabilities``' expression on the ensembled class embeddings, bit for bit."""
    net, spec = from_pretrained(world[1])
    videos = world[2][:4]
    assert not scores_pairwise(net)
    done, logits, _ = class_logits(net, spec, [(v, v) for v in videos], LABELS, ["a {}", "{}"], CPU)
    pre = Preprocess(T, net.image_size, net.image_mean, net.image_std)
    emb, _ = embed_videos(net, [(v, v) for v in videos], pre, CPU, 8, 0)
    classes = class_embeddings(net, tokenizer_from_spec(spec), LABELS, ["a {}", "{}"], CPU)
    want = class_probabilities(torch.stack([emb[v] for v in videos]), classes, model_scale(net))
    assert done == videos and torch.equal(torch.softmax(logits, dim=-1), want)


def test_eval_classify_with_xclip_uses_its_pair_scores(world, tmp_path):
    """``evaluate_classification`` on a labelled split: its top-1 is that of X-CLIP's own logits,
    over all labels and among the novel ones."""
    net, spec = from_pretrained(world[0])
    videos = world[2]
    truth = {v: LABELS[i % 4] for i, v in enumerate(videos)}
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps({"video": v, "label": truth[v], "split": "test"}) + "\n"
                                                   for v in videos))
    (tmp_path / "novel.txt").write_text("moving left\nmoving right\n")
    cfg = load(None, [*XCLIP, "data.format=labels", f"data.annotations={tmp_path / 'labels.jsonl'}", "data.videos=/",
                      f"data.novel_labels={tmp_path / 'novel.txt'}", "run.num_workers=0"])
    metrics = evaluate_classification(net, spec, cfg, split="test", templates=["{}"], output=tmp_path / "out")
    labels = sorted(set(truth.values()))
    tokens = tokenizer_from_spec(spec)(labels)
    with torch.no_grad():
        ref = net.clip(input_ids=tokens, pixel_values=_frames(net, spec, videos),
                       attention_mask=text_attention_mask(tokens)).logits_per_video  # (V, C)
    truth_ix = torch.tensor([labels.index(truth[v]) for v in videos])
    assert metrics["videos"] == len(videos) and metrics["labels"] == 4
    assert metrics["top1"] == round(float((ref.argmax(1) == truth_ix).float().mean()), 5)
    novel = [i for i, v in enumerate(videos) if truth[v] in ("moving left", "moving right")]
    cols = [labels.index("moving left"), labels.index("moving right")]
    want = (ref[novel][:, cols].argmax(1) == torch.tensor([cols.index(int(truth_ix[i])) for i in novel])).float().mean()
    assert metrics["novel"]["top1"] == round(float(want), 5)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics


# ----------------------------------------------------------------------------- search


def _reference_scores(model_dir: Path, videos: list[str], query: str, fp16_states: bool) -> torch.Tensor:
    """(V,) retrieval evaluation's pairwise scores of ``query`` with each video (optionally from
    states rounded to fp16, as the index stores them)."""
    net, spec = from_pretrained(model_dir)
    pre = Preprocess(T, net.image_size, net.image_mean, net.image_std)
    states, _ = video_states(net, [(v, Path(v)) for v in videos], pre, CPU, 4, 0)
    rows = [{k: t.half().float() if fp16_states else t for k, t in states[v].items()} for v in videos]
    text = embed_texts(net, tokenizer_from_spec(spec), [query], CPU, encode=net.encode_text_state)
    return pair_score_matrix(net, rows, text, CPU)[:, 0]


def test_search_ranks_by_xclips_pair_scores(world, tmp_path, capsys):
    model_dir, _, videos = world
    report = build_index(model_dir, videos, tmp_path / "idx", CPU, batch_size=3, shard_size=4)
    assert (report["indexed"], report["failed"]) == (len(videos), 0)
    index = VideoIndex(tmp_path / "idx")
    meta = index.meta()
    assert (meta["format"], meta["scoring"], index.scoring()) == (2, PAIRWISE, PAIRWISE)
    assert meta["state"] == {"video": [32], "patches": [4, 32]}  # 32 px / 16 px patches: 4 patch tokens
    shards = sorted(p.name for p in index.shards.iterdir())
    assert shards == [f"00000{i}.{part}" for i in range(3) for part in ("json", "npy", "patches.npy")]
    for query in ("moving up", "a blue circle"):
        exact = _reference_scores(model_dir, videos, query, fp16_states=True)
        order = exact.argsort(descending=True).tolist()
        got = search(tmp_path / "idx", CPU, text=query, top=len(videos))
        assert [p for p, _ in got] == [videos[i] for i in order]
        np.testing.assert_allclose([s for _, s in got], exact[order].numpy(), atol=1e-5)
        full = _reference_scores(model_dir, videos, query, fp16_states=False)  # fp16 storage costs < 5e-3
        np.testing.assert_allclose([s for _, s in got], full[order].numpy(), atol=5e-3)
    net, spec = from_pretrained(model_dir)
    text = net.encode_text_state(tokenizer_from_spec(spec)(["moving up"]))
    exact = _reference_scores(model_dir, videos, "moving up", fp16_states=True)
    for block in (1, 3, 1024):  # rows across shards, ragged blocks
        ranked = rank_pairs(net, index, text, 3, CPU, videos_per_block=block)
        assert [r for r, _ in ranked] == exact.argsort(descending=True)[:3].tolist()
    # the command: the same ranking, and a sentence's score is not the prompt-free cosine
    assert main(["search", str(tmp_path / "idx"), "moving up", "--top", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p for p, _ in result["results"]] == [p for p, _ in search(tmp_path / "idx", CPU, text="moving up", top=3)]
    plain = rank(index.embeddings(), net.encode_text(tokenizer_from_spec(spec)(["moving up"]))[0].detach().numpy(), 3)
    assert [s for _, s in plain] != pytest.approx([s for _, s in result["results"]], abs=1e-3)


def test_search_by_example_clip_is_pooled_embedding_cosine(world, tmp_path):
    model_dir, _, videos = world
    build_index(model_dir, videos, tmp_path / "idx", CPU, batch_size=4)
    got = search(tmp_path / "idx", CPU, video=Path(videos[3]), top=3)
    assert got[0][0] == videos[3] and got[0][1] == pytest.approx(1.0, abs=2e-3)
    emb = VideoIndex(tmp_path / "idx").embeddings()
    net, spec = from_pretrained(model_dir)
    with torch.no_grad():
        pooled = net.encode_video(_frames(net, spec, [videos[3]]))[0]  # X-CLIP's get_video_features, normalised
    want = rank(emb, pooled.numpy(), 3)
    assert [videos[r] for r, _ in want] == [p for p, _ in got]


def test_a_rerun_and_reopen_keep_the_pairwise_index(world, tmp_path):
    model_dir, _, videos = world
    first = build_index(model_dir, videos[:-3], tmp_path / "idx", CPU, batch_size=4, shard_size=3)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "idx" / "shards").iterdir()}
    again = build_index(model_dir, videos, tmp_path / "idx", CPU, batch_size=4, shard_size=3)
    assert (first["indexed"], again["done_before"], again["indexed"]) == (len(videos) - 3, len(videos) - 3, 3)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing rewritten
    one = build_index(model_dir, videos, tmp_path / "one", CPU, batch_size=5)
    a, b = VideoIndex(tmp_path / "idx"), VideoIndex(tmp_path / "one")
    assert a.paths() == b.paths() == videos
    blocks_a = [blk for blk in a.state_blocks()]
    joined = {k: np.concatenate([blk[k] for blk in blocks_a]) for k in blocks_a[0]}
    [whole] = list(b.state_blocks())
    for k in ("video", "patches"):
        np.testing.assert_allclose(joined[k].astype(np.float32), whole[k].astype(np.float32), atol=2e-3)
    assert one["indexed"] == len(videos)
    for query in ("moving left", "a red square"):  # reopened: both indexes rank alike
        ra, rb = (search(tmp_path / name, CPU, text=query, top=5) for name in ("idx", "one"))
        assert [p for p, _ in ra] == [p for p, _ in rb]
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], atol=5e-3)


def test_a_changed_video_replaces_its_state_rows(world, tmp_path):
    model_dir, _, videos = world
    work = tmp_path / "v"
    work.mkdir()
    mine = [str(work / f"{i}.mp4") for i in range(3)]
    for src, dst in zip(videos, mine):
        shutil.copy(src, dst)
    build_index(model_dir, mine, tmp_path / "idx", CPU)
    shutil.copy(videos[5], mine[0])  # another clip under the first one's name
    assert build_index(model_dir, mine, tmp_path / "idx", CPU)["changed"] == 1
    index = VideoIndex(tmp_path / "idx")
    assert index.paths() == [mine[1], mine[2], mine[0]]  # the changed one by its newest row
    [old, new] = list(index.state_blocks())
    assert len(old["patches"]) == 2 and len(new["patches"]) == 1
    exact = _reference_scores(model_dir, [videos[1], videos[2], videos[5]], "moving up", fp16_states=True)
    got = dict(search(tmp_path / "idx", CPU, text="moving up", top=3))
    np.testing.assert_allclose([got[p] for p in index.paths()], exact.numpy(), atol=1e-5)


def test_the_wrong_kind_of_index_is_refused(world, tmp_path):
    """An index of embeddings for a pairwise model (as an earlier vcap wrote for X-CLIP) is refused
    by search and by a rerun; so is a pairwise index whose model scores by embedding; a newer
    format is named; an embedding model's index is written exactly as before."""
    xclip_dir, clip_dir, videos = world
    build_index(xclip_dir, videos[:3], tmp_path / "old", CPU)
    meta_path = tmp_path / "old" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("format", "scoring", "state"):
        meta.pop(key)
    meta_path.write_text(json.dumps(meta))
    for p in (tmp_path / "old" / "shards").glob("*.patches.npy"):
        p.unlink()
    with pytest.raises(FeatureMismatchError, match="index of video embeddings .* scores pairs"):
        search(tmp_path / "old", CPU, text="moving up")
    with pytest.raises(FeatureMismatchError, match="index of video embeddings .* needs pairwise video states"):
        build_index(xclip_dir, videos, tmp_path / "old", CPU)

    report = build_index(clip_dir, videos[:3], tmp_path / "emb", CPU)
    assert report["indexed"] == 3
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    assert {"dim", "dtype", "model", "model_fingerprint", "num_frames", "sampling", "shards"} <= set(meta)
    assert "format" not in meta and "scoring" not in meta  # an embedding index is written as format 1
    assert sorted(p.name for p in (tmp_path / "emb" / "shards").iterdir()) == ["000000.json", "000000.npy"]
    assert len(search(tmp_path / "emb", CPU, text="moving up", top=2)) == 2
    (tmp_path / "emb" / "meta.json").write_text(json.dumps({**meta, "format": 2, "scoring": PAIRWISE}))
    with pytest.raises(FeatureMismatchError, match="pairwise video states .* is an embedding model"):
        search(tmp_path / "emb", CPU, text="moving up")
    (tmp_path / "emb" / "meta.json").write_text(json.dumps({**meta, "format": 4}))  # 3 is moments (issue 27)
    with pytest.raises(FeatureStoreError, match="index format 4, newer than"):
        search(tmp_path / "emb", CPU, text="moving up")


def test_a_missing_state_file_is_named(world, tmp_path):
    model_dir, _, videos = world
    build_index(model_dir, videos[:2], tmp_path / "idx", CPU)
    (tmp_path / "idx" / "shards" / "000000.patches.npy").unlink()
    with pytest.raises(FeatureStoreError, match=r"000000\.patches\.npy: not a readable index shard"):
        search(tmp_path / "idx", CPU, text="moving up")
