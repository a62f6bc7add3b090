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
from .unmasking import commit_mask, filter_logits, propose

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
    (temperature, top_p, top_k), banned = group[1], tuple(group[-1])
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k)
    if group[0] == "denoise":
        logits = logits.clone()
        logits[:, banned_ids(banned, logits.device)] = torch.finfo(logits.dtype).min  # never the mask itself
        x0, scores = propose(logits, sampling, group[2], generator)
        rules = torch.tensor([segments, rule.k], dtype=torch.long).to(scores.device, non_blocking=True)
        bounds = torch.tensor([rule.lo, rule.hi], dtype=torch.float64).to(scores.device, non_blocking=True)
        commit = commit_mask(scores, rules[0], rules[1], bounds[0], bounds[1])
        return torch.stack((x0, commit.to(x0.dtype)))
    logits = filter_logits(logits, sampling)
    if banned:
        logits = logits.clone()
        logits[:, banned_ids(banned, logits.device)] = torch.finfo(logits.dtype).min
    if sampling.temperature > 0:
        return torch.multinomial(torch.softmax(logits, dim=-1).float(), 1).squeeze(-1)
    return torch.argmax(logits, dim=-1)


@functools.lru_cache(maxsize=256)
def banned_ids(banned: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The banned token ids as an index on the logits' device, made once: indexing with a list
    would copy a new index to the device, and wait for it, every step."""
    return torch.tensor(banned, dtype=torch.long, device=device)
