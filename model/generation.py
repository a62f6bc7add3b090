"""Generation for one request, as a step state machine (reference §3).

    plan (one token per forward, KV-cached) → scaffold → denoise (live spans only) → <sync/> → plan → … → end

`RequestState.schedule()` says what the next forward must compute (which positions, which logits);
`RequestState.advance()` takes those logits and moves the request on. The state holds token ids and
layout metadata only, never a tensor of the network, so an engine can drive many requests through
shared forwards; `generate()` below drives one request alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Literal

import torch

from .errors import InvalidPlanError, InvalidRequestError, MalformedPlanError, PromptTooLongError
from .layout import CAUSAL, Layout
from .options import GenerationOptions
from .plan_parser import Malformed, PlanParser, RoundEnd, SpanPromised
from .tags import TagVocabulary
from .unmasking import ThresholdSchedule, commit_count, diffusion_steps, filter_logits, next_token, propose, timesteps

# Called on each planning step's filtered logits [vocab] with the round's tokens so far.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


class Phase(Enum):
    PLAN = "plan"
    DENOISE = "denoise"
    DONE = "done"


@dataclass
class Span:
    round: int
    index: int
    topic_ids: tuple[int, ...]
    number: int  # the promised length number
    length: int  # slots
    start: int  # position of its <async>; slots are start+1 … start+length
    region: int
    clamped: bool = False  # the promised length exceeded max_span_length

    @property
    def end(self) -> int:
        """One past its </async>."""
        return self.start + self.length + 2


@dataclass
class Round:
    index: int
    plan_start: int  # position of the round's first planning token
    plan_end: int = -1  # one past its last planning token (the stop token excluded)
    stop: Literal["sync", "end"] | None = None
    spans: list[Span] = field(default_factory=list)
    plan_forwards: int = 0
    denoise_steps: int = 0


@dataclass
class Forward:
    """One forward of the network for one request."""

    positions: list[int]  # positions whose keys/values and hidden states are computed
    key_length: int  # attend over cache positions [0, key_length)
    logit_positions: list[int]  # positions whose logits are needed (a subset of `positions`)
    fresh_cache: bool = False  # start from an empty cache (kv_cache=False)


class RequestState:
    """Everything one request needs between forwards: tokens, layout, rounds, denoising schedule."""

    def __init__(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        tags: TagVocabulary,
        *,
        max_positions: int,
        dense_default: bool = False,
        plan: list[list[int]] | None = None,
        logits_processor: LogitsProcessor | None = None,
    ):
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty; at least one token is needed")
        if len(prompt_ids) >= max_positions:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {max_positions}, "
                "so nothing could be generated"
            )
        self.options = options
        self.tags = tags
        self.prompt_length = len(prompt_ids)
        self.max_length = min(len(prompt_ids) + options.max_new_tokens, max_positions)
        self.dense = dense_default if options.dense is None else options.dense
        self.tokens = list(prompt_ids)
        self.layout = Layout()
        self.layout.append(CAUSAL, 0, len(prompt_ids))
        self.phase = Phase.PLAN
        self.finish_reason: Literal["end", "length"] | None = None
        self.fallback: str | None = None  # set when a malformed plan was finished autoregressively
        self.forwards = 0
        self.rounds: list[Round] = [Round(0, self.prompt_length)]
        self.parser = PlanParser(tags)
        self.forced = [list(r) for r in plan] if plan is not None else None
        if self.forced is not None:
            validate_plan(self.forced, tags, options)
        self.logits_processor = logits_processor
        self.generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
        self._computed = 0  # positions [0, _computed) of the causal prefix have current keys
        self._dirty: set[int] = set()  # regions whose cached keys are stale
        self._regions = 0
        self._spans: list[Span] = []  # the round being denoised
        self._stop: int | None = None  # the token that ended its plan: <sync/> is put back after it
        self._steps = 0
        self._step = 0
        self._times: torch.Tensor | None = None
        self._threshold: ThresholdSchedule | None = None
        if options.mode == "diffusion":
            self._start_diffusion_only()

    # ------------------------------------------------------------------ scheduling

    @property
    def round(self) -> Round:
        return self.rounds[-1]

    def schedule(self) -> Forward:
        """The next forward this request needs. Only valid while `phase` is not DONE."""
        assert self.phase is not Phase.DONE
        n = len(self.tokens)
        exact = self.options.kv_refresh == "exact"
        if self.phase is Phase.PLAN:
            # With exact refresh, the spans of the round just joined are recomputed with their final
            # tokens in the same forward as the <sync/> token: no extra forward on the critical path.
            positions = (self._stale_positions() if exact else []) + list(range(self._computed, n))
            logit_positions = [n - 1]
        else:
            live = [s for s in self._spans if self._masked(s)]
            if exact:  # every live span is stale: it is new or committed tokens last step
                positions = self._stale_positions()
            else:  # the official cached code recomputes only spans that still hold masks
                positions = [p for s in live for p in range(s.start, s.end)]
            logit_positions = [
                p - 1 for s in live for p in range(s.start + 1, s.end - 1) if self.tokens[p] == self.tags.mask
            ]
        if not self.options.kv_cache:
            return Forward(list(range(n)), n, logit_positions, fresh_cache=True)
        return Forward(sorted(positions), n, logit_positions)

    def advance(self, forward: Forward, logits: torch.Tensor) -> None:
        """Consume the logits of `forward.logit_positions` (rows in that order) and move on."""
        self.forwards += 1
        computed = set(forward.positions)
        self._dirty = {r for r in self._dirty if not self._region_positions(r) <= computed}
        if self.phase is Phase.PLAN:
            self._computed = len(self.tokens)
            self.round.plan_forwards += 1
            self._plan_step(logits[-1])
        else:
            self.round.denoise_steps += 1
            self._denoise_step(forward.logit_positions, logits)

    # ------------------------------------------------------------------ planning

    def _plan_step(self, logits: torch.Tensor) -> None:
        round_tokens = self.tokens[self.round.plan_start:]
        if self.forced is not None and self.options.mode == "planned":
            token = self.forced[self.round.index][len(round_tokens)]
        else:
            logits = filter_logits(logits, self.options.sampling)
            if self.logits_processor is not None:
                logits = self.logits_processor(round_tokens, logits)
            if self.options.mode == "autoregressive" or self.fallback:  # text only: tags are banned last
                banned = list(self.tags.structural - set(self.tags.end))
                logits = logits.clone()
                logits[banned] = torch.finfo(logits.dtype).min
            token = next_token(logits, self.options.sampling, self.generator)
        self._append(token, CAUSAL, len(self.rounds) - 1)
        if self.options.mode == "autoregressive" or self.fallback:
            if token in self.tags.end:
                self.tokens.pop()
                self.layout.truncate(len(self.tokens))
                self._finish("end")
            elif len(self.tokens) >= self.max_length:
                self._finish("length")
            return
        event = self.parser.feed(token)
        if isinstance(event, Malformed):
            if self.options.on_malformed_plan == "raise":
                raise MalformedPlanError(event.reason, self.tokens[self.prompt_length:])
            self.fallback = event.reason
            self.round.spans.clear()
        elif isinstance(event, SpanPromised):
            self._promise(event)
        elif isinstance(event, RoundEnd):
            self._end_plan(event)
        if self.phase is Phase.PLAN and len(self.tokens) >= self.max_length:
            self._finish("length")

    def _promise(self, event: SpanPromised) -> None:
        opts = self.options
        if opts.length_scale is not None:
            length = int(event.number * opts.length_scale)
        else:
            length = event.number * self.tags.span_length_unit
        clamped = length > opts.max_span_length
        span = Span(len(self.rounds) - 1, event.index, event.topic_ids, event.number,
                    min(length, opts.max_span_length), start=-1, region=-1, clamped=clamped)
        self.round.spans.append(span)

    def _end_plan(self, event: RoundEnd) -> None:
        stop = self.tokens.pop()  # the stop token is put back after the scaffold (sync) or dropped
        self.layout.truncate(len(self.tokens))
        self.round.plan_end = len(self.tokens)
        self.round.stop = event.kind
        spans = self.round.spans
        scaffold = sum(s.length + 2 for s in spans)
        if not spans:  # a round without spans is plain text: a join with nothing to join, or the answer
            if event.kind == "end":
                self._finish("end")
            else:
                self._sync(stop)
            return
        if len(self.tokens) + scaffold + (event.kind == "sync") > self.max_length:
            self._finish("length")  # the scaffold would not fit: keep the plan, fill nothing
            return
        epoch = len(self.rounds) - 1
        dense_region = self._new_region() if self.dense else None
        for span in spans:
            span.region = dense_region if dense_region is not None else self._new_region()
            span.start = len(self.tokens)
            self._append(self.tags.span_open, span.region, epoch)
            for _ in range(span.length):
                self._append(self.tags.mask, span.region, epoch)
            self._append(self.tags.span_close, span.region, epoch)
            self._dirty.add(span.region)
        self._stop = stop
        self._computed = len(self.tokens)  # scaffold keys are tracked per region from here on
        self._begin_denoise(spans, max(s.length for s in spans))

    def _sync(self, sync: int) -> None:
        epoch = len(self.rounds)
        self._append(sync, CAUSAL, epoch)
        self.rounds.append(Round(epoch, len(self.tokens)))
        self.parser.reset()
        self.phase = Phase.PLAN

    # ------------------------------------------------------------------ denoising

    def _begin_denoise(self, spans: list[Span], longest: int) -> None:
        self._spans = spans
        self._steps = diffusion_steps(longest, self.options.steps_ratio)
        self._step = 0
        self._times = timesteps(self._steps)
        self._threshold = (
            ThresholdSchedule(self._steps, self.options.threshold, [0] * len(spans))
            if self.options.order == "threshold" else None
        )
        self.phase = Phase.DENOISE

    def _denoise_step(self, logit_positions: list[int], logits: torch.Tensor) -> None:
        if self.options.mode == "diffusion":
            return self._diffusion_only_step(logit_positions, logits)
        logits = logits.clone()
        logits[:, self.tags.mask] = torch.finfo(logits.dtype).min  # a slot never commits the mask itself
        x0, scores = propose(logits, self.options.sampling, self.options.order, self.generator)
        slot_row = {p + 1: i for i, p in enumerate(logit_positions)}
        step, threshold = self._step, self._threshold
        for b, span in enumerate(self._spans):
            masked = self._masked(span)
            if masked == 0:
                continue
            span_scores = torch.full((span.length + 2,), float("-inf"), dtype=scores.dtype)
            for p in range(span.start + 1, span.end - 1):
                if p in slot_row:
                    span_scores[p - span.start] = scores[slot_row[p]]
            if threshold is not None:
                k = threshold.candidates(b, masked, step, span.length + 2)
                chosen_scores, chosen = torch.topk(span_scores, k)
                chosen = chosen[threshold.accept(b, chosen_scores, step)]
            else:
                k = commit_count(masked, step, self._steps, self._times)
                chosen = torch.topk(span_scores, k).indices
            for offset in chosen.tolist():
                p = span.start + offset
                self.tokens[p] = int(x0[slot_row[p]])
            self._dirty.add(span.region)
        if threshold is not None:
            self._steps = threshold.steps
        self._step += 1
        if not any(self._masked(s) for s in self._spans):
            self._end_round()

    def _end_round(self) -> None:
        if self.round.stop == "sync":
            self._sync(self._stop)
        else:
            self._finish("end")

    # ------------------------------------------------------------------ diffusion-only baseline

    def _start_diffusion_only(self) -> None:
        """The whole answer is one region of masks that also holds the prompt (Dream baseline)."""
        region = self._new_region()
        self.layout.region[:] = [region] * len(self.tokens)
        slots = self.max_length - len(self.tokens)
        span = Span(0, 0, (), slots, slots, start=len(self.tokens) - 1, region=region)
        for _ in range(slots):
            self._append(self.tags.mask, region, 0)
        self._computed = len(self.tokens)
        self._dirty.add(region)
        self._stop = None
        self.round.stop = "end"
        self.round.spans.append(span)
        self._spans = [span]
        self._steps = diffusion_steps(slots, self.options.steps_ratio)
        self._step = 0
        self._times = timesteps(self._steps)
        self.phase = Phase.DENOISE

    def _diffusion_only_step(self, logit_positions: list[int], logits: torch.Tensor) -> None:
        logits = logits.clone()
        logits[:, self.tags.mask] = torch.finfo(logits.dtype).min
        x0, scores = propose(logits, self.options.sampling, self.options.order, self.generator)
        masked = len(logit_positions)
        i, steps = self._step, self._steps
        k = int(masked * (1 - self._times[i + 1] / self._times[i])) if i < steps - 1 else masked
        if k > 0:
            for row in torch.topk(scores, k).indices.tolist():
                self.tokens[logit_positions[row] + 1] = int(x0[row])
        self._dirty.add(self._spans[0].region)
        self._step += 1
        if not self._masked(self._spans[0]):
            self._finish("end")

    # ------------------------------------------------------------------ helpers

    def _append(self, token: int, region: int, epoch: int) -> None:
        self.tokens.append(token)
        self.layout.append(region, epoch)

    def _new_region(self) -> int:
        self._regions += 1
        return self._regions - 1

    def _masked(self, span: Span) -> int:
        return sum(1 for p in range(span.start + 1, span.end - 1) if self.tokens[p] == self.tags.mask)

    def _region_positions(self, region: int) -> set[int]:
        return {p for p, r in enumerate(self.layout.region) if r == region}

    def _stale_positions(self) -> list[int]:
        return [p for p, r in enumerate(self.layout.region) if r in self._dirty]

    def _finish(self, reason: Literal["end", "length"]) -> None:
        self.phase = Phase.DONE
        self.finish_reason = reason


def validate_plan(plan: list[list[int]], tags: TagVocabulary, options: GenerationOptions) -> None:
    """Check a caller-given plan: every round parses, only the last ends, spans fit the bounds."""
    if options.mode != "planned":
        raise InvalidPlanError(f"a forced plan needs mode 'planned', not {options.mode!r}")
    if not plan:
        raise InvalidPlanError("the forced plan has no round")
    parser = PlanParser(tags)
    for r, tokens in enumerate(plan):
        parser.reset()
        last = r == len(plan) - 1
        for i, token in enumerate(tokens):
            event = parser.feed(token)
            if isinstance(event, Malformed):
                raise InvalidPlanError(f"round {r}: {event.reason}")
            if isinstance(event, SpanPromised):
                length = (int(event.number * options.length_scale) if options.length_scale is not None
                          else event.number * tags.span_length_unit)
                if length > options.max_span_length:
                    raise InvalidPlanError(
                        f"round {r}: span {event.index} promises {length} slots; max_span_length is "
                        f"{options.max_span_length}"
                    )
            if isinstance(event, RoundEnd):
                if i != len(tokens) - 1:
                    raise InvalidPlanError(f"round {r}: tokens follow the round's end at index {i}")
                if last and event.kind != "end":
                    raise InvalidPlanError(f"round {r} is the last but ends with <sync/>, not an end token")
                if not last and event.kind != "sync":
                    raise InvalidPlanError(f"round {r} ends the answer but more rounds follow")
                break
        else:
            raise InvalidPlanError(f"round {r} does not end with <sync/> or an end token")
