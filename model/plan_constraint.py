"""Constrained planning: the token ids the planner may not write next, so that every plan parses.

Outside a promise: no ``</topic>``, span tag, ``[PAD]`` or mask; no new promise once the round holds
`max_spans`; no ``<sync/>`` in the request's last allowed round. Inside a promise: no tag or end
token; ``</topic>`` only after a length; no digit that would make the length exceed
`max_span_length`.
"""

from __future__ import annotations

from .options import GenerationOptions
from .plan_parser import PlanParser
from .tags import TagVocabulary


def span_length(number: int, tags: TagVocabulary, options: GenerationOptions) -> int:
    if options.length_scale is not None:
        return int(number * options.length_scale)
    return number * tags.span_length_unit


def banned_plan_tokens(parser: PlanParser, round_index: int, options: GenerationOptions) -> list[int]:
    tags = parser.tags
    if parser.topic is None:
        banned = [tags.promise_close, tags.span_open, tags.span_close, tags.pad, tags.mask]
        if parser.promises >= options.max_spans:
            banned.append(tags.promise_open)
        if round_index >= options.max_rounds - 1:
            banned.append(tags.sync)
        return banned
    banned = [tags.promise_open, tags.span_open, tags.span_close, tags.pad, tags.mask, tags.sync, *tags.end]
    trailing = parser.trailing_digits()
    if not trailing:
        banned.append(tags.promise_close)
    for digit, token in enumerate(tags.digits):
        if span_length(int(trailing + str(digit)), tags, options) > options.max_span_length:
            banned.append(token)
    return banned
