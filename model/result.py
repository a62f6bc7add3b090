"""What a finished request returns: text, token ids, the plan with each span's content, and counts."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, is_dataclass
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
    replans: int = 0


@dataclass
class Usage:
    """What a request cost. The model layer fills the counts; the orchestrator adds failovers and
    wall times (zero for a request run directly)."""

    prompt_tokens: int
    generated_tokens: int  # tokens after the prompt: plan, tags, span slots (pads included)
    critical_path: int  # sequential model forwards
    plan_tokens: int
    span_tokens: int
    steps_per_round: list[int]
    retries: int  # overflowing spans given more slots
    replans: int = 0  # rounds planned again because spans overflowed
    failovers: int = 0  # times the request moved to another worker
    # Wall time between event batches, by the phase they arrived in: exact to the flush interval
    # when streaming; with events batched at joins (Orchestrator.complete), planning counts as denoising.
    plan_seconds: float = 0.0
    denoise_seconds: float = 0.0
    total_seconds: float = 0.0


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
        return plain(self)


def plain(value):
    """`dataclasses.asdict`, but a list of ids is copied whole: asdict recurses into each of a
    result's hundreds of ids (3 ms a result, most of a 64-request batch's end on the host)."""
    if is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list):
        return list(value) if all(type(v) in (int, float, str) for v in value[:1]) else [plain(v) for v in value]
    return value


def strip_tags(decoded: str, profile: TagProfile) -> str:
    """The reference's final text (§2.4): a numbered list after <async> starts a new line, every tag
    and [PAD] becomes one space, runs of spaces collapse. Unlike the reference, a promise whose topic
    holds a newline is stripped too (DOTALL)."""
    return strip_tags_piece(decoded, profile).strip()


def strip_tags_piece(decoded: str, profile: TagProfile) -> str:
    """`strip_tags` without the final strip, for text released piece by piece: each piece is cut
    at a tag or a whole character, so the pieces' results join (one space where two meet) into the
    whole text's."""
    q = re.escape
    text = re.sub(f"({q(profile.span_open)})(\\d+)", r"\1\n\2", decoded)
    tags = "|".join([q(profile.pad), q(profile.span_open), q(profile.span_close), q(profile.sync),
                     f"{q(profile.promise_open)}.*?{q(profile.promise_close)}"])
    text = re.sub(f"({tags})", " ", text, flags=re.DOTALL)
    text = re.sub(r"[ \t]+", " ", text)
    for end in profile.end:
        text = text.replace(end, "")
    return text
