"""The incremental plan parser (model/plan_parser.py) and the tag vocabulary (model/tags.py).

Reference: docs/reference-algorithm.md §2.1, §2.2, §3.4, §3.7. Our parser replaces the reference's
mis-parses (first digit wins, unclosed promise silently dropped, zero promises assert) with exact
span lengths and typed `Malformed` events.
"""

from __future__ import annotations

import pytest

from plandiff.model.errors import CheckpointError
from plandiff.model.plan_parser import Malformed, PlanParser, RoundEnd, PromiseClosed
from plandiff.model.random_checkpoint import DREAM_IDS, build_tokenizer
from plandiff.model.tags import TagProfile, TagVocabulary

PROMISE = "<promise>-<topic>"
CLOSE = "</topic>"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("compact")


@pytest.fixture(scope="module")
def tags(tokenizer) -> TagVocabulary:
    return TagVocabulary.from_tokenizer(tokenizer)


@pytest.fixture()
def parser(tags) -> PlanParser:
    return PlanParser(tags)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def feed_all(parser: PlanParser, tokens: list[int]) -> list:
    """Feed every token; return the list of (index, event) for tokens that produced an event."""
    return [(i, e) for i, t in enumerate(tokens) if (e := parser.feed(t)) is not None]


def promise(topic_and_number: str) -> str:
    return f"{PROMISE}{topic_and_number}{CLOSE}"


# ----------------------------------------------------------------------------- tokenizer sanity


def test_tags_are_atomic_tokens_and_digits_single_tokens(tokenizer, tags):
    # The tests below rely on these; fail loudly if the tiny tokenizer changes.
    assert ids(tokenizer, PROMISE) == [tags.promise_open]
    assert ids(tokenizer, CLOSE) == [tags.promise_close]
    assert ids(tokenizer, "<sync/>") == [tags.sync]
    assert ids(tokenizer, "123") == [tags.digits[1], tags.digits[2], tags.digits[3]]


# ----------------------------------------------------------------------------- well-formed rounds


def test_single_promise_then_end(tokenizer, tags, parser):
    tokens = ids(tokenizer, promise("Definition 3") + "<|im_end|>")
    events = feed_all(parser, tokens)
    assert len(events) == 2
    (i0, span), (i1, end) = events
    assert i0 == len(tokens) - 2  # emitted on the </topic>
    assert isinstance(span, PromiseClosed)
    assert span.index == 0
    assert span.number == 3
    assert tokenizer.decode(list(span.topic_ids)).strip() == "Definition"
    assert i1 == len(tokens) - 1
    assert end == RoundEnd("end", 1)
    assert not parser.in_promise


def test_several_promises_then_sync(tokenizer, parser):
    text = promise("Definition 3") + promise("Causes 4") + promise("Summary 1") + "<sync/>"
    events = [e for _, e in feed_all(parser, ids(tokenizer, text))]
    assert [type(e) for e in events] == [PromiseClosed, PromiseClosed, PromiseClosed, RoundEnd]
    assert [e.index for e in events[:3]] == [0, 1, 2]
    assert [e.number for e in events[:3]] == [3, 4, 1]
    assert [tokenizer.decode(list(e.topic_ids)).strip() for e in events[:3]] == ["Definition", "Causes", "Summary"]
    assert events[3] == RoundEnd("sync", 3)


def test_promises_with_free_text_between(tokenizer, parser):
    text = "Here is my plan: " + promise("A 2") + " then " + promise("B 5") + " done<|im_end|>"
    events = [e for _, e in feed_all(parser, ids(tokenizer, text))]
    assert [e.number for e in events if isinstance(e, PromiseClosed)] == [2, 5]
    assert events[-1] == RoundEnd("end", 2)


def test_digit_inside_topic_is_topic_text(tokenizer, parser):
    """Reference §3.7: the first digit wins ("3"); we read the digits that end the promise."""
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise("Top 3 tips 5")))]
    assert len(events) == 1
    span = events[0]
    assert span.number == 5
    topic = tokenizer.decode(list(span.topic_ids))
    assert topic.strip() == "Top 3 tips"
    assert "3" in topic  # the topic's digit stays in the topic


def test_digits_only_topic(tokenizer, parser):
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise("7")))]
    assert events == [PromiseClosed(0, (), 7)]


@pytest.mark.parametrize("number", [10, 12, 99, 45])
def test_two_digit_length(tokenizer, parser, number):
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise(f"Steps {number}")))]
    assert [e.number for e in events] == [number]


@pytest.mark.parametrize("number", [100, 123, 999])
def test_three_digit_length(tokenizer, parser, number):
    """The reference reads at most two digits (§2.2); we read the whole trailing run."""
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise(f"Long part {number}")))]
    assert [e.number for e in events] == [number]
    assert tokenizer.decode(list(events[0].topic_ids)).strip() == "Long part"


