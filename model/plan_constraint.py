"""Constrained planning: the token ids the planner may not write next, so that every plan parses;
and the same bounds checked on a plan the caller forces (`validate_plan`).

Outside a promise: no ``</topic>``, span tag, ``[PAD]`` or mask; no new promise once the round holds
`max_spans`; no ``<sync/>`` in the request's last allowed round. Inside a promise: no tag or end
token; ``</topic>`` only after a length; no digit that would make the length exceed
`max_span_length`; once the topic holds `max_topic_tokens`, only its length (`topic_bound_tokens`):
a topic is a short name, and a planner that writes answer text into it is stopped there.
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


def topic_bound_tokens(parser: PlanParser, options: GenerationOptions) -> list[int] | None:
    """Inside a promise whose topic has reached max_topic_tokens: the only tokens allowed, the
    length digits (and ``</topic>`` once a length is written). None: no restriction."""
    if parser.topic is None:
        return None
    trailing = parser.trailing_digits()
    if len(parser.topic) - len(trailing) < options.max_topic_tokens:
        return None
    tags = parser.tags
    digits = [token for digit, token in enumerate(tags.digits)
              if span_length(int(trailing + str(digit)), tags, options) <= options.max_span_length]
    return digits + [tags.promise_close] * bool(trailing)


def promise_bounds(length: int, tags: TagVocabulary, options: GenerationOptions) -> tuple[int, int] | None:
    """The promise numbers a re-planned span may write: from the least that gives `overflow_growth`
    × its `length` slots to the most that gives that again × overflow_growth, within
    max_span_length; None if no number gives it more than `length` slots."""
    want, most_slots = (min(int(length * options.overflow_growth ** k), options.max_span_length) for k in (1, 2))
    least = most = None
    number = 1
    while (slots := span_length(number, tags, options)) <= most_slots:  # slots grow with the number
        if slots > length:
            least = number if least is None and slots >= want else least
            most = number
        number += 1
    if most is None:
        return None
    return (least if least is not None else most), most


def bounded_number_tokens(parser: PlanParser, bounds: dict[int, tuple[int, int]], preferred: int) -> list[int] | None:
    """A re-planned round: once the promise being written starts its length number (the planner
    prefers a digit, or one was written), the only tokens allowed are the digits that can still make
    a number within its bounds, and the close once the number is within them. None: no restriction
    (outside a bounded promise, or still writing its topic)."""
    bound = bounds.get(parser.promises) if parser.topic is not None else None
    trailing = parser.trailing_digits()
    tags = parser.tags
    if bound is None or not trailing and tags.digit_value(preferred) is None:
        return None
    least, most = bound
    allowed = [token for digit, token in enumerate(tags.digits)
               if not (trailing + str(digit)).startswith("0") and _reachable(int(trailing + str(digit)), least, most)]
    if trailing and least <= int(trailing) <= most:
        allowed.append(tags.promise_close)
    return allowed


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
            if parser.topic is not None and len(parser.topic) - len(parser.trailing_digits()) > options.max_topic_tokens:
                raise InvalidPlanError(f"round {r}: a topic is longer than max_topic_tokens={options.max_topic_tokens}")
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
