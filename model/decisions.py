"""A step's decisions for many requests at once, on the logits' device: the planning token of
each planning request, or each denoising request's proposals and which of them commit.

Requests whose decision depends only on their logits and a few settings share a `decision_group`
(generation.RequestState.decision_group): the model runner decides each group in one batch, and
a request of no group decides alone with the same function (its own group key and generator).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .options import Sampling
from .transfers import to_device
from .unmasking import commit_mask, filter_logits, greedy_token, propose

# A step's decision: the planning token, or the denoising proposals and which of them commit (per row).
Decision = int | tuple[list[int], list[int]]


@dataclass
class CommitRule:
    """How a denoising step's spans commit (unmasking.commit_mask): per live span, in the order of
    `Forward.segments`, how many of its best proposals commit (`k`), the score a proposal after
    the best must reach (`lo`), and the score at which one commits anyway (`hi`)."""

    k: list[int]
    lo: list[float]
    hi: list[float]


def decide(group: tuple, logits: torch.Tensor, segments: list[int] | None = None, rule: CommitRule | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """The decisions of a step for the logit rows of requests of one decision group, on the logits'
    device and not waited for: one greedy/sampled planning token per row [rows], or, denoising,
    each row's proposal and whether it commits [2, rows] (`segments` and `rule`: the spans' rows
    and commit rules, the requests' concatenated). Rows and spans are independent, so batching
    them decides exactly what each request alone would; only the chosen ids and flags leave the
    device. `generator`: a request deciding alone with its own seeded sampler."""
    banned = banned_mask(tuple(group[-1]), logits.shape[-1], logits.device)
    if group[0] == "plan":
        return decide_on_device(group, logits, banned, generator=generator)
    rules = to_device(torch.tensor([segments, rule.k], dtype=torch.long), logits.device)
    bounds = to_device(torch.tensor([rule.lo, rule.hi], dtype=torch.float64), logits.device)
    return decide_on_device(group, logits, banned, rules, bounds, generator)


def decide_on_device(group: tuple, logits: torch.Tensor, banned: torch.Tensor, rules: torch.Tensor | None = None,
                     bounds: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """`decide` from device tensors alone (what a CUDA graph of a step captures, step_graphs.py):
    `banned` [vocab] True where a token may not be chosen; denoising, `rules` [2, spans] each span's
    rows and commit count, `bounds` [2, spans] float64 its lo and hi scores."""
    (temperature, top_p, top_k) = group[1]
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k)
    low = torch.finfo(logits.dtype).min
    if group[0] == "denoise":
        x0, scores = propose(logits.masked_fill(banned, low), sampling, group[2], generator)  # never the mask
        rules, bounds = rules.to(scores.device), bounds.to(scores.device)  # a seeded sampler's device
        commit = commit_mask(scores, rules[0], rules[1], bounds[0], bounds[1])
        return torch.stack((x0, commit.to(x0.dtype)))
    if sampling.temperature == 0 and (sampling.top_p is None or sampling.top_p >= 1):
        return greedy_token(logits, banned, sampling.top_k)
    logits = filter_logits(logits, sampling).masked_fill(banned, low)
    if sampling.temperature > 0:
        return torch.multinomial(torch.softmax(logits, dim=-1).float(), 1).squeeze(-1)
    return torch.argmax(logits, dim=-1)


@functools.lru_cache(maxsize=256)
def banned_mask(banned: tuple[int, ...], vocab: int, device: torch.device) -> torch.Tensor:
    """[vocab] bool on the logits' device, True at the banned ids; made once per set (a list index
    would be copied to the device, and waited for, every step)."""
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[list(banned)] = True
    return mask.to(device)
