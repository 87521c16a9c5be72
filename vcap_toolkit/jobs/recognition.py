"""Zero-shot video recognition with a video-text model (ActionCLIP, Wang et al. 2021; X-CLIP, Ni et
al. 2022): each label becomes sentences through prompt templates, a class is the normalised mean of
its sentences' embeddings, and a video's class probabilities are the softmax of its similarities to
the classes at the model's logit scale.

A pairwise model (``model.PairwiseScorer``: X-CLIP) has no class embedding: its prompt generator
conditions each sentence on the video. Every label prompt (label x template) is encoded once into
its text state; per batch of videos the model scores every (video, prompt) pair
(``pair_scores``), and a class's score is the mean of its templates' scores - a mean of logits,
which with one template is exactly ``XCLIPModel.forward``'s ``logits_per_video`` over the label
prompts (transformers' zero-shot recipe: the softmax of those logits), and with several is the mean
of that matrix's columns per label. (The template-mean text state, prompted once, would be cheaper
but scores an average sentence X-CLIP never saw; it is not the model's own score of any prompt.)

The model is a stage-1 model folder, or a plain open_clip CLIP (the config's ``clip`` section: a
name + tag, a checkpoint file, or a from-scratch architecture) whose frame features are mean-pooled
(a ``meanP`` head): the zero-shot CLIP baseline of the papers.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import open_clip
import torch

from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import DatasetError, ModelFolderError
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import PairwiseScorer, scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained
from retrieval_pretrain.modeling.parts import StageOneModel, build_video_text_model
from retrieval_pretrain.modeling.spec import ModelSpec
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.label_formats import class_list, novel_labels
from retrieval_pretrain.reading.label_lists import TEMPLATES, read_labels, read_templates  # noqa: F401  (the job's vocabulary)
from retrieval_pretrain.stage1.config import RetrievalConfig
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import batch_pair_scores, embed_videos, encode_video_batches
from retrieval_pretrain.stage1.evaluate import embed_texts, split_entries

# A caption tokenizer: sentences -> token ids (B, context_length).
Tokenize = Callable[[list[str]], torch.Tensor]


@torch.no_grad()
def class_embeddings(model: StageOneModel, tokenize: Tokenize, labels: Sequence[str], templates: Sequence[str],
                     device: torch.device) -> torch.Tensor:
    """(C, D): per label, the L2-normalised mean of its templates' L2-normalised text embeddings."""
    sentences = [t.replace("{}", label) for label in labels for t in templates]
    emb = torch.cat([model.encode_text(tokenize(sentences[i:i + 256]).to(device)).float().cpu()
                     for i in range(0, len(sentences), 256)])  # (C * T, D), normalised by the model
    emb = torch.nn.functional.normalize(emb, dim=-1).view(len(labels), len(templates), -1)
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)


@torch.no_grad()
def class_text_states(model: PairwiseScorer, tokenize: Tokenize, labels: Sequence[str], templates: Sequence[str],
                      device: torch.device) -> torch.Tensor:
    """A pairwise model's ``encode_text_state`` of every label prompt, once: (C * T, ...) on the
    CPU, label-major (label 0's T templates first, as ``class_embeddings`` orders its sentences)."""
    sentences = [t.replace("{}", label) for label in labels for t in templates]
    return embed_texts(model, tokenize, sentences, device, encode=model.encode_text_state)


def pairwise_class_scores(model: PairwiseScorer, state: dict[str, torch.Tensor], prompts: torch.Tensor,
                          n_templates: int, device: torch.device) -> torch.Tensor:
    """(B, C): per video of the batch ``state`` (``encode_video_state``), each class's mean over its
    ``n_templates`` prompts (``prompts``: ``class_text_states``) of the model's pair score (a cosine)."""
    scores = batch_pair_scores(model, state, prompts, device)  # (B, C * T)
    return scores.view(scores.shape[0], -1, n_templates).mean(dim=-1)  # (B, C)


