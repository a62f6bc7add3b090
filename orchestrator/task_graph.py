"""One request's task graph, built from the worker's streamed events:

    plan round 0 → span jobs → join at <sync/> → plan round 1 → … → end

It knows which phase comes next, what is committed (what a resumed request replays), and which
answer text is final, so that text is released in document order, each piece once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from plandiff.model.codec import TextCodec
from plandiff.model.events import (
    DenoiseStep, Finished, PlanToken, RequestEvent, RoundJoined, RoundPlanned, SpanFilled, SpanRetried,
)
from plandiff.model.options import GenerationOptions
from plandiff.model.plan_constraint import span_length
from plandiff.model.plan_parser import PlanParser, SpanPromised

from .events import (
    Event, PlanTokenEvent, SpanDoneEvent, SpanProgressEvent, SpanPromisedEvent, SpanRetriedEvent, SyncEvent, TextEvent,
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


class TaskGraph:
    def __init__(self, request_id: str, codec: TextCodec, options: GenerationOptions):
        self.request_id = request_id
        self.codec = codec
        self.options = options
        self.parser = PlanParser(codec.tags)
        self.rounds = [RoundNode(0)]
        self.joined: list[int] = []  # generated ids up to the last joined round
        self.next_phase: NextPhase = "denoise" if options.mode == "diffusion" else "plan"
        self.finish: Finished | None = None
        self.emitted = ""  # answer text released so far
        self.retries = 0

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
        for e in events:
            if isinstance(e, PlanToken):
                self.round.plan.append(e.token)
                out.append(PlanTokenEvent(request_id=rid, round=e.round, token_id=e.token))
                promised = self.parser.feed(e.token) if self.options.mode == "planned" else None
                if isinstance(promised, SpanPromised):
                    length = min(span_length(promised.number, self.codec.tags, self.options),
                                 self.options.max_span_length)
                    topic = self.codec.tokenizer.decode(list(promised.topic_ids)).strip()
                    self.round.spans.append(SpanJob(promised.index, topic, length))
                    out.append(SpanPromisedEvent(request_id=rid, round=e.round, span=promised.index, topic=topic,
                                                 length=length))
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
                    out += self._release_text()
            elif isinstance(e, SpanRetried):
                job = self._job(e.index)
                if job is not None:
                    job.length, job.content, job.retries = e.length, None, job.retries + 1
                self.retries += 1
                out.append(SpanRetriedEvent(request_id=rid, round=e.round, span=e.index, previous=e.previous,
                                            length=e.length))
            elif isinstance(e, RoundJoined):
                self.joined = list(e.generated)
                self.round.joined = True
                out += self._release_text()
                if e.stop == "sync":
                    out.append(SyncEvent(request_id=rid, round=e.round))
                    self.rounds.append(RoundNode(e.round + 1))
                    self.parser.reset()
                    self.next_phase = "plan"
            elif isinstance(e, Finished):
                self.finish = e
                self.next_phase = "done"
        return out

    def final_text(self, text: str) -> list[Event]:
        """The rest of the answer once the result is known."""
        return self._emit(text)

    def _emit(self, text: str) -> list[Event]:
        """Release what `text`, the final text so far, adds to what was released."""
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            delta, self.emitted = text[len(self.emitted):], text
            return [TextEvent(request_id=self.request_id, text=delta)]
        return []

    def _job(self, index: int) -> SpanJob | None:
        return next((s for s in self.round.spans if s.index == index), None)

    @property
    def _spans_final_when_filled(self) -> bool:
        """A filled span can still change if it may be retried, or (sampled) re-denoised elsewhere."""
        return self.options.on_overflow == "accept" and self.options.sampling.temperature == 0

    def _release_text(self) -> list[Event]:
        """Text is final up to the first span of the current round that is not final yet."""
        if self.round.joined:
            ids = self.joined
        elif not self._spans_final_when_filled:
            return []
        else:
            ids = self.joined + self.round.plan[:-1]  # the stop token is not part of the text
            tags = self.codec.tags
            for job in self.round.spans:
                if job.content is None:
                    break
                ids = ids + [tags.span_open, *job.content, tags.span_close]
        return self._emit(self.codec.text(ids))
