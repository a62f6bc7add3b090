"""Constrained planning, per-request bounds, span-overflow retries, events, and resuming elsewhere."""

import pytest
import torch

from plandiff.model import GenerationOptions, InvalidPlanError, InvalidRequestError
from plandiff.model.decisions import decide
from plandiff.model.events import (
    DenoiseStep, Finished, PlanToken, RoundJoined, RoundPlanned, RoundReplanned, SpanFilled, SpanPromised, SpanRetried,
)
from plandiff.model.generation import Phase
from plandiff.model.plan_parser import Malformed, PlanParser

PLAN = ("<promise>-<topic>alpha 2</topic><promise>-<topic>beta 4</topic><sync/>"
        "<promise>-<topic>gamma 1</topic><|im_end|>")


def preferring(runtime, texts, boost=1e4):
    """A processor that pushes the given tokens up but leaves every other logit as the model made it,
    so that when a constraint bans them the model's own next choice wins. (Use with top_k off: a
    token that top-k already removed stays removed.)"""
    ids = [i for t in texts for i in runtime.tokenizer.encode(t, add_special_tokens=False)]

    def processor(round_tokens, logits):
        logits = logits.clone()
        logits[ids] += boost
        return logits

    return processor


def run_with_events(runtime, prompt, options, plan=None, processor=None):
    state = runtime.new_state(runtime.encode_prompt(prompt), options,
                              runtime.encode_plan(plan) if plan else None, processor)
    runtime.run(state)
    return state, state.drain()


def test_constrained_planning_only_writes_plans_that_parse(compact):
    hostile = preferring(compact, ["</topic>", "<async>", "[PAD]", "<|mask|>", "</async>", "<promise>-<topic>"])
    state, _ = run_with_events(compact, "x", GenerationOptions(max_new_tokens=200, top_k=None),
                               processor=hostile)
    assert state.fallback is None
    parser = PlanParser(compact.tags)
    for r in state.rounds:
        parser.reset()
        for token in state.tokens[r.plan_start: r.plan_end if r.plan_end >= 0 else len(state.tokens)]:
            assert not isinstance(parser.feed(token), Malformed)
    unconstrained, _ = run_with_events(compact, "x", GenerationOptions(max_new_tokens=200, constrained=False,
                                                                     top_k=None),
                                       processor=hostile)
    assert unconstrained.fallback is not None  # the same push breaks the plan without the constraint


def test_span_rounds_and_length_bounds(compact):
    greedy_planner = preferring(compact, ["<promise>-<topic>", "9", "</topic>", "<sync/>"])
    opts = GenerationOptions(max_new_tokens=1500, max_spans=2, max_rounds=2, max_span_length=30, top_k=None)
    state, events = run_with_events(compact, "x", opts, processor=greedy_planner)
    planned = [e for e in events if isinstance(e, RoundPlanned)]
    assert 1 <= len(planned) <= 2 and all(len(e.spans) <= 2 for e in planned)
    assert all(s.length <= 30 for e in planned for s in e.spans)
    assert state.rounds[-1].stop != "sync"  # no <sync/> in the last allowed round


def test_a_planning_round_is_bounded(compact):
    state, events = run_with_events(compact, "x", GenerationOptions(max_plan_tokens=12, max_new_tokens=500))
    assert state.finish_reason == "length"
    assert len(state.tokens) - state.rounds[-1].plan_start == 12
    assert isinstance(events[-1], Finished) and events[-1].reason == "length"


def test_a_topic_is_bounded(compact):
    """A planner pushed to write answer text into a topic is cut off at max_topic_tokens: the
    length follows."""
    words, promise = preferring(compact, [" and", " lives", " in"]), preferring(compact, ["<promise>-<topic>"], 2e4)
    state, events = run_with_events(compact, "x", GenerationOptions(max_new_tokens=100, max_topic_tokens=3, max_spans=2,
                                                                    max_plan_tokens=40, top_k=None),
                                    processor=lambda tokens, logits: promise(tokens, words(tokens, logits)))
    promised = [e for e in events if isinstance(e, SpanPromised)]
    assert state.fallback is None and len(promised) == 2
    assert all(len(e.topic_ids) == 3 for e in promised)
    with pytest.raises(InvalidPlanError, match="max_topic_tokens"):
        compact.generate("x", GenerationOptions(max_topic_tokens=1), plan="<promise>-<topic>alpha beta 2</topic><|im_end|>")


def test_a_topic_at_its_bound_is_bounded_in_a_batched_decision_too(compact):
    """Without a logits processor a planning token is decided on the device for its decision
    group: at max_topic_tokens the group must not let a word through where only a length may come."""
    plan = compact.encode_plan("<promise>-<topic>alpha beta gamma 2</topic><|im_end|>")[0]
    state = compact.new_state(compact.encode_prompt("x"), GenerationOptions(max_topic_tokens=2))
    while state.parser.topic is None or len(state.parser.topic) < 2:
        state.advance(state.schedule(), None, plan[len(state.tokens) - state.prompt_length])
    word = plan[len(state.tokens) - state.prompt_length]  # "gamma", a third topic token
    logits = torch.zeros(1, compact.network.config.vocab_size)
    logits[0, word] = 10.0
    forward = state.schedule()
    group = state.decision_group(forward)  # as the model runner decides: for the group, or alone
    state.advance(forward, logits, None if group is None else int(decide(group, logits)[0]))
    assert state.tokens[-1] in compact.codec.tags.digits


