"""What a request reports as it moves: small, picklable records (token ids, never tensors).

`RequestState` appends them to its `events` list; a driver (the single-request runtime, a worker
actor) drains and forwards them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union


@dataclass(frozen=True)
class PlanToken:
    round: int
    token: int


@dataclass(frozen=True)
class SpanPromised:
    """A promise closed in the plan: a span of `length` slots will be denoised (`clamped`: the
    promise exceeded max_span_length)."""

    round: int
    index: int
    topic_ids: tuple[int, ...]
    length: int
    clamped: bool


@dataclass(frozen=True)
class RoundPlanned:
    """A planning round ended; its spans (possibly none) are about to be denoised."""

    round: int
    stop: Literal["sync", "end"]
    spans: tuple[SpanPromised, ...]


@dataclass(frozen=True)
class DenoiseStep:
    round: int
    step: int
    filled: tuple[int, ...]  # committed slots per span of the round, after this step
    slots: tuple[tuple[int, ...], ...]  # each span's slots after this step (the mask id where still masked)


@dataclass(frozen=True)
class SpanFilled:
    round: int
    index: int
    token_ids: tuple[int, ...]
    overflow: bool  # every slot holds content: it probably did not fit


@dataclass(frozen=True)
class SpanRetried:
    round: int
    index: int
    previous: int
    length: int


@dataclass(frozen=True)
class RoundJoined:
    """A round's spans are final and joined; `generated` is everything committed after the prompt."""

    round: int
    stop: Literal["sync", "end"]
    generated: tuple[int, ...]


@dataclass(frozen=True)
class RoundReplanned:
    """Spans overflowed (on_overflow="replan"): the round's plan and spans are dropped and it is
    planned again; `bounds` holds (span index, least, most): the numbers its new promise may write."""

    round: int
    bounds: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Finished:
    reason: Literal["end", "length"]
    fallback: str | None


RequestEvent = Union[PlanToken, SpanPromised, RoundPlanned, DenoiseStep, SpanFilled, SpanRetried, RoundReplanned,
                     RoundJoined, Finished]
