"""Generation for one request, as a step state machine (reference §3).

    plan (one token per forward, KV-cached) → scaffold → denoise (live spans only) → <sync/> → plan → … → end

`RequestState.schedule()` says what the next forward must compute (which positions, which logits);
`RequestState.advance()` takes those logits and moves the request on, appending what happened to
`events`. The state holds token ids and layout metadata only, never a tensor of the network, so an
engine can drive many requests through shared forwards; `ModelRuntime.run` drives one alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterator, Literal

import torch

from .decisions import CommitRule, Decision, decide
from .errors import InvalidRequestError, MalformedPlanError, PromptTooLongError
from .events import (
    DenoiseStep, Finished, PlanToken, RequestEvent, RoundJoined, RoundPlanned, RoundReplanned, SpanFilled, SpanPromised,
    SpanRetried,
)
from .layout import CAUSAL, Layout
from .options import GenerationOptions
from .plan_constraint import (banned_plan_tokens, bounded_number_tokens, promise_bounds, span_length, topic_bound_tokens,
                              validate_plan)
from .plan_parser import Malformed, PlanParser, RoundEnd, PromiseClosed
from .tags import TagVocabulary
from .unmasking import (ThresholdSchedule, commit_count, diffusion_steps, filter_logits, next_token, scheduled_count,
                        step_ratios, timesteps)

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
    retries: int = 0  # times it was given more slots after overflowing

    @property
    def end(self) -> int:
        """One past its </async>."""
        return self.start + self.length + 2

    def info(self) -> SpanPromised:
        return SpanPromised(self.round, self.index, self.topic_ids, self.length, self.clamped)


@dataclass
class Round:
    index: int
    plan_start: int  # position of the round's first planning token
    plan_end: int = -1  # one past its last planning token (the stop token excluded)
    stop: Literal["sync", "end"] | None = None
    spans: list[Span] = field(default_factory=list)
    plan_forwards: int = 0
    denoise_steps: int = 0
    replans: int = 0  # times the round was planned again after spans overflowed


@dataclass
class Forward:
    """One forward of the network for one request."""

    positions: list[int]  # positions whose keys/values and hidden states are computed
    key_length: int  # attend over cache positions [0, key_length)
    logit_positions: list[int]  # positions whose logits are needed (a subset of `positions`)
    fresh_cache: bool = False  # start from an empty cache (kv_cache=False, or a resumed request)
    spans: list[int] = field(default_factory=list)  # denoising: the round's spans that still hold masks
    segments: list[int] = field(default_factory=list)  # the logit rows of each of them, in order
    step: int = 0  # denoising: the step of its round it computes (commit_rule)


class RequestState:
    """Everything one request needs between forwards: tokens, layout, rounds, denoising schedule."""

    def __init__(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        tags: TagVocabulary,
        *,
        max_positions: int,
        vocab_size: int | None = None,
        dense_default: bool = False,
        plan: list[list[int]] | None = None,
        logits_processor: LogitsProcessor | None = None,
    ):
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty; at least one token is needed", field="prompt")
        bad = next((t for t in prompt_ids if not isinstance(t, int) or isinstance(t, bool) or t < 0
                    or vocab_size is not None and t >= vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt token id {bad!r} is not an id of the model's vocabulary "
                                      f"(0 … {vocab_size - 1 if vocab_size else 'its size'})", field="prompt_ids")
        if len(prompt_ids) >= max_positions:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {max_positions}, "
                "so nothing could be generated"
            )
        control = {tags.promise_open, tags.promise_close, tags.span_open, tags.span_close, tags.sync, tags.pad,
                   tags.mask}
        if control & set(prompt_ids):
            raise InvalidRequestError(
                "the prompt ids hold control-tag ids "
                f"{sorted(control & set(prompt_ids))}; tags cannot be given as input (send text instead)",
                field="prompt_ids",
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
        self.retries = 0  # overflowing spans given more slots
        self.replans = 0  # rounds planned again because spans overflowed
        self._bounds: dict[int, tuple[int, int]] = {}  # a re-planned round: promise numbers allowed per span
        self.events: list[RequestEvent] = []
        self.rounds: list[Round] = [Round(0, self.prompt_length)]
        self.parser = PlanParser(tags)
        self.forced = [list(r) for r in plan] if plan is not None else None
        if self.forced is not None:
            validate_plan(self.forced, tags, options)
        self.logits_processor = logits_processor
        # Tokens a span slot may not take: the mask always; with constraints, every tag but [PAD].
        self._slot_banned = [tags.mask] + (sorted(tags.structural - {tags.mask, tags.pad}) if options.constrained else [])
        self.generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
        self._computed = 0  # positions [0, _computed) of the causal prefix have current keys
        self._fresh_cache = False  # the next forward starts from an empty cache
        self._dirty: set[int] = set()  # regions whose cached keys are stale
        self._placed: set[int] = set()  # finished spans moved by an overflow retry, not computed since
        self._regions = 0
        self._spans: list[Span] = []  # the round being denoised
        self._stop: int | None = None  # the token that ended its plan: <sync/> is put back after it
        self._steps = 0
        self._step = 0
        self._ratios: list[float] = []  # unmasking.step_ratios of the round's schedule
        self._threshold: ThresholdSchedule | None = None
        if options.mode == "diffusion":
            self._start_diffusion_only()

    # ------------------------------------------------------------------ scheduling

    @property
    def round(self) -> Round:
        return self.rounds[-1]

    def drain(self) -> list[RequestEvent]:
        """The events since the last drain."""
        events, self.events = self.events, []
        return events

    def schedule(self) -> Forward:
        """The next forward this request needs. Only valid while `phase` is not DONE."""
        assert self.phase is not Phase.DONE
        n = len(self.tokens)
        exact = self.options.kv_refresh == "exact"
        spans: list[int] = []
        segments: list[int] = []
        if self.phase is Phase.PLAN:
            # With exact refresh, the spans of the round just joined are recomputed with their final
            # tokens in the same forward as the <sync/> token: no extra forward on the critical path.
            positions = (self._stale_positions() if exact else []) + list(range(self._computed, n))
            logit_positions = [n - 1]
        else:
            spans = [b for b, span in enumerate(self._spans) if self._masked(span)]
            live = [self._spans[b] for b in spans]
            if exact:  # every live span is stale: it is new or committed tokens last step
                positions = self._stale_positions()
            else:  # the official cached code recomputes only spans that still hold masks
                positions = [p for s in self._spans if self._masked(s) or s.region in self._placed
                             for p in range(s.start, s.end)]
            positions += list(range(self._computed, self._spans[0].start))
            mask, tokens = self.tags.mask, self.tokens
            slots = [[p - 1 for p in range(s.start + 1, s.end - 1) if tokens[p] == mask] for s in live]
            logit_positions = [p for span in slots for p in span]
            segments = [len(span) for span in slots]
        step = self._step if self.phase is Phase.DENOISE else 0
        if not self.options.kv_cache:
            return Forward(list(range(n)), n, logit_positions, fresh_cache=True, spans=spans, segments=segments,
                           step=step)
        return Forward(sorted(set(positions)), n, logit_positions, fresh_cache=self._fresh_cache, spans=spans,
                       segments=segments, step=step)

    def advance(self, forward: Forward, logits: torch.Tensor | None, decision: Decision | None = None) -> None:
        """Consume the logits of `forward.logit_positions` (rows in that order) and move on; or,
        when an engine made the step's decision for many requests at once (`decision_group`,
        decisions.decide), that decision (`logits` is then unused)."""
        self.forwards += 1
        self._fresh_cache = False
        computed = set(forward.positions)
        if self._dirty or self._placed:
            positions = self._region_positions(self._dirty | self._placed)
            self._dirty = {r for r in self._dirty if not positions[r] <= computed}
            self._placed = {r for r in self._placed if not positions[r] <= computed}
        if self.phase is Phase.PLAN:
            self._computed = len(self.tokens)
            self.round.plan_forwards += 1
            token = decision if decision is not None else self._choose_plan_token(logits[-1])
            self._accept_plan_token(token)
        else:
            self._computed = max(self._computed, self._spans[0].start)
            self.round.denoise_steps += 1
            if decision is None:
                decision = decide(self._denoise_group(), logits, forward.segments, self.commit_rule(forward),
                                  self.generator).tolist()
            x0, commit = decision
            for p, token, chosen in zip(forward.logit_positions, x0, commit):
                if chosen:
                    self.tokens[p + 1] = token
            if self.options.mode == "diffusion":
                self._diffusion_only_step()
            else:
                self._denoise_step(forward, commit)

    def decision_group(self, forward: Forward) -> tuple | None:
        """What the next step's decision depends on besides the logits, for `decide` to take it for
        every request of the same group in one batch; None when it is this request's alone (a
        seeded sampler's draws, a forced plan, a logits processor, re-plan bounds). Valid until
        `advance`."""
        sampling = self.options.sampling
        if sampling.temperature > 0 and self.generator is not None:
            return None
        key = (sampling.temperature, sampling.top_p, sampling.top_k)
        if self.phase is Phase.PLAN:
            if self.forced is not None or self.logits_processor is not None or self._bounded_plan_token():
                return None
            return ("plan", key, tuple(self._plan_banned()))
        return self._denoise_group()

    def _denoise_group(self) -> tuple:
        sampling = self.options.sampling
        banned = (self.tags.mask,) if self.options.mode == "diffusion" else tuple(self._slot_banned)
        return ("denoise", (sampling.temperature, sampling.top_p, sampling.top_k), self.options.order, banned)

    def commit_rule(self, forward: Forward) -> CommitRule:
        """How each live span of this denoising step commits (the reference's rules, §3.5): the
        schedule's count (diffusion-only: the whole answer's, possibly none); `adaptive` also every
        τ-confident slot; `threshold` its candidates, all but the best only if τ-confident."""
        step, steps, masked = forward.step, self._steps, forward.segments
        inf, tau = float("inf"), self.options.threshold
        if self.options.mode == "diffusion":
            k = [scheduled_count(m, step, steps, self._ratios) for m in masked]
            return CommitRule(k, [-inf] * len(k), [inf] * len(k))
        if self._threshold is not None:
            spans = zip(forward.spans, masked)
            k = [self._threshold.candidates(b, m, step, self._spans[b].length + 2) for b, m in spans]
            return CommitRule(k, [tau] * len(k), [inf] * len(k))
        k = [commit_count(m, step, steps, self._ratios) for m in masked]
        return CommitRule(k, [-inf] * len(k), [tau if self.options.order == "adaptive" else inf] * len(k))

    # ------------------------------------------------------------------ a step ahead

    def ahead(self, forward: Forward) -> Forward | None:
        """The forward after `forward` (launched, its decisions not yet known) when it can be known
        without them; None otherwise. An engine may launch it before `forward` is finished, taking
        what it needs of that step's decisions on the device (ModelRunner.launch_ahead), and checks
        it against `schedule()` once `forward` is finished (ModelRunner.void_ahead).

        Planning: the next token's forward, whatever that token is, with a cache to extend and room
        for one more token; its input id is the step's decision (or the token a forced plan knows),
        packed `with state.reserved()`. A token that ends the round or the answer makes it void (a
        forced plan's is known: no step goes ahead of it).
        Denoising: the round's next step, when each live span commits a count known beforehand
        (the entropy, confidence and margin orders) and keeps masks after it: the same positions,
        their ids those committed on the device; its logit positions are placeholders, as many as
        the slots left masked, which the device picks (the step's rows not committed, in order)."""
        if self.phase is Phase.DENOISE:
            return self._denoise_ahead(forward)
        n = len(self.tokens)
        if (self.phase is not Phase.PLAN or not self.options.kv_cache or self._dirty
                or forward.logit_positions != [n - 1] or n + 1 >= self.max_length
                or self.known_token() in (self.tags.sync, *self.tags.end)):
            return None
        return Forward([n], n + 1, [n])

    def may_end_round(self) -> bool:
        """Whether the token this planning step decides may end the round (a planner between
        promises, its token not known): a step launched ahead of it may be void."""
        return (self.phase is Phase.PLAN and not self._text_only() and self.parser.topic is None
                and self.known_token() is None)

    def known_token(self) -> int | None:
        """The token this planning step takes whatever its logits are (a forced plan's), or None."""
        if self.phase is not Phase.PLAN or self.forced is None:
            return None
        return self.forced[self.round.index][len(self.tokens) - self.round.plan_start]

    def _denoise_ahead(self, forward: Forward) -> Forward | None:
        options = self.options
        # exact refresh: a void step ahead's keys are then what a recomputation would write
        if (not options.kv_cache or options.kv_refresh != "exact" or options.mode == "diffusion"
                or options.order in ("threshold", "adaptive") or forward.step + 1 >= self._steps):
            return None
        left = [m - k for m, k in zip(forward.segments, self.commit_rule(forward).k)]
        if not left or min(left) < 1:  # a span fills: the next step's spans and positions change
            return None
        # every live span commits, so their regions are the stale ones the next step recomputes
        positions = self._positions_in({self._spans[b].region for b in forward.spans})
        return Forward(positions, forward.key_length, forward.logit_positions[: sum(left)], spans=forward.spans,
                       segments=left, step=forward.step + 1)

    @contextmanager
    def reserved(self) -> Iterator[None]:
        """The next token's place (the token if known, else a placeholder id; the layout key a
        planning token gets) while a step ahead is packed, then taken back; the token appended
        later has the same key, so packed copies of the keys stay valid."""
        token = self.known_token()
        self.tokens.append(self.tags.mask if token is None else token)
        self.layout.append(CAUSAL, self.round.index)
        try:
            yield
        finally:
            self.tokens.pop()
            self.layout.retract(len(self.tokens))

    # ------------------------------------------------------------------ planning

    def _text_only(self) -> bool:
        return self.options.mode == "autoregressive" or self.fallback is not None

    def _choose_plan_token(self, logits: torch.Tensor) -> int:
        if self.forced is not None:
            return self.known_token()
        round_tokens = self.tokens[self.round.plan_start:]
        logits = filter_logits(logits, self.options.sampling)
        if self.logits_processor is not None:
            logits = self.logits_processor(round_tokens, logits)
        banned = self._plan_banned()  # tags are banned last, whatever a processor did
        if banned:
            logits = logits.clone()
            logits[banned] = torch.finfo(logits.dtype).min
        if self._bounds and not self._text_only():
            allowed = bounded_number_tokens(self.parser, self._bounds, int(torch.argmax(logits)))
            if allowed is not None:  # writing a re-planned span's length: only numbers within its bounds
                kept = torch.full_like(logits, torch.finfo(logits.dtype).min)
                kept[allowed] = logits[allowed]
                logits = kept
        if self.options.constrained and not self._text_only():
            allowed = topic_bound_tokens(self.parser, self.options)
            if allowed is not None:  # the topic is at its bound: its length comes next
                kept = torch.full_like(logits, torch.finfo(logits.dtype).min)
                kept[allowed] = logits[allowed]
                logits = kept
        return next_token(logits, self.options.sampling, self.generator)

    def _bounded_plan_token(self) -> bool:
        """The next planning token is held to a few allowed ids (a re-planned span's length, a topic
        at max_topic_tokens): `_choose_plan_token` applies them, a group's ban list does not."""
        if self._text_only():
            return False
        return bool(self._bounds) or self.options.constrained and topic_bound_tokens(self.parser, self.options) is not None

    def _plan_banned(self) -> list[int]:
        if self._text_only():
            return list(self.tags.not_text)
        if self.options.constrained:
            return banned_plan_tokens(self.parser, self.round.index, self.options)
        return []

    def _accept_plan_token(self, token: int) -> None:
        self._append(token, CAUSAL, self.round.index)
        self.events.append(PlanToken(self.round.index, token))
        if self._text_only():
            if token in self.tags.end:
                self._pop()
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
        elif isinstance(event, PromiseClosed):
            self._promise(event)
        elif isinstance(event, RoundEnd):
            self._end_plan(event)
        if self.phase is Phase.PLAN and (
            len(self.tokens) >= self.max_length
            or len(self.tokens) - self.round.plan_start >= self.options.max_plan_tokens
        ):
            self._finish("length")

    def _promise(self, event: PromiseClosed) -> None:
        length = span_length(event.number, self.tags, self.options)
        limit = self.options.max_span_length
        span = Span(self.round.index, event.index, event.topic_ids, event.number, min(length, limit), start=-1,
                    region=-1, clamped=length > limit)
        self.round.spans.append(span)
        self.events.append(span.info())

    def _end_plan(self, event: RoundEnd) -> None:
        self._stop = self._pop()  # the stop token is put back after the scaffold (sync) or dropped
        self.round.plan_end = len(self.tokens)
        self.round.stop = event.kind
        spans = self.round.spans
        self.events.append(RoundPlanned(self.round.index, event.kind, tuple(s.info() for s in spans)))
        if not spans:  # a round without spans is plain text: a join with nothing to join, or the answer
            self._end_round()
            return
        if len(self.tokens) + sum(s.length + 2 for s in spans) + (event.kind == "sync") > self.max_length:
            self._finish("length")  # the scaffold would not fit: keep the plan, fill nothing
            return
        self._place(spans, keep={})
        self._begin_denoise()

    def _place(self, spans: list[Span], keep: dict[int, list[int]]) -> None:
        """Append the round's scaffold: each span's tags around masks (or the content in `keep`)."""
        epoch = self.round.index
        dense_region = self._new_region() if self.dense else None
        for span in spans:
            span.region = dense_region if dense_region is not None else self._new_region()
            span.start = len(self.tokens)
            content = keep.get(span.index, [self.tags.mask] * span.length)
            for token in [self.tags.span_open, *content, self.tags.span_close]:
                self._append(token, span.region, epoch)
            self._dirty.add(span.region)
            if span.index in keep:
                self._placed.add(span.region)
        self._computed = len(self.tokens)  # scaffold keys are tracked per region from here on

    def _end_round(self) -> None:
        """Join the round: resume planning after <sync/>, or finish."""
        self._bounds = {}
        if self.round.stop == "sync":
            self._append(self._stop, CAUSAL, self.round.index + 1)
            self.events.append(RoundJoined(self.round.index, "sync", tuple(self.tokens[self.prompt_length:])))
            self.rounds.append(Round(self.round.index + 1, len(self.tokens)))
            self.parser.reset()
            self.phase = Phase.PLAN
        else:
            self.events.append(RoundJoined(self.round.index, "end", tuple(self.tokens[self.prompt_length:])))
            self._finish("end")

    # ------------------------------------------------------------------ denoising

    def _begin_denoise(self) -> None:
        self._spans = self.round.spans
        live = [s for s in self._spans if self._masked(s)]
        if not live:  # every span promised zero slots: nothing to denoise
            self._end_round()
            return
        self._steps = diffusion_steps(max(s.length for s in live), self.options.steps_ratio)
        self._step = 0
        self._ratios = step_ratios(timesteps(self._steps))
        self._threshold = (
            ThresholdSchedule(self._steps, self.options.threshold, [0] * len(self._spans))
            if self.options.order == "threshold" else None
        )
        self.phase = Phase.DENOISE

    def _denoise_step(self, forward: Forward, commit: list[int]) -> None:
        """After the step's commits were placed (advance): its live spans' bookkeeping and events."""
        step, threshold = self._step, self._threshold
        row = 0
        for b, rows in zip(forward.spans, forward.segments):
            span = self._spans[b]
            if threshold is not None:  # candidates past the committed ones were rejected
                k = threshold.candidates(b, rows, step, span.length + 2)
                threshold.reject(b, k - sum(commit[row:row + rows]), step)
            row += rows
            self._dirty.add(span.region)
            if not self._masked(span):
                content = tuple(self.tokens[span.start + 1: span.end - 1])
                overflow = bool(content) and content[-1] != self.tags.pad
                self.events.append(SpanFilled(span.round, span.index, content, overflow))
        self.events.append(DenoiseStep(self.round.index, step, tuple(s.length - self._masked(s) for s in self._spans),
                                       tuple(tuple(self.tokens[s.start + 1:s.end - 1]) for s in self._spans)))
        self._step += 1
        if threshold is not None:
            self._steps = threshold.steps
        if not any(self._masked(s) for s in self._spans):
            if not (self._retry_overflows() or self._replan_overflows()):
                self._end_round()

    def _retry_overflows(self) -> bool:
        """Give overflowing spans more slots and denoise them again (on_overflow="retry")."""
        opts = self.options
        if opts.on_overflow != "retry":
            return False
        grow = {}
        for span in self._spans:
            content = self.tokens[span.start + 1: span.end - 1]
            longer = min(int(span.length * opts.overflow_growth), opts.max_span_length)
            if content and content[-1] != self.tags.pad and span.retries < opts.max_overflow_retries and longer > span.length:
                grow[span.index] = longer
        if not grow:
            return False
        keep = {s.index: self.tokens[s.start + 1: s.end - 1] for s in self._spans if s.index not in grow}
        needed = sum((grow.get(s.index, s.length)) + 2 for s in self._spans) + (self.round.stop == "sync")
        if self._spans[0].start + needed > self.max_length:
            return False  # no room to grow: accept what fits
        self._truncate(self._spans[0].start)
        for span in self._spans:
            if span.index in grow:
                self.events.append(SpanRetried(span.round, span.index, span.length, grow[span.index]))
                span.length, span.retries = grow[span.index], span.retries + 1
                self.retries += 1
        self._place(self._spans, keep)
        self._begin_denoise()
        return True

    def _replan_overflows(self) -> bool:
        """Plan the round again, each overflowing span's promise bound to a larger length
        (on_overflow="replan", plan_constraint.promise_bounds); the spans before the first bound
        promise come out the same under greedy planning, those after may change."""
        opts = self.options
        if opts.on_overflow != "replan" or self.forced is not None or self.round.replans >= opts.max_overflow_retries:
            return False
        bounds = {}
        for span in self._spans:
            content = self.tokens[span.start + 1: span.end - 1]
            bound = promise_bounds(span.length, self.tags, opts) if content and content[-1] != self.tags.pad else None
            if bound is not None:
                bounds[span.index] = bound
        if not bounds:
            return False
        start = self.round.plan_start
        self._truncate(start)
        self.round.spans, self.round.plan_end, self.round.stop = [], -1, None
        self.round.replans += 1
        self.replans += 1
        self._spans, self._bounds = [], bounds
        self.parser.reset()
        self._computed = min(self._computed, start - 1)  # the next forward re-reads the last prefix logits
        self.phase = Phase.PLAN
        self.events.append(RoundReplanned(self.round.index, tuple((i, *b) for i, b in sorted(bounds.items()))))
        return True

    # ------------------------------------------------------------------ diffusion-only baseline

    def _start_diffusion_only(self) -> None:
        """The whole answer is one region of masks that also holds the prompt (Dream baseline)."""
        region = self._new_region()
        self.layout.set_region(region)
        slots = self.max_length - len(self.tokens)
        span = Span(0, 0, (), slots, slots, start=len(self.tokens) - 1, region=region)
        for _ in range(slots):
            self._append(self.tags.mask, region, 0)
        self._computed = len(self.tokens)
        self._dirty.add(region)
        self.round.stop = "end"
        self.round.spans.append(span)
        self._spans = [span]
        self._steps = diffusion_steps(slots, self.options.steps_ratio)
        self._step = 0
        self._ratios = step_ratios(timesteps(self._steps))
        self.phase = Phase.DENOISE

    def _diffusion_only_step(self) -> None:
        self._dirty.add(self._spans[0].region)
        self._step += 1
        if not self._masked(self._spans[0]):
            self._finish("end")

    # ------------------------------------------------------------------ resuming elsewhere

    def resume(self, generated: list[int]) -> None:
        """Replay committed tokens (what `RoundJoined.generated` and `PlanToken`s reported) into a
        fresh state, e.g. on another worker after one died; the next forward re-prefills everything.

        `generated` holds whole joined rounds and then, optionally, the current round's planning
        tokens (its stop token included once it was written). A round being denoised restarts.
        """
        if self.forwards or len(self.tokens) != self.prompt_length or self.options.mode == "diffusion":
            raise InvalidRequestError("resume needs a fresh planned or autoregressive request")
        i = 0
        while i < len(generated):
            if self.phase is Phase.DONE:
                raise InvalidRequestError(f"resume: {len(generated) - i} tokens follow the end of the answer")
            if self.phase is Phase.PLAN:
                token = generated[i]
                if token == self.tags.span_open and not self._text_only() and self.parser.topic is None:
                    # a joined round's scaffold: its plan ended with the <sync/> placed after the
                    # scaffold, or (nothing after it) with an end token
                    after = i + sum(s.length + 2 for s in self.round.spans)
                    token = self.tags.sync if after < len(generated) and generated[after] == self.tags.sync \
                        else self.tags.end[0]
                else:
                    i += 1
                self._accept_plan_token(token)
                continue
            start, end = self._spans[0].start, self._spans[-1].end
            filled = generated[i: i + end - start]
            if len(filled) != end - start or filled[0] != self.tags.span_open or filled[-1] != self.tags.span_close:
                raise InvalidRequestError("resume: the generated tokens do not hold the round's scaffold")
            self.tokens[start:end] = filled
            i += end - start
            self._end_round()
            if self.phase is Phase.PLAN:
                if i >= len(generated) or generated[i] != self.tags.sync:
                    raise InvalidRequestError("resume: a joined round must be followed by <sync/>")
                i += 1
        self.events.clear()
        self._computed = 0
        self._dirty = {r for r in self.layout.region if r != CAUSAL}
        self._fresh_cache = True

    # ------------------------------------------------------------------ helpers

    def _append(self, token: int, region: int, epoch: int) -> None:
        self.tokens.append(token)
        self.layout.append(region, epoch)

    def _pop(self) -> int:
        token = self.tokens.pop()
        self.layout.truncate(len(self.tokens))
        return token

    def _truncate(self, length: int) -> None:
        del self.tokens[length:]
        self.layout.truncate(length)

    def _new_region(self) -> int:
        self._regions += 1
        return self._regions - 1

    def _masked(self, span: Span) -> int:
        return self.tokens[span.start + 1: span.end - 1].count(self.tags.mask)

    def _region_positions(self, regions: set[int]) -> dict[int, set[int]]:
        """The positions of each of `regions`, in one pass over the layout after the prompt (this
        runs every step; only the diffusion-only baseline puts the prompt in a region)."""
        positions: dict[int, set[int]] = {r: set() for r in regions}
        start = 0 if self.options.mode == "diffusion" else self.prompt_length
        for p, r in enumerate(self.layout.region[start:], start):
            if r in positions:
                positions[r].add(p)
        return positions

    def _stale_positions(self) -> list[int]:
        return self._positions_in(self._dirty)

    def _positions_in(self, regions: set[int]) -> list[int]:
        if not regions:  # most steps (planning between joins): no pass over the answer
            return []
        start = 0 if self.options.mode == "diffusion" else self.prompt_length
        return [p for p, r in enumerate(self.layout.region[start:], start) if r in regions]

    def _finish(self, reason: Literal["end", "length"]) -> None:
        self.phase = Phase.DONE
        self.finish_reason = reason
        self.events.append(Finished(reason, self.fallback))
