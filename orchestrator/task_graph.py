"""One request's task graph, built from the events its state machine emits:

    plan round 0 → span jobs → join at <sync/> → plan round 1 → … → end

It knows which phase comes next, what is committed (what a resumed request replays), and which
answer text is final, so that text is released in document order, each piece once, and decoded
once: each release decodes only the ids it adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from plandiff.model.codec import TextCodec
from plandiff.model.events import (
    DenoiseStep, Finished, PlanToken, RequestEvent, RoundJoined, RoundPlanned, RoundReplanned, SpanFilled,
    SpanPromised, SpanRetried,
)
from plandiff.model.options import GenerationOptions
from plandiff.model.result import strip_tags_piece

from .events import (
    Event, PlanTokenEvent, ReplannedEvent, SpanDoneEvent, SpanProgressEvent, SpanPromisedEvent, SpanRetriedEvent,
    SyncEvent, TextEvent,
)

NextPhase = Literal["plan", "denoise", "done"]


@dataclass
class SpanJob:
    index: int
    topic: str
    length: int
    content: list[int] | None = None  # set once filled
    retries: int = 0


@dataclass
class RoundNode:
    index: int
    plan: list[int] = field(default_factory=list)  # planning tokens, stop token included
    spans: list[SpanJob] = field(default_factory=list)
    stop: str | None = None
    joined: bool = False


class TextStream:
    """The answer text of ids that only ever grow: each `extend` decodes just the new ids. Pieces
    start at a tag or at a whole character (a piece ending in an incomplete one waits)."""

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.consumed = 0  # ids turned into text
        self.text = ""  # strip_tags of everything consumed, but the trailing strip
        self.emitted = 0  # characters released

    def extend(self, ids: list[int]) -> str:
        """The new final text that `ids` (what was consumed, then more) adds."""
        if len(ids) <= self.consumed:
            return ""
        piece = self.codec.tokenizer.decode(ids[self.consumed:], skip_special_tokens=False)
        if piece.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return ""
        self.consumed = len(ids)
        piece = strip_tags_piece(piece, self.codec.profile)
        if self.text.endswith(" ") and piece.startswith(" "):
            piece = piece[1:]
        self.text = (self.text + piece) if self.text else piece.lstrip()
        return self._release(len(self.text.rstrip()))

    def finish(self, final: str) -> str:
        """The rest of the answer once the result's text is known (the same text, if the pieces
        agreed with it, as they do unless an end token sat mid-text)."""
        if final.startswith(self.text[:self.emitted]):
            self.text = final
            return self._release(len(final))
        return ""

    def _release(self, end: int) -> str:
        delta = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return delta


class TaskGraph:
    def __init__(self, request_id: str, codec: TextCodec, options: GenerationOptions):
        self.request_id = request_id
        self.codec = codec
        self.options = options
        self.rounds = [RoundNode(0)]
        self.joined: list[int] = []  # generated ids up to the last joined round
        self.next_phase: NextPhase = "denoise" if options.mode == "diffusion" else "plan"
        self.finish: Finished | None = None
        self.text = TextStream(codec)
        self.retries = 0
        self.replans = 0

    @property
    def round(self) -> RoundNode:
        return self.rounds[-1]

    @property
    def committed(self) -> list[int]:
        """What a fresh worker replays to resume: joined rounds, then this round's plan tokens."""
        return self.joined + self.round.plan

    def apply(self, events: list[RequestEvent]) -> list[Event]:
        out: list[Event] = []
        rid = self.request_id
        # Autoregressive: the plain text as it is written, one decode for each run of plan tokens
        # (a batch of events can hold a whole answer's tokens)
        plain_text = self.options.mode == "autoregressive"
        text_due = False
        for e in events:
            if isinstance(e, PlanToken):
                self.round.plan.append(e.token)
                out.append(PlanTokenEvent(request_id=rid, round=e.round, token_id=e.token))
                text_due = plain_text
                continue
            if text_due:
                out += self._text(self.joined + self.round.plan)
                text_due = False
            if isinstance(e, SpanPromised):
                topic = self.codec.tokenizer.decode(list(e.topic_ids)).strip()
                self.round.spans.append(SpanJob(e.index, topic, e.length))
                out.append(SpanPromisedEvent(request_id=rid, round=e.round, span=e.index, topic=topic,
                                             length=e.length))
            elif isinstance(e, RoundPlanned):
                self.round.stop = e.stop
                self.next_phase = "denoise" if any(s.length for s in e.spans) else self.next_phase
            elif isinstance(e, DenoiseStep):
                out.append(SpanProgressEvent(request_id=rid, round=e.round, step=e.step, filled=list(e.filled),
                                             lengths=[s.length for s in self.round.spans],
                                             slots=[list(s) for s in e.slots]))
            elif isinstance(e, SpanFilled):
                job = self._job(e.index)
                if job is not None and job.content is None:  # once, also when a resumed round refills it
                    job.content = list(e.token_ids)
                    text = self.codec.tokenizer.decode([t for t in e.token_ids if t != self.codec.tags.pad]).strip()
                    out.append(SpanDoneEvent(request_id=rid, round=e.round, span=e.index, text=text,
                                             token_ids=list(e.token_ids), overflow=e.overflow))
                    out += self._release_spans()
            elif isinstance(e, SpanRetried):
                job = self._job(e.index)
                if job is not None:
                    job.length, job.content, job.retries = e.length, None, job.retries + 1
                self.retries += 1
                out.append(SpanRetriedEvent(request_id=rid, round=e.round, span=e.index, previous=e.previous,
                                            length=e.length))
            elif isinstance(e, RoundReplanned):
                self.rounds[-1] = RoundNode(e.round)
                self.next_phase = "plan"
                self.replans += 1
                out.append(ReplannedEvent(request_id=rid, round=e.round, bounds={i: (lo, hi) for i, lo, hi in e.bounds}))
            elif isinstance(e, RoundJoined):
                self.joined = list(e.generated)
                self.round.joined = True
                out += self._text(self.joined)
                if e.stop == "sync":
                    out.append(SyncEvent(request_id=rid, round=e.round))
                    self.rounds.append(RoundNode(e.round + 1))
                    self.next_phase = "plan"
            elif isinstance(e, Finished):
                self.finish = e
                self.next_phase = "done"
        if text_due:
            out += self._text(self.joined + self.round.plan)
        return out

    def final_text(self, text: str) -> list[Event]:
        """The rest of the answer once the result is known."""
        return self._emit(self.text.finish(text))

    def _text(self, ids: list[int]) -> list[Event]:
        return self._emit(self.text.extend(ids))

    def _emit(self, delta: str) -> list[Event]:
        return [TextEvent(request_id=self.request_id, text=delta)] if delta else []

    def _job(self, index: int) -> SpanJob | None:
        return next((s for s in self.round.spans if s.index == index), None)

    @property
    def _spans_final_when_filled(self) -> bool:
        """A filled span can still change if it may be retried or re-planned, or (sampled) be
        re-denoised elsewhere after a failover."""
        return self.options.on_overflow == "accept" and self.options.temperature == 0

    def _release_spans(self) -> list[Event]:
        """Text is final up to the first span of the current round that is not final yet."""
        if not self._spans_final_when_filled:
            return []
        ids = self.joined + self.round.plan[:-1]  # the stop token is not part of the text
        tags = self.codec.tags
        for job in self.round.spans:
            if job.content is None:
                break
            ids = ids + [tags.span_open, *job.content, tags.span_close]
        return self._text(ids)
