"""Incremental plan parser: planning tokens in, one at a time; typed events out.

Grammar of one planning round (our rules; the reference's mis-parses of §3.7 are replaced):

    round   := (text | promise)* (SYNC | END)
    promise := PROMISE_OPEN topic-token* digit+ PROMISE_CLOSE

- The span length is the run of digit tokens that ends right before ``</topic>``. A digit inside the
  topic ("Top 3 tips 5") is topic text; the reference would read "3".
- A promise with no trailing digits, a ``</topic>`` outside a promise, a span tag, ``[PAD]`` or the
  mask token in a plan, and a promise still open when a tag or the round's end arrives are
  `Malformed`, with the reason. The reference drops an unclosed promise silently.
- A round may hold no promise: its text is plain autoregressive text (``END`` after no promise is a
  plain answer; ``SYNC`` after none is an empty join). The reference asserts instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from .tags import TagVocabulary


@dataclass(frozen=True)
class PromiseClosed:
    index: int  # 0-based within the round
    topic_ids: tuple[int, ...]
    number: int  # the promised length number, before the length unit or scale is applied


@dataclass(frozen=True)
class RoundEnd:
    kind: Literal["sync", "end"]
    spans: int


@dataclass(frozen=True)
class Malformed:
    reason: str


PlanEvent = Union[PromiseClosed, RoundEnd, Malformed]


class PlanParser:
    """Parses one planning round at a time; call `reset()` (or make a new parser) per round."""

    def __init__(self, tags: TagVocabulary):
        self.tags = tags
        self._names = {
            tags.promise_close: "</topic>",
            tags.span_open: "<async>",
            tags.span_close: "</async>",
            tags.pad: "[PAD]",
            tags.mask: "the mask token",
            tags.promise_open: "a new promise",
            tags.sync: "<sync/>",
            **{e: "the end token" for e in tags.end},
        }
        self.reset()

    def reset(self) -> None:
        self.promises = 0
        self.topic: list[int] | None = None  # None while outside a promise
        self.failed: str | None = None

    @property
    def in_promise(self) -> bool:
        return self.topic is not None

    def feed(self, token: int) -> PlanEvent | None:
        """Consume one planning token; return the event it completes, if any."""
        if self.failed is not None:
            return Malformed(self.failed)
        tags = self.tags
        if self.topic is None:
            if token == tags.promise_open:
                self.topic = []
                return None
            if token == tags.sync:
                return RoundEnd("sync", self.promises)
            if token in tags.end:
                return RoundEnd("end", self.promises)
            if token in self._names:
                return self._fail(f"{self._names[token]} outside a promise")
            return None
        if token == tags.promise_close:
            digits = self.trailing_digits()
            if not digits:
                return self._fail("a promise has no length before </topic>")
            event = PromiseClosed(self.promises, tuple(self.topic[: len(self.topic) - len(digits)]), int(digits))
            self.promises += 1
            self.topic = None
            return event
        if token in self._names:
            return self._fail(f"{self._names[token]} inside an unclosed promise")
        self.topic.append(token)
        return None

    def trailing_digits(self) -> str:
        """The digits at the end of the open promise's topic so far: its length, once closed."""
        digits = ""
        for token in reversed(self.topic or []):
            value = self.tags.digit_value(token)
            if value is None:
                break
            digits = str(value) + digits
        return digits

    def _fail(self, reason: str) -> Malformed:
        self.failed = reason
        return Malformed(reason)
