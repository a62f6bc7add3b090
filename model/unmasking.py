"""Denoising rules (reference §3.5): step schedule, per-span commit counts, unmasking order, sampling.

Numerics follow the reference so that greedy decoding is token-identical: filtering and softmax run
in the logits' dtype, the schedule is `torch.linspace` in fp32, and the per-span top-k is taken on a
span-length vector that includes the span's tags (scored -inf).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from .options import Order, Sampling

EPS = 1e-3  # the schedule's final timestep


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then top-p, then top-k, in the logits' dtype; removed entries get dtype min."""
    low = torch.finfo(logits.dtype).min
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1)
        remove = cumulative > sampling.top_p
        remove[..., 1:] = remove[..., :-1].clone()  # always keep the most probable token
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), low)
    if sampling.top_k is not None:
        k = min(sampling.top_k, logits.shape[-1])
        kth = torch.topk(logits, k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, low)
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One autoregressive token from last-position logits [vocab] (already filtered)."""
    if sampling.temperature > 0:
        probs = on_generator_device(torch.softmax(logits, dim=-1), generator)
        return int(torch.multinomial(probs, 1, generator=generator))
    return int(torch.argmax(logits))


def propose(
    logits: torch.Tensor, sampling: Sampling, order: Order, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For masked rows' logits [M, vocab]: the proposed tokens x0 [M] and their scores [M].

    Higher score = commit earlier. entropy: sum p·log(p+1e-10); confidence / threshold / adaptive:
    p(x0); margin: top1 − top2.
    """
    if (logits.is_cuda and sampling.temperature == 0 and sampling.top_k is not None and sampling.top_k < logits.shape[-1]
            and (sampling.top_p is None or sampling.top_p >= 1)):
        return propose_from_top_k(logits, sampling.top_k, order)
    probs = torch.softmax(filter_logits(logits, sampling), dim=-1)
    if sampling.temperature > 0:
        probs = on_generator_device(probs, generator)
        x0 = torch.multinomial(probs.float(), 1, generator=generator).squeeze(-1)
        confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if order == "entropy":
        return x0, torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    if order == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return x0, top2[:, 0] - top2[:, 1]
    return x0, confidence


def propose_from_top_k(logits: torch.Tensor, k: int, order: Order) -> tuple[torch.Tensor, torch.Tensor]:
    """`propose` for greedy decoding under a top-k filter, from each row's k best logits: the filter
    leaves every other probability exactly 0, so the softmax, the entropy and the margin need only
    those and the entries that tie the k-th (the filter keeps them too), not nine passes over
    [rows, vocabulary] (most of a 7B-vocabulary step's decision). The same proposals; the scores
    differ from `propose`'s only by the order of the softmax's fp32 sum. Used on CUDA, where the
    scores are not bit-identical to the reference anyway; the CPU keeps the reference's operations."""
    top = torch.topk(logits, k).values  # [rows, k], best first
    kth = top[:, -1:]
    ties = ((logits == kth).sum(-1) - (top == kth).sum(-1)).float()  # entries equal to the k-th beyond the k
    exp = torch.exp(top.float() - top[:, :1].float())
    probs = (exp / (exp.sum(-1) + ties * exp[:, -1])[:, None]).to(logits.dtype)
    x0 = torch.argmax(logits, dim=-1)  # the first of equal maxima, as `propose`'s max
    if order == "entropy":
        terms = (probs * torch.log(probs + 1e-10)).float()
        return x0, (terms.sum(-1) + ties * terms[:, -1]).to(logits.dtype)
    if order == "margin":
        second = probs[:, 1] if k > 1 else torch.where(ties > 0, probs[:, 0], torch.zeros_like(probs[:, 0]))
        return x0, probs[:, 0] - second
    return x0, probs[:, 0]


