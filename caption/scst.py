"""Self-critical sequence training (Rennie et al., "Self-critical Sequence Training for Image
Captioning", CVPR 2017) for the stage-2 caption model: ``caption.objective=scst``.

One step, for a batch of B training videos:

1. draw ``k = caption.scst.samples`` captions per video from the model (dropout off: the captions'
   log-probabilities in step 3 must be those of the policy that drew them);
2. reward each caption (``Rewarder``): ``cider_weight`` x CIDEr-D against the video's training
   references - the scorer's document frequencies are those of the training references, computed
   once (``caption.cider_reward.CiderD``) - plus ``clip_weight`` x the cosine similarity of the
   caption and the video under the stage-1 model the features came from;
3. baseline: the mean reward of the video's other k - 1 samples (``mean``), or the reward of its
   greedy caption (``greedy``); loss = ``-(reward - baseline) * log p(token | prefix)`` per token
   of the batch (``decoders.loss.scst_loss_sums``).

The reward's share of a step is measured and logged (``reward_s`` beside ``compute_s``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from caption.cider_reward import CiderD, words
from caption.config import Config
from caption.tokenizer import CaptionTokenizer, normalize_caption
from decoders.config import DecodeConfig
from decoders.loss import scst_loss_sums
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained


class ClipReward:
    """Cosine similarity of captions and videos under a stage-1 model: its text tower on the
    caption, and its own pooling (``VideoTextModel.pool``) of the cached per-frame features, which
    are that model's ``encode_frames`` output - so the video embedding is exactly the one stage-1
    retrieval uses."""

    def __init__(self, tower: Path, device: torch.device):
        self.model, spec = from_pretrained(tower, device=device)
        if scores_pairwise(self.model):
            raise ConfigError(f"caption.reward.clip_weight: the stage-1 model {tower} scores (video, caption) pairs "
                              "with the video's own frame tokens (X-CLIP's prompts, tightTransf), which the feature "
                              "cache does not hold; use caption.reward.clip_weight=0 with this tower")
        self.model.eval().requires_grad_(False)
        self.tokenize = tokenizer_from_spec(spec)
        self.device = device

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], frame_features: torch.Tensor, frame_mask: torch.Tensor) -> np.ndarray:
        """(N,) similarities of ``captions[i]`` and video ``i`` (features (N, T, D), mask (N, T))."""
        video = self.model.pool(frame_features.to(self.device).float(), frame_mask.to(self.device))  # (N, D)
        text = self.model.encode_text(self.tokenize(list(captions)).to(self.device))  # (N, D)
        return (video.float() * text.float()).sum(-1).cpu().double().numpy()


class Rewarder:
    """SCST's reward of sampled captions (see the module docstring)."""

    def __init__(self, cfg: Config, train_entries: Sequence[Any], tower: Path, device: torch.device):
        r = cfg.caption.reward
        self.cider_weight, self.clip_weight = r.cider_weight, r.clip_weight
        refs = {e.video_id: [words(normalize_caption(c)) for c in e.captions] for e in train_entries}
        self.cider = CiderD(refs) if self.cider_weight > 0 else None
        self.clip = ClipReward(tower, device) if self.clip_weight > 0 else None

    def __call__(self, video_ids: Sequence[str], captions: Sequence[str], frame_features: torch.Tensor,
                 frame_mask: torch.Tensor) -> dict[str, np.ndarray]:
        """``{"reward": (N,), "cider": (N,)?, "clip": (N,)?}`` for caption i of video ``video_ids[i]``."""
        out: dict[str, np.ndarray] = {}
        total = np.zeros(len(captions))
        if self.cider is not None:
            out["cider"] = self.cider.score(list(video_ids), [words(c) for c in captions])
            total += self.cider_weight * out["cider"]
        if self.clip is not None:
            out["clip"] = self.clip(captions, frame_features, frame_mask)
            total += self.clip_weight * out["clip"]
        out["reward"] = total
        return out