def test_number_is_the_digit_run_right_before_close(tokenizer, parser):
    # "12 3": the run ending at </topic> is "3"; "12" belongs to the topic.
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise("Part 12 3")))]
    assert events[0].number == 3
    assert tokenizer.decode(list(events[0].topic_ids)).strip() == "Part 12"


# ----------------------------------------------------------------------------- malformed: inside a promise


@pytest.mark.parametrize("topic", ["No digits here", "", "Trailing digit 3 then words"])
def test_promise_without_trailing_digits_is_malformed(tokenizer, parser, topic):
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise(topic)))]
    assert len(events) == 1
    assert isinstance(events[0], Malformed)
    assert "length" in events[0].reason
    assert "</topic>" in events[0].reason


@pytest.mark.parametrize(
    "interrupt, name",
    [
        ("<sync/>", "<sync/>"),
        ("<|im_end|>", "end token"),
        ("<|endoftext|>", "end token"),
        (PROMISE, "new promise"),
        ("<async>", "<async>"),
        ("</async>", "</async>"),
        ("[PAD]", "[PAD]"),
        ("<|mask|>", "mask"),
    ],
)
def test_unclosed_promise_interrupted_is_malformed(tokenizer, parser, interrupt, name):
    tokens = ids(tokenizer, PROMISE + "Causes 4" + interrupt)
    assert len(ids(tokenizer, interrupt)) == 1
    events = feed_all(parser, tokens)
    assert len(events) == 1, events
    index, event = events[0]
    assert index == len(tokens) - 1  # reported on the interrupting token, not before
    assert isinstance(event, Malformed)
    assert name in event.reason
    assert "unclosed" in event.reason


def test_unclosed_promise_after_a_good_one(tokenizer, parser):
    tokens = ids(tokenizer, promise("Intro 2") + PROMISE + "Body 3<sync/>")
    events = [e for _, e in feed_all(parser, tokens)]
    assert isinstance(events[0], PromiseClosed)
    assert isinstance(events[1], Malformed)
    assert "<sync/>" in events[1].reason
    assert len(events) == 2


# ----------------------------------------------------------------------------- malformed: outside a promise


@pytest.mark.parametrize(
    "stray, name",
    [
        (CLOSE, "</topic>"),
        ("<async>", "<async>"),
        ("</async>", "</async>"),
        ("[PAD]", "[PAD]"),
        ("<|mask|>", "mask"),
    ],
)
def test_stray_tag_outside_promise_is_malformed(tokenizer, parser, stray, name):
    tokens = ids(tokenizer, "Some text " + stray)
    events = feed_all(parser, tokens)
    assert len(events) == 1
    index, event = events[0]
    assert index == len(tokens) - 1
    assert isinstance(event, Malformed)
    assert name in event.reason
    assert "outside" in event.reason


@pytest.mark.parametrize("stray", [CLOSE, "<async>", "</async>", "[PAD]", "<|mask|>"])
def test_stray_tag_between_promises_is_malformed(tokenizer, parser, stray):
    tokens = ids(tokenizer, promise("A 1") + stray + promise("B 2") + "<|im_end|>")
    events = [e for _, e in feed_all(parser, tokens)]
    assert isinstance(events[0], PromiseClosed)
    # Everything after the stray tag is Malformed: the second promise is never reported.
    assert all(isinstance(e, Malformed) for e in events[1:])
    assert not any(isinstance(e, (PromiseClosed, RoundEnd)) for e in events[1:])


# ----------------------------------------------------------------------------- zero-promise rounds


def test_plain_answer_ends_round_with_zero_spans(tokenizer, parser):
    """The reference asserts on zero promises (§3.7); we report a plain answer."""
    events = [e for _, e in feed_all(parser, ids(tokenizer, "Just an answer.<|im_end|>"))]
    assert events == [RoundEnd("end", 0)]


def test_empty_round_ended_by_endoftext(tokenizer, parser):
    assert parser.feed(ids(tokenizer, "<|endoftext|>")[0]) == RoundEnd("end", 0)


def test_sync_with_zero_promises(tokenizer, parser):
    events = [e for _, e in feed_all(parser, ids(tokenizer, "thinking<sync/>"))]
    assert events == [RoundEnd("sync", 0)]


def test_immediate_sync(tags, parser):
    assert parser.feed(tags.sync) == RoundEnd("sync", 0)


# ----------------------------------------------------------------------------- sticky failure, reset


def test_after_malformed_every_feed_is_malformed(tokenizer, tags, parser):
    first = parser.feed(tags.span_open)
    assert isinstance(first, Malformed)
    followups = ids(tokenizer, "text " + promise("A 3") + "<sync/><|im_end|>")
    for token in followups:
        event = parser.feed(token)
        assert isinstance(event, Malformed)
        assert event.reason == first.reason


def test_reset_starts_a_clean_round(tokenizer, tags, parser):
    assert isinstance(parser.feed(tags.pad), Malformed)
    parser.reset()
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise("Again 2") + "<sync/>"))]
    assert events == [PromiseClosed(0, events[0].topic_ids, 2), RoundEnd("sync", 1)]


