"""What a finished request returns: text, token ids, the plan with each span's content, and counts."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

from .tags import TagProfile


@dataclass
class SpanResult:
    round: int
    index: int
    topic: str
    length: int  # slots promised (after the length unit or scale)
    clamped: bool  # the promise exceeded max_span_length and was cut to it
    retries: int  # times it overflowed and was given more slots
    token_ids: list[int]  # the filled slots, pads included
    text: str  # the content with pads removed


@dataclass
class RoundResult:
    index: int
    plan_ids: list[int]  # the planning tokens, the stop token excluded
    stop: Literal["sync", "end"] | None  # None: the round was cut by max_new_tokens
    spans: list[SpanResult]
    plan_forwards: int
    denoise_steps: int


@dataclass
class Usage:
    prompt_tokens: int
    generated_tokens: int  # tokens after the prompt: plan, tags, span slots (pads included)
    forward_passes: int  # sequential model calls: the critical path
    plan_tokens: int
    span_tokens: int
    steps_per_round: list[int]
    retries: int  # overflowing spans given more slots


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated ids after the prompt, tags included
    prompt_ids: list[int]
    rounds: list[RoundResult]
    usage: Usage
    finish_reason: Literal["end", "length"]
    fallback: str | None  # why the answer was finished autoregressively, if it was

    @property
    def spans(self) -> list[SpanResult]:
        return [s for r in self.rounds for s in r.spans]

    def to_dict(self) -> dict:
        return asdict(self)


def strip_tags(decoded: str, profile: TagProfile) -> str:
    """The reference's final text (§2.4): a numbered list after <async> starts a new line, every tag
    and [PAD] becomes one space, runs of spaces collapse. Unlike the reference, a promise whose topic
    holds a newline is stripped too (DOTALL)."""
    q = re.escape
    text = re.sub(f"({q(profile.span_open)})(\\d+)", r"\1\n\2", decoded)
    tags = "|".join([q(profile.pad), q(profile.span_open), q(profile.span_close), q(profile.sync),
                     f"{q(profile.promise_open)}.*?{q(profile.promise_close)}"])
    text = re.sub(f"({tags})", " ", text, flags=re.DOTALL)
    text = re.sub(r"[ \t]+", " ", text).strip()
    for end in profile.end:
        text = text.replace(end, "")
    return text.strip()
