"""Constrained planning: the token ids the planner may not write next, so that every plan parses;
and the same bounds checked on a plan the caller forces (`validate_plan`).

Outside a promise: no ``</topic>``, span tag, ``[PAD]`` or mask; no new promise once the round holds
`max_spans`; no ``<sync/>`` in the request's last allowed round. Inside a promise: no tag or end
token; ``</topic>`` only after a length; no digit that would make the length exceed
`max_span_length`.
"""

from __future__ import annotations

from .errors import InvalidPlanError
from .options import GenerationOptions
from .plan_parser import Malformed, PlanParser, RoundEnd, PromiseClosed
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


def floor_number(target: int, current: int, tags: TagVocabulary, options: GenerationOptions) -> int | None:
    """The least promise number that gives at least `target` slots within max_span_length (or the
    largest one that still gives more than `current`); None if no number gives more than `current`."""
    number = 1
    while span_length(number, tags, options) < target:
        number += 1
    while number > 1 and span_length(number, tags, options) > options.max_span_length:
        number -= 1
    grows = current < span_length(number, tags, options) <= options.max_span_length
    return number if grows else None


def length_floor_bans(parser: PlanParser, floors: dict[int, int], options: GenerationOptions) -> list[int]:
    """A replanned round: the promise being written must close on a number from its floor up to the
    largest one max_span_length allows; a digit that cannot begin such a number is banned too."""
    floor = floors.get(parser.promises) if parser.topic is not None else None
    if floor is None:
        return []
    tags = parser.tags
    top = floor
    while span_length(top + 1, tags, options) <= options.max_span_length:
        top += 1
    trailing = parser.trailing_digits()
    banned = [] if trailing and floor <= int(trailing) <= top else [tags.promise_close]
    for digit, token in enumerate(tags.digits):
        prefix = trailing + str(digit)
        if prefix.startswith("0") or not _reachable(int(prefix), floor, top):
            banned.append(token)
    return banned


def _reachable(prefix: int, low: int, high: int) -> bool:
    """Whether some number in [low, high] is written starting with the digits of `prefix`."""
    scale = 1
    while prefix * scale <= high:
        if (prefix + 1) * scale - 1 >= low:
            return True
        scale *= 10
    return False


def validate_plan(plan: list[list[int]], tags: TagVocabulary, options: GenerationOptions) -> None:
    """Check a caller-given plan: every round parses, only the last ends, bounds hold."""
    if options.mode != "planned":
        raise InvalidPlanError(f"a forced plan needs mode 'planned', not {options.mode!r}")
    if not plan:
        raise InvalidPlanError("the forced plan has no round")
    if len(plan) > options.max_rounds:
        raise InvalidPlanError(f"the forced plan has {len(plan)} rounds; max_rounds is {options.max_rounds}")
    parser = PlanParser(tags)
    for r, tokens in enumerate(plan):
        parser.reset()
        last = r == len(plan) - 1
        if len(tokens) > options.max_plan_tokens:
            raise InvalidPlanError(f"round {r} has {len(tokens)} tokens; max_plan_tokens is {options.max_plan_tokens}")
        for i, token in enumerate(tokens):
            event = parser.feed(token)
            if isinstance(event, Malformed):
                raise InvalidPlanError(f"round {r}: {event.reason}")
            if isinstance(event, PromiseClosed):
                length = span_length(event.number, tags, options)
                if length > options.max_span_length:
                    raise InvalidPlanError(
                        f"round {r}: span {event.index} promises {length} slots; max_span_length is "
                        f"{options.max_span_length}"
                    )
                if event.index >= options.max_spans:
                    raise InvalidPlanError(f"round {r} promises more than max_spans={options.max_spans} spans")
            if isinstance(event, RoundEnd):
                if i != len(tokens) - 1:
                    raise InvalidPlanError(f"round {r}: tokens follow the round's end at index {i}")
                if last and event.kind != "end":
                    raise InvalidPlanError(f"round {r} is the last but ends with <sync/>, not an end token")
                if not last and event.kind != "sync":
                    raise InvalidPlanError(f"round {r} ends the answer but more rounds follow")
                break
        else:
            raise InvalidPlanError(f"round {r} does not end with <sync/> or an end token")