def test_reset_restarts_span_index_and_count(tokenizer, parser):
    feed_all(parser, ids(tokenizer, promise("A 1") + promise("B 2") + "<sync/>"))
    parser.reset()
    events = [e for _, e in feed_all(parser, ids(tokenizer, promise("C 3") + "<|im_end|>"))]
    assert events[0].index == 0
    assert events[1] == RoundEnd("end", 1)


def test_reset_clears_an_open_promise(tokenizer, tags, parser):
    for t in ids(tokenizer, PROMISE + "Half"):
        parser.feed(t)
    assert parser.in_promise
    parser.reset()
    assert not parser.in_promise
    # A </topic> is now stray, not the close of the old promise.
    assert isinstance(parser.feed(tags.promise_close), Malformed)


# ----------------------------------------------------------------------------- free text


def test_free_text_outside_promises_produces_no_event(tokenizer, tags, parser):
    text = "Hello, world! 123 numbers and <|im_start|> chat tokens\n"
    tokens = ids(tokenizer, text)
    assert len(tokens) > 10
    assert all(parser.feed(t) is None for t in tokens)
    assert not parser.in_promise
    # ... and the round still ends normally, with no promise.
    assert parser.feed(tags.end[0]) == RoundEnd("end", 0)


def test_topic_tokens_produce_no_event_until_close(tokenizer, tags, parser):
    tokens = ids(tokenizer, PROMISE + "Some topic 42")
    assert all(parser.feed(t) is None for t in tokens)
    assert parser.in_promise
    event = parser.feed(tags.promise_close)
    assert isinstance(event, PromiseClosed) and event.number == 42


# ----------------------------------------------------------------------------- TagVocabulary


def test_compact_ids_resolved_by_string(tokenizer, tags):
    vocab = tokenizer.get_vocab()
    assert tags.promise_open == vocab["<promise>-<topic>"]
    assert tags.promise_close == vocab["</topic>"]
    assert tags.span_open == vocab["<async>"]
    assert tags.span_close == vocab["</async>"]
    assert tags.sync == vocab["<sync/>"]
    assert tags.pad == vocab["[PAD]"]
    assert tags.mask == vocab["<|mask|>"]
    assert tags.end == (vocab["<|im_end|>"], vocab["<|endoftext|>"])
    assert tags.digits == tuple(range(15, 25))
    assert tags.span_length_unit == 10
    # compact layout: tags right after the 256 byte ids
    assert all(256 <= t < 272 for t in tags.structural)
    assert len(tags.structural) == 9


def test_dream_ids_resolved_by_string():
    tags = TagVocabulary.from_tokenizer(build_tokenizer("dream"))
    assert tags.sync == 151671
    assert tags.mask == 151666
    assert tags.promise_open == 151669
    assert tags.promise_close == 151670
    assert tags.span_open == 151667
    assert tags.span_close == 151668
    assert tags.pad == 151672
    assert tags.end == (151645, 151643)
    assert tags.digits == tuple(range(15, 25))
    assert tags.sync == DREAM_IDS["<sync/>"]


def test_digit_value(tags):
    assert [tags.digit_value(15 + d) for d in range(10)] == list(range(10))
    assert tags.digit_value(14) is None
    assert tags.digit_value(25) is None
    assert tags.digit_value(tags.sync) is None


def test_profile_override_to_missing_tag_raises(tokenizer):
    profile = TagProfile.from_overrides({"sync": "<nope/>"})
    assert profile.sync == "<nope/>"
    with pytest.raises(CheckpointError) as info:
        TagVocabulary.from_tokenizer(tokenizer, profile)
    assert "<nope/>" in str(info.value)
    assert "sync" in str(info.value)


def test_profile_override_unknown_key_raises():
    with pytest.raises(CheckpointError) as info:
        TagProfile.from_overrides({"snyc": "<sync/>"})
    assert "snyc" in str(info.value)


def test_profile_override_to_existing_token_is_used(tokenizer):
    profile = TagProfile.from_overrides({"sync": "<|im_start|>", "span_length_unit": 1, "end": "<|im_end|>"})
    tags = TagVocabulary.from_tokenizer(tokenizer, profile)
    assert tags.sync == tokenizer.get_vocab()["<|im_start|>"]
    assert tags.end == (tokenizer.get_vocab()["<|im_end|>"],)
    assert tags.span_length_unit == 1
    # The parser follows the vocabulary it was given.
    assert PlanParser(tags).feed(tags.sync) == RoundEnd("sync", 0)
    assert PlanParser(tags).feed(tokenizer.get_vocab()["<|endoftext|>"]) is None


def test_profile_without_any_end_token_raises(tokenizer):
    with pytest.raises(CheckpointError):
        TagVocabulary.from_tokenizer(tokenizer, TagProfile.from_overrides({"end": ["<nothing>"]}))


def test_no_overrides_is_default_profile():
    assert TagProfile.from_overrides(None) == TagProfile()
    assert TagProfile.from_overrides({}) == TagProfile()