def test_forced_plans_respect_the_bounds(compact):
    with pytest.raises(InvalidPlanError, match="max_rounds"):
        compact.generate("x", GenerationOptions(max_rounds=1), plan=PLAN)
    with pytest.raises(InvalidPlanError, match="max_spans"):
        compact.generate("x", GenerationOptions(max_spans=1), plan=PLAN)
    with pytest.raises(InvalidPlanError, match="max_plan_tokens"):
        compact.generate("x", GenerationOptions(max_plan_tokens=5), plan=PLAN)


def test_events_tell_the_story_in_order(compact):
    state, events = run_with_events(compact, "x", GenerationOptions(), plan=PLAN)
    kinds = [type(e) for e in events]
    assert kinds[-1] is Finished and kinds.count(RoundJoined) == 2 and kinds.count(RoundPlanned) == 2
    first_planned = kinds.index(RoundPlanned)
    assert set(kinds[:first_planned]) == {PlanToken, SpanPromised}
    promised = [e for e in events[:first_planned] if isinstance(e, SpanPromised)]
    assert [(e.round, e.index, e.length) for e in promised] == [(0, 0, 20), (0, 1, 40)]
    # each promise is reported right after the token that closed it
    assert all(kinds[events.index(e) - 1] is PlanToken for e in promised)
    filled = [e for e in events if isinstance(e, SpanFilled)]
    assert [(e.round, e.index, len(e.token_ids)) for e in sorted(filled, key=lambda e: (e.round, e.index))] == [
        (0, 0, 20), (0, 1, 40), (1, 0, 10)]
    steps = [e for e in events if isinstance(e, DenoiseStep) and e.round == 0]
    assert len(steps) == 40 and steps[-1].filled == (20, 40)
    joined = [e for e in events if isinstance(e, RoundJoined)]
    assert list(joined[-1].generated) == state.tokens[state.prompt_length:]


def test_overflowing_spans_are_retried_longer(compact):
    # The random model never writes [PAD], so every span fills all its slots: an overflow.
    opts = GenerationOptions(on_overflow="retry", max_span_length=40, max_overflow_retries=1)
    state, events = run_with_events(compact, "x", opts, plan=PLAN)
    retried = [e for e in events if isinstance(e, SpanRetried)]
    assert [(e.round, e.index, e.previous, e.length) for e in retried] == [(0, 0, 20, 40), (1, 0, 10, 20)]
    assert state.retries == 2
    spans = state.rounds[0].spans
    assert [s.length for s in spans] == [40, 40]
    # beta (already at the bound) kept the content it had before alpha was retried
    first_beta = next(e for e in events if isinstance(e, SpanFilled) and e.round == 0 and e.index == 1)
    assert tuple(state.tokens[spans[1].start + 1: spans[1].end - 1]) == first_beta.token_ids
    accepted = compact.generate("x", GenerationOptions(max_span_length=40), plan=PLAN)
    assert [s.length for s in accepted.spans] == [20, 40, 10]


@pytest.mark.parametrize("kv_refresh", ["exact", "reference"])
def test_retry_is_the_same_with_and_without_the_cache(compact, kv_refresh):
    common = dict(on_overflow="retry", max_span_length=40)
    cached = compact.generate("x", GenerationOptions(kv_refresh=kv_refresh, **common), plan=PLAN)
    uncached = compact.generate("x", GenerationOptions(kv_cache=False, **common), plan=PLAN)
    if kv_refresh == "exact":
        assert cached.token_ids == uncached.token_ids
    assert compact.tags.mask not in cached.token_ids


def committed_prefixes(events):
    """What an orchestrator has seen committed after each event: joined rounds, then plan tokens."""
    committed, prefixes = [], []
    for e in events:
        if isinstance(e, PlanToken):
            committed = committed + [e.token]
        elif isinstance(e, RoundJoined):
            committed = list(e.generated)
        prefixes.append(committed)
    return prefixes


