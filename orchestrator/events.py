"""What `Orchestrator.generate` yields, in order, for one request (pydantic: the public boundary)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel

from plandiff.model.result import Usage


class PlanTokenEvent(BaseModel):
    kind: Literal["plan_token"] = "plan_token"
    request_id: str
    round: int
    token_id: int


class SpanPromisedEvent(BaseModel):
    """A promise closed in the streamed plan: a span job exists (before the round's plan ends)."""

    kind: Literal["span_promised"] = "span_promised"
    request_id: str
    round: int
    span: int
    topic: str
    length: int


class SpanProgressEvent(BaseModel):
    kind: Literal["span_progress"] = "span_progress"
    request_id: str
    round: int
    step: int
    filled: list[int]  # committed slots per span of the round
    slots: list[list[int]]  # each span's slot token ids so far (the checkpoint's mask id where still masked)
    lengths: list[int]


class SpanDoneEvent(BaseModel):
    kind: Literal["span_done"] = "span_done"
    request_id: str
    round: int
    span: int
    text: str
    token_ids: list[int]
    overflow: bool


class SpanRetriedEvent(BaseModel):
    kind: Literal["span_retried"] = "span_retried"
    request_id: str
    round: int
    span: int
    previous: int
    length: int


class SyncEvent(BaseModel):
    """A round's spans joined at <sync/>; planning resumes."""

    kind: Literal["sync"] = "sync"
    request_id: str
    round: int


class TextEvent(BaseModel):
    """New answer text, in document order (concatenated, the deltas are the final text)."""

    kind: Literal["text"] = "text"
    request_id: str
    text: str


class ReplannedEvent(BaseModel):
    """Spans overflowed (on_overflow="replan"): the round's plan and spans are dropped and the round
    is planned again; `bounds` maps each overflowing span's index to the (least, most) length number
    its new promise may write. The round's plan_token and span events follow anew."""

    kind: Literal["replanned"] = "replanned"
    request_id: str
    round: int
    bounds: dict[int, tuple[int, int]]


class DoneEvent(BaseModel):
    kind: Literal["done"] = "done"
    request_id: str
    text: str
    finish_reason: Literal["end", "length"]
    fallback: str | None
    usage: Usage  # the one usage record (model/result.py), with failovers and wall times filled in
    result: dict  # plandiff.model.GenerationResult as a dict: plan, spans, token ids
    worker: str | None = None  # the worker that finished the request (a batch's per-worker summary)


Event = Union[PlanTokenEvent, SpanPromisedEvent, SpanProgressEvent, SpanDoneEvent, SpanRetriedEvent, ReplannedEvent,
              SyncEvent, TextEvent, DoneEvent]