def class_logits(net: StageOneModel, spec: ModelSpec, videos: Sequence[tuple[str, Path]], labels: Sequence[str],
                 templates: Sequence[str], device: torch.device, batch_size: int = 8, num_workers: int = 0,
                 desc: str = "classify") -> tuple[list[str], torch.Tensor, list[tuple[str, str]]]:
    """Every readable video's logits over the classes, each video decoded and encoded once.

    An embedding model: ``logit_scale * video @ classes.T`` with the ensembled class embeddings
    (``class_embeddings``); a pairwise model: ``logit_scale`` times the template mean of its pair
    scores (``pairwise_class_scores``; see the module docstring).

    Returns:
        ``(video ids read, in the order of videos; (V, C) logits, rows in that order; failures as
        (path, reason))``. The softmax of a row (over all classes or any subset) gives probabilities.
    """
    tokenize, scale = tokenizer_from_spec(spec), model_scale(net)
    pre, method = Preprocess.for_model(spec), spec.eval_sampling
    if not scores_pairwise(net):
        classes = class_embeddings(net, tokenize, labels, templates, device)  # (C, D)
        emb, failures = embed_videos(net, list(videos), pre, device, batch_size, num_workers, method=method, desc=desc)
        done = [vid for vid, _ in videos if vid in emb]
        video = torch.stack([emb[v] for v in done]) if done else classes.new_zeros(0, classes.shape[1])
        return done, scale * video.float() @ classes.float().T, failures  # (V, C), as class_probabilities
    prompts = class_text_states(net, tokenize, labels, templates, device)  # (C * T, ...)
    scores: dict[str, torch.Tensor] = {}
    failures: list[tuple[str, str]] = []
    for ids, state, _, failed in encode_video_batches(net, list(videos), pre, device, batch_size, num_workers,
                                                      method, desc, encode=net.encode_video_state):
        failures.extend(failed)
        if ids:
            scores.update(zip(ids, pairwise_class_scores(net, state, prompts, len(templates), device)))  # (C,) each
    done = [vid for vid, _ in videos if vid in scores]
    rows = torch.stack([scores[v] for v in done]) if done else torch.zeros(0, len(labels))
    return done, scale * rows, failures  # (V, C)


