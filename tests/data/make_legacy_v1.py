"""Makes ``tests/data/legacy_v1.tar.xz``: a stage-1 and a stage-2 model folder written by the release
before issue 24's layout (commit e20098f), four test clips, and what that release computed with
them (``expected.json``: stage-1 embeddings, the caption model's first-step logits, captions).
``tests/test_legacy_folders.py`` checks that today's code loads the folders and computes the same.

Run it with that release's tree, not this one (its module paths are the old ones):

    git worktree add /tmp/old e20098f
    cd /tmp/old && PYTHONPATH=/tmp/old OMP_NUM_THREADS=1 python /path/to/tests/data/make_legacy_v1.py /tmp/legacy
    cd /tmp/legacy && tar -cJf legacy_v1.tar.xz legacy_v1

The CLIP token embedding is built as zeros and frozen (the demo config freezes it anyway), so the
49,408-row table compresses away; every other weight is trained as usual (one epoch on 8 clips).
"""

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, "tests")  # the old tree's tests/demo_clips.py (this script runs there, see above)
torch.set_num_threads(1)

from demo_clips import make_clips  # noqa: E402

import retrieval_pretrain.parts as parts  # noqa: E402  (the old release's paths)
import retrieval_pretrain.train as train  # noqa: E402
from caption.cli import main  # noqa: E402
from caption.demo import CONFIG_PATH  # noqa: E402
from caption.pipeline import CaptionPipeline  # noqa: E402
from retrieval_pretrain.data import Preprocess  # noqa: E402
from retrieval_pretrain.encode import embed_videos, encode_video_batches  # noqa: E402
from retrieval_pretrain.model_folder import from_pretrained  # noqa: E402

TINY = ["video.num_frames=4", "pretrain.batch_size=4", "run.num_workers=0", "video.cache_frames=0",
        "clip.custom.vision_cfg={layers: 1, width: 32, head_width: 16, patch_size: 16, image_size: 32}",
        "clip.custom.text_cfg={context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 1}",
        "clip.custom.embed_dim=32", "pretrain.head_layers=1", "run.device=cpu", "pretrain.epochs=1",
        "caption.epochs=1", "caption.batch_size=4", "caption.vocab_size=40", "caption.hidden_size=32",
        "caption.num_heads=2", "caption.ffn_size=64", "decode.max_new_tokens=6", "decode.num_beams=2",
        "caption.val_max_videos=0", "decode.batch_size=4", "caption.eval_batch_size=4",
        "pretrain.eval_batch_size=4"]


def zero_token_embedding(build):
    def wrapped(cfg):
        model = build(cfg)
        with torch.no_grad():
            model.clip.token_embedding.weight.zero_()
        return model
    return wrapped


def train_folders(work: Path) -> Path:
    parts.build_video_text_model = train.build_video_text_model = zero_token_embedding(parts.build_video_text_model)
    data = make_clips(work / "data", frames=8, num_test=4)
    args = ["--config", str(CONFIG_PATH), *TINY, f"data.annotations={data / 'annotations.jsonl'}", f"data.videos={data}"]
    assert main(["pretrain", *args, "--output", str(work / "s1")]) == 0
    assert main(["extract", "--model", str(work / "s1/model"), *args, "--output", str(work / "feats")]) in (0, None)
    assert main(["train", *args, "--features", str(work / "feats"), "--output", str(work / "s2")]) in (0, None)
    return data


def record(work: Path, data: Path) -> None:
    dst = work / "legacy_v1"
    (dst / "videos").mkdir(parents=True)
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    for r in test:
        shutil.copy(data / r["video"], dst / "videos" / Path(r["video"]).name)
    shutil.copytree(work / "s1/model", dst / "stage1_model")
    shutil.copytree(work / "s2/model", dst / "stage2_model")
    videos = [(Path(r["video"]).stem, dst / "videos" / Path(r["video"]).name) for r in test]
    cpu = torch.device("cpu")
    model, info = from_pretrained(dst / "stage1_model")
    pre = Preprocess(info["num_frames"], model.image_size, model.image_mean, model.image_std)
    emb, failed = embed_videos(model, videos, pre, cpu, 4, 0)
    assert not failed
    pipe = CaptionPipeline.from_pretrained(dst / "stage2_model", device="cpu")
    pre2 = Preprocess(pipe.tower_info["num_frames"], pipe.tower.image_size, pipe.tower.image_mean, pipe.tower.image_std)
    (ids, seq, mask, _), = list(encode_video_batches(pipe.tower, videos, pre2, cpu, 4, 0))
    with torch.no_grad():
        bos = torch.full((len(ids), 1), pipe.model.config.decoder_start_token_id)
        logits = pipe.model(frame_features=seq.float(), frame_mask=mask, decoder_input_ids=bos).logits[:, 0]
    captions = pipe.caption([p for _, p in videos], num_beams=2)
    expected = {"videos": [v for v, _ in videos],
                "stage1_embeddings": {v: emb[v].tolist() for v, _ in videos},
                "stage2_first_logits": {v: logits[i, :12].tolist() for i, v in enumerate(ids)},
                "stage2_logits_argmax": {v: int(logits[i].argmax()) for i, v in enumerate(ids)},
                "captions": {Path(p).stem: c for p, c in captions.items()},
                "made_by": "the release before issue 24 (commit e20098f), tests/data/make_legacy_v1.py"}
    (dst / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    record(out, train_folders(out))
