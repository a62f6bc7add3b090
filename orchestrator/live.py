"""`plandiff generate` on a terminal: the plan as it is written (its topics and lengths, not its tags),
every span of the round filling in parallel (· marks a slot still masked), then the labelled answer.
Built from the orchestrator's events only; a legend says what the marks mean, for a first reader."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from plandiff.model.codec import TextCodec

from .events import (
    DoneEvent, Event, PlanTokenEvent, ReplannedEvent, SpanDoneEvent, SpanProgressEvent, SpanPromisedEvent,
    SpanRetriedEvent, SyncEvent, TextEvent,
)


@dataclass
class _Span:
    topic: str
    length: int
    slots: list[int] = field(default_factory=list)
    done: bool = False
    retried: int = 0


@dataclass
class _Round:
    plan: list[int] = field(default_factory=list)
    spans: list[_Span] = field(default_factory=list)
    steps: int = 0
    replans: int = 0


class LiveView:
    """Feed it events with `update`; `render()` is the current frame (a rich renderable)."""

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.rounds: list[_Round] = [_Round()]
        self.answer = ""
        self.done: DoneEvent | None = None

    def update(self, event: Event) -> None:
        current = self.rounds[-1]
        if isinstance(event, PlanTokenEvent):
            current.plan.append(event.token_id)
        elif isinstance(event, SpanPromisedEvent):
            current.spans.append(_Span(event.topic, event.length))
        elif isinstance(event, SpanProgressEvent):
            current.steps = event.step + 1
            for span, slots in zip(current.spans, event.slots):
                span.slots = slots
        elif isinstance(event, SpanRetriedEvent):
            span = current.spans[event.span]
            span.length, span.slots, span.done, span.retried = event.length, [], False, span.retried + 1
        elif isinstance(event, SpanDoneEvent):
            span = current.spans[event.span]
            span.slots, span.done = list(event.token_ids), True
        elif isinstance(event, ReplannedEvent):
            self.rounds[-1] = _Round(replans=current.replans + 1)
        elif isinstance(event, SyncEvent):
            self.rounds.append(_Round())
        elif isinstance(event, TextEvent):
            self.answer += event.text
        elif isinstance(event, DoneEvent):
            self.done = event
            self.answer = event.text

    def render(self) -> Group:
        parts = [] if self.rounds[0].plan or self.answer else [Text("planning…", style="dim")]
        for index, r in enumerate(self.rounds):
            if not r.plan and not r.spans:
                continue
            title = Text(f"round {index}", style="bold")
            if r.steps:
                title.append(f", {r.steps} denoising steps", style="dim")
            if r.replans:
                title.append(f", planned again {r.replans}× (spans overflowed)", style="dim")
            parts += [title, Text("  plan  ", style="dim") + self._plan(r)]
            if r.spans:
                table = Table.grid(padding=(0, 1))
                table.add_column(style="magenta", no_wrap=True)
                table.add_column()
                table.add_column(style="dim", justify="right", no_wrap=True)
                for span in r.spans:
                    table.add_row(f"  {span.topic}:", self._slots(span), self._count(span))
                parts.append(table)
        if any(r.spans for r in self.rounds):
            parts.append(Text("  · a slot still masked; green: written while its span still fills (the spans fill in parallel); "
                              "n/m: tokens written of the slots promised, room left unused not counted", style="dim"))
        if self.answer:
            parts += [Text(""), Text("answer", style="bold underline"), Text(self.answer, style="bold")]
        if self.done is not None:
            u = self.done.usage
            parts.append(Text(f"{u.generated_tokens} tokens, {u.critical_path} forward passes on the critical path, "
                              f"{u.total_seconds:.2f} s, finish: {self.done.finish_reason}", style="dim"))
        return Group(*parts)

    def _plan(self, r: _Round) -> Text:
        """The plan as a reader would say it: one "topic (n slots)" per promise, then any topic
        still being written; plain text of the round as it is."""
        tags = self.codec.tags
        out = Text()
        for span in r.spans:
            out.append(f"{span.topic} ", style="cyan")
            out.append(f"({span.length} slots)  ", style="dim")
        tail = r.plan
        if tags.promise_open in tail:
            tail = tail[len(tail) - tail[::-1].index(tags.promise_open) - 1:]
        pending = [t for t in tail if t not in tags.structural and t not in tags.end]
        if tail[:1] == [tags.promise_open] and tags.promise_close not in tail:
            out.append(self.codec.tokenizer.decode(pending) + "…", style="cyan")
        elif not r.spans and pending:
            out.append(self.codec.tokenizer.decode(pending), style="cyan")
        return out

    def _count(self, span: _Span) -> str:
        """Tokens written of the slots promised; [PAD] (room left) and masks are not counted."""
        tags = self.codec.tags
        written = sum(1 for t in span.slots if t not in (tags.mask, tags.pad))
        return f"{written}/{span.length}" + (f" retried {span.retried}×" if span.retried else "")

    def _slots(self, span: _Span) -> Text:
        """Committed slots as text, masked ones as ·, trailing [PAD]s (room left) dropped."""
        tags = self.codec.tags
        out = Text()
        ids = span.slots or [tags.mask] * span.length
        while ids and ids[-1] == tags.pad:
            ids = ids[:-1]
        for token in ids:
            if token == tags.mask:
                out.append("·", style="dim")
            elif token != tags.pad:
                out.append(self.codec.tokenizer.decode([token]), style=None if span.done else "green")
        return out