@pytest.mark.parametrize("plan", [PLAN, None])
def test_resume_from_any_committed_prefix_gives_the_same_answer(compact, plan):
    opts = GenerationOptions(max_new_tokens=120)
    whole, events = run_with_events(compact, "x", opts, plan=plan)
    prefixes = committed_prefixes(events)
    for cut in sorted({0, 3, len(prefixes) // 3, len(prefixes) // 2, len(prefixes) - 2}):
        state = compact.new_state(compact.encode_prompt("x"), opts, compact.encode_plan(plan) if plan else None)
        state.resume(prefixes[cut])
        if state.phase is not Phase.DONE:
            assert state.schedule().fresh_cache
            compact.run(state)
        assert state.tokens == whole.tokens, f"cut after event {cut}"


def test_resume_rejects_tokens_that_are_not_a_prefix(compact):
    state = compact.new_state(compact.encode_prompt("x"), GenerationOptions())
    with pytest.raises(InvalidRequestError, match="scaffold"):
        state.resume(compact.tokenizer.encode("<promise>-<topic>a 1</topic><async>", add_special_tokens=False)
                     + [compact.tags.mask])


def test_zero_length_spans_need_no_denoising(compact):
    result = compact.generate("x", GenerationOptions(), plan="<promise>-<topic>nothing 0</topic><|im_end|>")
    assert result.finish_reason == "end" and result.usage.steps_per_round == [0]
    assert [s.length for s in result.spans] == [0]


def test_constraint_keeps_reference_parity_on_well_formed_plans(dream):
    """Constrained planning bans nothing a well-formed plan needs (the parity fixture runs with it on)."""
    from tests.test_reference_parity import CASES, run

    case = next(c for c in CASES if len(c["plan_rounds"]) > 1)
    assert case["prompt_ids"] + run(dream, case).token_ids == case["expected_ids"]
    assert case["prompt_ids"] + run(dream, case, constrained=False).token_ids == case["expected_ids"]


def test_new_bounds_are_validated():
    for bad in (dict(max_spans=0), dict(max_rounds=0), dict(max_plan_tokens=0), dict(on_overflow="grow"),
                dict(overflow_growth=1.0), dict(max_overflow_retries=-1)):
        with pytest.raises(InvalidRequestError):
            GenerationOptions(**bad)


def test_processor_sees_only_filtered_logits(compact):
    seen = []

    def spy(round_tokens, logits):
        seen.append(int((logits > torch.finfo(logits.dtype).min).sum()))
        return logits

    compact.generate("x", GenerationOptions(max_new_tokens=3), logits_processor=spy)
    assert seen and all(n <= 50 for n in seen)  # top_k 50 ran before the processor


def scripted_planner(runtime, topic="alpha"):
    """Plans one span whose length is the smallest number the constraints allow: "<promise>-<topic>"
    then `topic`, then digits in rising order of preference, then the close, then the end. The model
    never writes [PAD], so every span it fills overflows."""
    tags, encode = runtime.tags, runtime.tokenizer.encode
    opener = encode("<promise>-<topic>", add_special_tokens=False)
    words = encode(topic, add_special_tokens=False)

    def processor(round_tokens, logits):
        logits = logits.clone()
        parser = PlanParser(tags)
        for t in round_tokens:
            parser.feed(t)
        if parser.topic is None:
            wanted = [tags.end[0]] if parser.promises else opener[:1]
        elif len(parser.topic) < len(opener) - 1 + len(words):
            wanted = (opener[1:] + words)[len(parser.topic):][:1]
        else:
            wanted = [tags.promise_close] + list(tags.digits[1:])  # close first, then 1, 2, … 9
        for rank, token in enumerate(wanted):
            logits[token] += 1e4 - 100 * rank
        return logits

    return processor


def test_overflowing_spans_are_replanned_longer(compact):
    opts = GenerationOptions(on_overflow="replan", max_overflow_retries=2, max_span_length=60, top_k=None)
    state, events = run_with_events(compact, "x", opts, processor=scripted_planner(compact))
    replanned = [e for e in events if isinstance(e, RoundReplanned)]
    # 10 slots overflow → the round is planned again with a promise of 20 to 40 slots, then 40 to 60
    # (max_span_length), then accepted
    assert [e.bounds for e in replanned] == [((0, 2, 4),), ((0, 4, 6),)]
    promised = [e.length for e in events if isinstance(e, SpanPromised)]
    assert promised == [10, 20, 40]
    result = compact.result(state)
    assert result.finish_reason == "end" and result.usage.replans == 2 and result.rounds[0].replans == 2
    assert [s.length for s in result.spans] == [40]
    # each plan cost its forwards again: three plans of the same length, three denoising rounds
    assert result.rounds[0].plan_forwards == 3 * len(result.rounds[0].plan_ids) + 3
    assert not state._bounds  # the bounds held for that round only


def test_replan_bounds_promises_to_what_max_span_length_allows(compact):
    # 5 slots → 10 (5 per unit: numbers 2 only, as 15 and 20 exceed max_span_length 12); then no
    # longer promise fits, so the 10-slot span is kept although a second re-plan was allowed
    opts = GenerationOptions(on_overflow="replan", max_overflow_retries=2, max_span_length=12, length_scale=5.0,
                             top_k=None)
    state, events = run_with_events(compact, "x", opts, processor=scripted_planner(compact))
    assert [e.bounds for e in events if isinstance(e, RoundReplanned)] == [((0, 2, 2),)]
    assert [e.length for e in events if isinstance(e, SpanPromised)] == [5, 10]
    assert compact.result(state).usage.replans == 1
