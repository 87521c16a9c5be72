"""How fast can the tiny stage-1 model learn the demo's attributes? Ablations in one process.

    python -m benchmarks.demo_stage1_probe --data vcap_demo/data --frames 4 --steps 600 [key=value ...]

Trains the real ``VideoTextModel`` with the real ``info_nce`` on the demo dataset, with every
clip decoded once into memory (16 frames at the model's size) so that runs compare models and
optimisation, not data loading; TSN-sampled frames, one random caption per video, AdamW + cosine as
``vcap pretrain``. Every ``--eval-every`` steps, on the test split:

* ``R@1``: text-to-video R@1 over the test captions;
* ``canon``: for each test video the nearest of 210 canonical captions ("a red star moves left"),
  and the share whose colour / shape / motion is right;
* linear probes (colour, shape, motion) trained on the train split, scored on test, from the
  pooled video embedding (``pool``), the per-frame sequence stage 2 would cache (``seq``,
  flattened) and the text embeddings of the captions (``text``).

Trailing ``key=value`` overrides apply to caption/demo/tiny_demo.yaml (e.g. pretrain.head_input_norm=false,
``clip.custom.vision_cfg={layers: 3, width: 128, head_width: 32, patch_size: 8, image_size: 64}``).
BENCHMARKS.md ("The tiny demo model") lists what this measured.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402

from caption.config import load  # noqa: E402
from caption.demo import CONFIG_PATH  # noqa: E402
from caption.demo import data as demo_data  # noqa: E402
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer  # noqa: E402
from retrieval_pretrain.modeling.loss import info_nce  # noqa: E402
from retrieval_pretrain.modeling.parts import build_video_text_model as build_model  # noqa: E402
from retrieval_pretrain.modeling.parts import freeze_parameters  # noqa: E402
from retrieval_pretrain.reading.annotations import load_annotations  # noqa: E402
from retrieval_pretrain.reading.transforms import preprocess_frames  # noqa: E402
from retrieval_pretrain.reading.video import read_frames, sample_indices  # noqa: E402
from retrieval_pretrain.stage1.train import _optimizer  # noqa: E402

KEYS = (("colour", demo_data.COLOURS), ("shape", demo_data.SHAPES), ("motion", demo_data.MOTIONS))
VERB = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down", "grow": "grows",
        "shrink": "shrinks", "still": "stays still"}


def probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy of a linear softmax classifier on standardised features (300 Adam steps)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(a.shape[1], int(train_y.max()) + 1, requires_grad=True)
    bias = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(a @ w + bias, train_y) + 1e-3 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return round(((b @ w + bias).argmax(1) == test_y).float().mean().item(), 3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a folder written by caption.demo.data.generate_dataset")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    data = Path(args.data)
    cfg = load(CONFIG_PATH, [f"data.annotations={data / 'annotations.jsonl'}",
                                                     f"data.videos={data}", f"video.num_frames={args.frames}",
                                                     *args.overrides])
    model, tok = build_model(cfg), build_tokenizer(cfg)
    size = model.image_size
    ann, attrs = load_annotations(cfg.data), demo_data.load_attributes(data)

    def decode(split: str) -> tuple[list, torch.Tensor]:
        entries = ann.split(split)
        clips = [preprocess_frames(read_frames(e.path, 16, "uniform").frames, size, model.image_mean, model.image_std)
                 for e in entries]
        return entries, torch.stack(clips)  # (N, 16, 3, S, S)

    t0 = time.perf_counter()
    train, x_train = decode("train")
    test, x_test = decode("test")
    print(f"decoded {tuple(x_train.shape)} + {tuple(x_test.shape)} in {time.perf_counter() - t0:.1f} s", flush=True)
    labels = {k: (torch.tensor([v.index(attrs[e.video_id][k]) for e in train]),
                  torch.tensor([v.index(attrs[e.video_id][k]) for e in test])) for k, v in KEYS}
    combos = demo_data.all_combinations()
    canon_tokens = tok([f"a {c} {s} {VERB[m]}" for c, s, m in combos])
    uniform = torch.as_tensor(sample_indices(16, args.frames, "uniform")[0])

    @torch.no_grad()
    def embed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = torch.cat([model.encode_frames(x[i:i + 64][:, uniform]) for i in range(0, len(x), 64)])
        return model.pool(seq), seq.flatten(1)

    def evaluate() -> dict:
        model.eval()
        pooled_tr, seq_tr = embed(x_train)
        pooled_te, seq_te = embed(x_test)
        with torch.no_grad():
            caps = [(c, i) for i, e in enumerate(test) for c in e.captions]
            text_te = model.encode_text(tok([c for c, _ in caps]))
            r1 = ((text_te @ pooled_te.T).argmax(1) == torch.tensor([i for _, i in caps])).float().mean().item()
            best = (pooled_te @ model.encode_text(canon_tokens).T).argmax(1)
            train_caps = [(c, e) for e in train for c in e.captions][::3]
            text_tr = torch.cat([model.encode_text(tok([c for c, _ in train_caps[i:i + 256]]))
                                 for i in range(0, len(train_caps), 256)])
        canon = {k: round(sum(combos[b][j] == attrs[e.video_id][k] for b, e in zip(best.tolist(), test)) / len(test), 3)
                 for j, (k, _) in enumerate(KEYS)}
        probes = {}
        for name, (a, b) in {"pool": (pooled_tr, pooled_te), "seq": (seq_tr, seq_te)}.items():
            probes[name] = [probe(a, labels[k][0], b, labels[k][1]) for k, _ in KEYS]
        text_y = {k: (torch.tensor([v.index(attrs[e.video_id][k]) for _, e in train_caps]),
                      torch.tensor([v.index(attrs[test[i].video_id][k]) for _, i in caps])) for k, v in KEYS}
        probes["text"] = [probe(text_tr, text_y[k][0], text_te, text_y[k][1]) for k, _ in KEYS]
        model.train()
        return {"R@1": round(r1, 3), "canon": canon, "probes (colour, shape, motion)": probes}

    freeze_parameters(model, cfg.pretrain.freeze)
    opt = _optimizer(model, cfg)  # vcap pretrain's optimizer: pretrain.lr / clip_lr / weight_decay / freeze
    sched = get_cosine_schedule_with_warmup(opt, int(0.05 * args.steps), args.steps)
    rng = np.random.default_rng(0)
    order, pos = rng.permutation(len(train)), 0
    t0 = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > len(train):
            order, pos = rng.permutation(len(train)), 0
        batch = order[pos:pos + args.batch_size]
        pos += args.batch_size
        frames = torch.stack([x_train[i][torch.as_tensor(sample_indices(16, args.frames, "tsn", rng=rng)[0])]
                              for i in batch])  # (B, T, 3, S, S)
        captions = [train[i].captions[rng.integers(len(train[i].captions))] for i in batch]
        out = model(frames=frames, mask=None, tokens=tok(captions))
        loss = info_nce(out["video"], out["text"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % args.eval_every == 0 or step == args.steps:
            train_s = time.perf_counter() - t0
            print(f"step {step}: loss {loss.item():.3f}, {train_s:.0f} s training; {evaluate()}", flush=True)
            t0 = time.perf_counter() - train_s


if __name__ == "__main__":
    main()