def leave_one_out_baseline(rewards: np.ndarray, k: int) -> np.ndarray:
    """(B * k,) -> (B * k,): each sample's baseline is the mean reward of its video's other samples."""
    r = rewards.reshape(-1, k)  # (B, k)
    return ((r.sum(1, keepdims=True) - r) / (k - 1)).reshape(-1)


@dataclass
class ScstStats:
    """What one SCST step reports (logged)."""

    reward: float  # mean reward of the samples
    baseline: float  # mean baseline
    cider: float | None
    clip: float | None
    sample_s: float  # drawing the captions (and the greedy baseline)
    reward_s: float  # scoring them
    advantage_max: float  # the largest |reward - baseline|: 0 means the step learned nothing


def scst_step_loss(acc: Accelerator, model: torch.nn.Module, batch: dict[str, Any], cfg: Config,
                   tokenizer: CaptionTokenizer, rewarder: Rewarder) -> tuple[torch.Tensor, ScstStats]:
    """The SCST loss of one batch of videos (to backpropagate) and the step's statistics.

    ``model`` is the prepared (possibly DDP-wrapped) caption model; sampling uses the unwrapped one.
    With several processes the loss is each process's token-loss sum x processes / all processes'
    tokens, so DDP's gradient mean is that of the global per-token loss (as ``train._token_mean_loss``).
    """
    s = cfg.caption.scst
    inner = acc.unwrap_model(model)
    feats, mask = batch["frame_features"], batch["frame_mask"]  # (B, T, F), (B, T)
    k, longest = s.samples, s.max_new_tokens or cfg.decode.max_new_tokens
    inner.eval()  # sample and score under one policy: no dropout (see the module docstring)
    t0 = time.perf_counter()
    tokens = inner.sample_captions(feats, mask, num_samples=k, temperature=s.temperature,
                                   max_new_tokens=longest)  # (B*k, L)
    greedy = None
    if s.baseline == "greedy":
        greedy = inner.generate_captions(feats, mask, DecodeConfig(num_beams=1, max_new_tokens=longest))
    t1 = time.perf_counter()
    ids = [v for v in batch["video_ids"] for _ in range(k)]
    feats_k, mask_k = feats.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    scored = rewarder(ids, tokenizer.decode_batch(tokens.tolist()), feats_k, mask_k)
    if greedy is not None:
        base_r = rewarder(list(batch["video_ids"]), tokenizer.decode_batch(greedy.tolist()), feats, mask)["reward"]
        baseline = np.repeat(base_r, k)
    else:
        baseline = leave_one_out_baseline(scored["reward"], k)
    t2 = time.perf_counter()
    advantage = torch.as_tensor(scored["reward"] - baseline, dtype=torch.float32, device=feats.device)  # (B*k,)
    bos = torch.full_like(tokens[:, :1], inner.config.decoder_start_token_id)
    logits = model(frame_features=feats_k, frame_mask=mask_k,
                   decoder_input_ids=torch.cat([bos, tokens[:, :-1]], dim=1)).logits  # (B*k, L, V)
    total, count = scst_loss_sums(logits, tokens, advantage, inner.config.eos_token_id, s.temperature)
    if acc.num_processes == 1:
        loss = total / count.clamp(min=1.0)
    else:
        everyone = acc.reduce(count.reshape(1), reduction="sum").squeeze(0)
        loss = total * acc.num_processes / everyone.clamp(min=1.0)
    stats = ScstStats(reward=float(scored["reward"].mean()), baseline=float(baseline.mean()),
                      cider=float(scored["cider"].mean()) if "cider" in scored else None,
                      clip=float(scored["clip"].mean()) if "clip" in scored else None,
                      sample_s=t1 - t0, reward_s=t2 - t1, advantage_max=float(np.abs(scored["reward"] - baseline).max()))
    return loss, stats