def greedy_token(logits: torch.Tensor, banned: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """argmax of `filter_logits(logits)` with the `banned` [vocab] ids then set to dtype min, without
    the filter's passes: the best allowed token is kept by a top-k filter unless k tokens rank above
    it, which can only be banned ones; if they do, every entry is dtype min and argmax gives id 0."""
    masked = logits.masked_fill(banned, torch.finfo(logits.dtype).min)
    best = torch.argmax(masked, dim=-1)
    if top_k is None:
        return best
    above = ((logits > masked.gather(-1, best[..., None])) & banned).sum(-1)
    return torch.where(above < top_k, best, torch.zeros_like(best))


def on_generator_device(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A seeded request samples with its own (host) generator, whatever device the logits are on."""
    return probs if generator is None or generator.device == probs.device else probs.to(generator.device)


def diffusion_steps(longest_span: int, steps_ratio: float) -> int:
    """Steps in a round: int(longest span × steps_ratio), but at least one (reference: zero steps
    leave the masks in place or raise ZeroDivisionError, Errata 3)."""
    return max(1, int(longest_span * steps_ratio))


def timesteps(steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.linspace(1, EPS, steps + 1, device=device)


def step_ratios(times: torch.Tensor) -> list[float]:
    """The share of a span's masks each step commits, `1 − t[i+1] / t[i]`, computed in fp32 as the
    reference does, once per round (the floats are then exact fp32 values)."""
    return (1 - times[1:] / times[:-1]).tolist()


def fp32(x: float) -> float:
    """`x` rounded to the nearest fp32 value: the reference multiplies a count by an fp32 ratio."""
    return struct.unpack("f", struct.pack("f", x))[0]


def scheduled_count(masked: int, step: int, steps: int, ratios: list[float]) -> int:
    """The schedule's share of `masked` masks at `step` of `steps`, all of them at the last step
    (the diffusion-only baseline commits this many, possibly none). The product is exact in a
    double and then rounded to fp32: the reference's fp32 tensor product."""
    return int(fp32(masked * ratios[step])) if step < steps - 1 else masked


def commit_count(masked: int, step: int, steps: int, ratios: list[float]) -> int:
    """Tokens a span with `masked` masks commits at `step` of `steps` (pd_* orders, §3.5): the
    schedule's count, at least one."""
    return min(max(1, scheduled_count(masked, step, steps, ratios)), masked)


def commit_mask(scores: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor) -> torch.Tensor:
    """Which of a step's proposals commit, for many spans of many requests at once, on the scores'
    device. The rows come grouped by span, `rows[s]` of them for span s; a row commits when its
    rank in its span (best score first) is below `k[s]` and it is the best or scores at least
    `lo[s]`, or when it scores at least `hi[s]` (adaptive: τ-confident slots commit beyond the
    schedule; threshold: candidates below τ are rejected). Equal scores rank in row order."""
    count = scores.shape[0]
    span = torch.repeat_interleave(torch.arange(rows.shape[0], device=scores.device), rows, output_size=count)
    by_score = torch.sort(scores, descending=True, stable=True).indices
    order = by_score[torch.sort(span[by_score], stable=True).indices]  # by span, best first within it
    first_row = torch.cumsum(rows, 0) - rows
    rank = torch.empty_like(order)
    rank[order] = torch.arange(count, device=scores.device) - first_row[span[order]]
    lo, hi = lo.to(scores.dtype)[span], hi.to(scores.dtype)[span]  # compared in the scores' dtype
    return (rank < k[span]) & ((rank == 0) | (scores >= lo)) | (scores >= hi)


@dataclass
class ThresholdSchedule:
    """State of the confidence-threshold order (pd_confidence_threshold) across a round's steps.

    Each span commits `base + carry` candidates per step, best first; all but the best must reach
    the threshold τ, and each rejection is carried to the next step. A rejection on or after the
    last scheduled step extends the round by one step.
    """

    steps: int
    threshold: float
    carry: list[int]

    def __post_init__(self) -> None:
        self.initial_steps = self.steps

    def candidates(self, span: int, masked: int, step: int, span_length: int) -> int:
        base = masked // (self.initial_steps - step) if step < self.initial_steps else 0
        base = min(max(1, base), masked)
        # The reference's top-k raises when the carry outgrows the span; we clamp.
        return min(base + self.carry[span], span_length)

    def reject(self, span: int, rejected: int, step: int) -> None:
        """The span's candidates not accepted at `step` (commit_mask with lo = τ decided which)
        are carried to the next step; a rejection on or after the last step adds a step."""
        self.carry[span] = rejected
        for _ in range(rejected):
            if not step < self.steps - 1:
                self.steps += 1