def class_probabilities(video: torch.Tensor, classes: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(V, C) softmax over classes of ``logit_scale * video @ classes.T`` (both L2-normalised)."""
    return torch.softmax(logit_scale * video.float() @ classes.float().T, dim=-1)


def top_k(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable labels with their probabilities."""
    k = min(k, len(labels))
    values, indices = probs.topk(k, dim=-1)
    return [[(labels[int(i)], round(float(v), 6)) for v, i in zip(vs, ix)] for vs, ix in zip(values, indices)]


def model_scale(model: StageOneModel) -> float:
    """CLIP's logit scale (``exp`` of its learned log-temperature, clamped at 100 as in training)."""
    return float(model.logit_scale.detach().exp().clamp(max=100))


def zero_shot_clip(cfg: RetrievalConfig) -> tuple[StageOneModel, ModelSpec]:
    """A plain CLIP of ``cfg.clip`` whose frames are mean-pooled (a ``meanP`` head: no new weights),
    in eval mode, with its spec (as a model folder's: frames, sampling, tokenizer)."""
    # meanP, no head options, no prompts: a training config's seqTransf, head_input_norm or
    # pretrain.mode=prompt (random, untrained prompt vectors) must not reach the zero-shot baseline
    plain = replace(cfg, pretrain=replace(cfg.pretrain, head="meanP", head_input_norm=False, mode="full"))
    model = build_video_text_model(plain).eval()
    return model, model.spec


def load_recognizer(cfg: RetrievalConfig, model: str | None, pretrained: str | None,
                    device: torch.device) -> tuple[StageOneModel, ModelSpec]:
    """The model ``--model`` names: a stage-1 model folder; an open_clip model name (with
    ``pretrained``: its tag or a checkpoint file) as a plain, mean-pooled CLIP; or, without
    ``--model``, the config's ``clip`` section as a plain CLIP."""
    if model is not None and Path(model).is_dir():
        if pretrained:
            raise ModelFolderError(f"--pretrained {pretrained}: {model} is a model folder, which has its own weights")
        return from_pretrained(model, device=device)
    if model is not None:
        if model not in open_clip.list_models():
            raise ModelFolderError(f"--model {model}: neither a model folder nor an open_clip model name "
                                   "(open_clip.list_models())")
        cfg = replace(cfg, clip=replace(cfg.clip, model=model, custom=None, pretrained=pretrained))
    elif pretrained:
        cfg = replace(cfg, clip=replace(cfg.clip, pretrained=pretrained))
    net, spec = zero_shot_clip(cfg)
    return net.to(device), spec


def classify_videos(net: StageOneModel, spec: ModelSpec, videos: Sequence[tuple[str, Path]], labels: Sequence[str],
                    templates: Sequence[str], device: torch.device, top: int = 5, batch_size: int = 8,
                    num_workers: int = 0) -> tuple[dict[str, list[tuple[str, float]]], dict[str, str]]:
    """``({video: [(label, probability)] * top}, {video: why it could not be read})``; the
    probabilities are the softmax of ``class_logits`` (pairwise models: their own pair scores)."""
    done, logits, failures = class_logits(net, spec, videos, labels, templates, device, batch_size, num_workers)
    ranked = top_k(torch.softmax(logits, dim=-1), labels, top) if done else []
    return dict(zip(done, ranked)), {path: reason for path, reason in failures}


def _accuracy(probs: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """top-1, top-5 and mean class accuracy (mean over the classes present of their top-1)."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices  # (V, k)
    hit1 = top[:, 0] == truth
    per_class = [float(hit1[truth == c].float().mean()) for c in truth.unique()]
    return {"top1": round(float(hit1.float().mean()), 5),
            "top5": round(float((top == truth[:, None]).any(dim=1).float().mean()), 5),
            "mean_class_accuracy": round(sum(per_class) / len(per_class), 5), "videos": int(len(truth))}


def evaluate_classification(net: StageOneModel, spec: ModelSpec, cfg: RetrievalConfig, split: str | None = None,
                            templates: Sequence[str] = TEMPLATES, output: Path | None = None) -> dict[str, Any]:
    """Recognition metrics on a labelled split: top-1 / top-5 / mean class accuracy over all labels;
    with ``data.novel_labels``, also base accuracy (base videos among base labels) and novel
    (zero-shot) accuracy (novel videos among novel labels) and their harmonic mean, as Open-VCLIP
    reports. Writes ``metrics.json``; unreadable videos are named and counted."""
    split = split or cfg.data.test_split
    ann = load_annotations(cfg.data)
    for q in ann.problems:  # named, counted in the metrics and written beside them: never dropped silently
        print(f"warning: skipped annotation entry {q.source}: {q.reason}", file=sys.stderr)
    entries = split_entries(ann, split, cfg.data.annotations)
    if any(e.label is None for e in entries):
        raise DatasetError(f"{cfg.data.annotations}: split '{split}' has videos without a label (data.format="
                           f"{cfg.data.format} holds captions); eval-classify needs a labelled format")
    labels = class_list(cfg.data) or sorted({e.label for e in ann.entries})
    device = next(net.parameters()).device
    done, logits, failures = class_logits(net, spec, [(e.video_id, e.clip) for e in entries], labels,
                                          templates, device, cfg.pretrain.eval_batch_size, cfg.run.num_workers,
                                          desc="eval-classify")  # (V, C), rows in the order of kept
    for _, reason in failures:
        print(f"warning: not classified: {reason}", file=sys.stderr)
    read = set(done)
    kept = [e for e in entries if e.video_id in read]
    if not kept:
        raise DatasetError(f"{cfg.data.annotations}: none of the {len(entries)} videos of split '{split}' could be read")
    metrics: dict[str, Any] = {"split": split, "labels": len(labels), "unreadable_videos": len(failures),
                               "annotation_problems": len(ann.problems),
                               **_accuracy(torch.softmax(logits, dim=-1),
                                           torch.tensor([labels.index(e.label) for e in kept]))}
    novel = novel_labels(cfg.data, {e.label for e in ann.entries}) & set(labels)
    if novel:
        for name, group in (("base", [x for x in labels if x not in novel]), ("novel", sorted(novel))):
            rows = [i for i, e in enumerate(kept) if e.label in group]
            if rows:
                cols = [labels.index(x) for x in group]
                probs = torch.softmax(logits[rows][:, cols], dim=-1)  # among the group's labels only
                metrics[name] = _accuracy(probs, torch.tensor([group.index(kept[i].label) for i in rows]))
        if "base" in metrics and "novel" in metrics:
            b, n = metrics["base"]["top1"], metrics["novel"]["top1"]
            metrics["harmonic_mean"] = round(2 * b * n / (b + n), 5) if b + n else 0.0
    if output is not None:
        write_json(Path(output) / "skipped.json", {"annotation_problems": [vars(q) for q in ann.problems],
                                                   "unreadable_videos": [{"path": p, "reason": r} for p, r in failures]})
        write_json(Path(output) / "metrics.json", metrics)
    return metrics
