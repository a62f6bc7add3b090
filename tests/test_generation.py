"""The per-request state machine: cache semantics, modes, forced plans, and every defined outcome."""

import dataclasses

import pytest
import torch

from plandiff.model import (
    GenerationOptions, InvalidPlanError, InvalidRequestError, MalformedPlanError, PromptTooLongError,
)
from plandiff.model.generation import Phase
from plandiff.model.result import strip_tags
from plandiff.model.tags import TagProfile

TWO_ROUNDS = ("<promise>-<topic>alpha 3</topic><promise>-<topic>beta 5</topic><promise>-<topic>gamma 2</topic>"
              "<sync/><promise>-<topic>delta 4</topic><|im_end|>")


def script(runtime, text_rounds):
    """A planning logits processor that makes the model itself write the given text, round by round."""
    rounds = [runtime.tokenizer.encode(t, add_special_tokens=False) for t in text_rounds]
    state = {"round": -1}

    def processor(round_tokens, logits):
        if not round_tokens:
            state["round"] += 1
        tokens = rounds[state["round"]]
        logits = torch.full_like(logits, torch.finfo(logits.dtype).min)
        logits[tokens[min(len(round_tokens), len(tokens) - 1)]] = 0
        return logits

    return processor


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("order,ratio", [("entropy", 1.0), ("confidence", 0.5), ("margin", 0.25), ("threshold", 0.5)])
def test_cached_equals_uncached_under_exact_refresh(compact, dense, order, ratio):
    common = dict(dense=dense, order=order, steps_ratio=ratio, threshold=0.3 if order == "threshold" else None,
                  length_scale=1.5)
    cached = compact.generate("Tell me two things.", GenerationOptions(**common), plan=TWO_ROUNDS)
    uncached = compact.generate("Tell me two things.", GenerationOptions(kv_cache=False, **common), plan=TWO_ROUNDS)
    assert cached.token_ids == uncached.token_ids
    assert cached.usage.critical_path == uncached.usage.critical_path
    assert compact.tags.mask not in cached.token_ids


def test_adaptive_order_commits_confident_slots_beyond_the_schedule(compact):
    """τ = 1 admits no extra slot: the confidence order on the schedule, token for token. A τ every
    slot reaches commits each span at once: one step per round. Between, never more steps."""
    def run(**options):
        return compact.generate("Tell me two things.", GenerationOptions(length_scale=1.5, **options), plan=TWO_ROUNDS)

    schedule = run(order="confidence")
    strict = run(order="adaptive", threshold=1.0)
    assert strict.token_ids == schedule.token_ids and strict.usage.critical_path == schedule.usage.critical_path
    eager = run(order="adaptive", threshold=1e-9)
    assert all(r.denoise_steps == 1 for r in eager.rounds if r.spans)
    assert compact.tags.mask not in eager.token_ids
    middle = run(order="adaptive", threshold=0.05)
    assert eager.usage.critical_path <= middle.usage.critical_path <= schedule.usage.critical_path


def test_free_planning_cached_equals_uncached(compact):
    cached = compact.generate("Hi", GenerationOptions(max_new_tokens=24))
    uncached = compact.generate("Hi", GenerationOptions(max_new_tokens=24, kv_cache=False))
    assert cached.token_ids == uncached.token_ids and len(cached.token_ids) == 24
    assert cached.finish_reason == "length"


def test_exact_refresh_costs_no_extra_forward(compact):
    exact = compact.generate("x", GenerationOptions(), plan=TWO_ROUNDS)
    stale = compact.generate("x", GenerationOptions(kv_refresh="reference"), plan=TWO_ROUNDS)
    assert exact.usage.critical_path == stale.usage.critical_path
    # critical path = per round (planning tokens incl. its stop) + that round's denoising steps
    plan_tokens = [len(r.plan_ids) + 1 for r in exact.rounds]
    assert exact.usage.critical_path == sum(plan_tokens) + sum(exact.usage.steps_per_round)
    assert exact.usage.steps_per_round == [50, 40]  # longest span × 10 × steps_ratio 1.0


def drive(runtime, options, plan):
    """Run a request alone, recording every forward's phase and positions."""
    state = runtime.new_state(runtime.encode_prompt("x"), options, runtime.encode_plan(plan))
    seq = runtime.runner.admit(state)
    log = []
    while state.phase is not Phase.DONE:
        forward = state.schedule()
        log.append((state.phase, list(forward.positions), [s for s in state._spans]))
        assert runtime.runner.step([seq], [forward]) == [None]
    runtime.runner.release(seq)
    return state, log


def test_denoising_recomputes_only_live_spans(compact):
    state, log = drive(compact, GenerationOptions(kv_refresh="reference"), TWO_ROUNDS)
    first = state.rounds[0].spans
    denoise = [positions for phase, positions, _ in log if phase is Phase.DENOISE][:50]
    # the 30-slot span finishes after 30 steps: from then on only the 50-slot span is computed
    alpha, beta = first[0], first[1]
    assert set(range(alpha.start, alpha.end)) <= set(denoise[29])
    assert not set(range(alpha.start, alpha.end)) & set(denoise[30])
    assert set(denoise[49]) == set(range(beta.start, beta.end))
    # no forward recomputes the prompt or the plan while denoising
    assert all(min(p) >= alpha.start for p in denoise)


def test_exact_refresh_recomputes_a_finished_span_once(compact):
    state, log = drive(compact, GenerationOptions(kv_refresh="exact"), TWO_ROUNDS)
    alpha = state.rounds[0].spans[0]
    span = set(range(alpha.start, alpha.end))
    containing = [i for i, (_, positions, _) in enumerate(log) if span & set(positions)]
    plan_forwards_round0 = state.rounds[0].plan_forwards
    # steps 0..29 fill it; step 30 refreshes it with its final tokens; never again
    assert containing == list(range(plan_forwards_round0, plan_forwards_round0 + 31))


def test_sync_forward_refreshes_the_joined_round(compact):
    state, log = drive(compact, GenerationOptions(kv_refresh="exact"), TWO_ROUNDS)
    sync_at = state.rounds[1].plan_start - 1
    sync_forward = next(positions for _, positions, _ in log if sync_at in positions)
    beta = state.rounds[0].spans[1]  # the longest span is still dirty after the last step
    assert set(range(beta.start, beta.end)) <= set(sync_forward)
    _, stale_log = drive(compact, GenerationOptions(kv_refresh="reference"), TWO_ROUNDS)
    assert next(p for _, p, _ in stale_log if sync_at in p) == [sync_at]


def test_result_carries_plan_spans_and_text(compact):
    result = compact.generate("x", GenerationOptions(), plan=TWO_ROUNDS)
    assert [(s.round, s.topic, s.length) for s in result.spans] == [
        (0, "alpha", 30), (0, "beta", 50), (0, "gamma", 20), (1, "delta", 40)]
    assert [r.stop for r in result.rounds] == ["sync", "end"]
    assert result.finish_reason == "end"
    for span in result.spans:
        assert len(span.token_ids) == span.length
    # the answer keeps no tag, and the token ids hold the plan, the scaffold tags and the sync
    assert "<async>" not in result.text and "<sync/>" not in result.text and "topic" not in result.text
    tags = compact.tags
    assert result.token_ids.count(tags.span_open) == 4 and result.token_ids.count(tags.sync) == 1
    assert tags.end[0] not in result.token_ids
    plain = result.to_dict()  # what DoneEvent carries: asdict's, copied without its per-id recursion
    assert plain == dataclasses.asdict(result)
    assert plain["token_ids"] is not result.token_ids and plain["rounds"][0]["spans"][0]["token_ids"] is not \
        result.rounds[0].spans[0].token_ids


def test_autoregressive_mode_never_writes_tags(compact):
    processor = script(compact, ["<promise>-<topic>a 1</topic><|im_end|>"])  # would plan if it could
    result = compact.generate("x", GenerationOptions(mode="autoregressive", max_new_tokens=10))
    assert not set(result.token_ids) & compact.tags.structural
    assert result.usage.critical_path == 10 and result.finish_reason == "length"
    scripted = compact.generate("x", GenerationOptions(mode="autoregressive", max_new_tokens=10),
                                logits_processor=processor)
    assert not set(scripted.token_ids) & (compact.tags.structural - set(compact.tags.end))


def test_diffusion_mode_fills_the_whole_answer(compact):
    result = compact.generate("x", GenerationOptions(mode="diffusion", max_new_tokens=20, steps_ratio=0.5))
    assert result.usage.critical_path == 10 == result.usage.steps_per_round[0]
    assert compact.tags.mask not in result.token_ids
    assert len(result.token_ids) <= 20


def test_plain_answer_round_without_spans(compact):
    result = compact.generate("x", GenerationOptions(), plan="hello there<|im_end|>")
    assert result.finish_reason == "end" and result.spans == []
    assert result.text == "hello there"


def test_empty_join_round(compact):
    result = compact.generate("x", GenerationOptions(), plan="ok<sync/><promise>-<topic>a 1</topic><|im_end|>")
    assert [r.stop for r in result.rounds] == ["sync", "end"] and len(result.spans) == 1


def test_malformed_plan_falls_back_to_autoregressive(compact):
    processor = script(compact, ["<promise>-<topic>no length</topic>"])
    result = compact.generate("x", GenerationOptions(max_new_tokens=30, constrained=False),
                              logits_processor=processor)
    assert result.fallback == "a promise has no length before </topic>"
    assert result.spans == [] and len(result.token_ids) == 30 and result.finish_reason == "length"
    # after the fallback no further tag is written
    close = result.token_ids.index(compact.tags.promise_close)
    assert not set(result.token_ids[close + 1:]) & compact.tags.structural


def test_malformed_plan_can_raise_with_everything_generated(compact):
    processor = script(compact, ["<promise>-<topic>oops<sync/>"])
    with pytest.raises(MalformedPlanError) as info:
        compact.generate("x", GenerationOptions(on_malformed_plan="raise", constrained=False),
                         logits_processor=processor)
    assert "unclosed promise" in info.value.reason
    assert info.value.token_ids[-1] == compact.tags.sync and info.value.token_ids[0] == compact.tags.promise_open


def test_model_span_over_the_maximum_is_clamped(compact):
    processor = script(compact, ["<promise>-<topic>huge 99</topic><|im_end|>"])
    result = compact.generate("x", GenerationOptions(max_span_length=40, constrained=False),
                              logits_processor=processor)
    (span,) = result.spans
    assert span.clamped and span.length == 40 and len(span.token_ids) == 40


def test_forced_span_over_the_maximum_is_rejected(compact):
    with pytest.raises(InvalidPlanError, match="max_span_length"):
        compact.generate("x", GenerationOptions(max_span_length=40), plan="<promise>-<topic>huge 99</topic><|im_end|>")


@pytest.mark.parametrize("plan,message", [
    ("<promise>-<topic>a 1</topic><sync/>", "is the last but ends with <sync/>"),
    ("<promise>-<topic>a 1</topic>", "does not end"),
    ("<promise>-<topic>a 1</topic><|im_end|><promise>-<topic>b 1</topic><|im_end|>", "tokens follow"),
    ("<promise>-<topic>a</topic><|im_end|>", "no length"),
    ("<async><|im_end|>", "outside a promise"),
])
def test_invalid_forced_plans(compact, plan, message):
    with pytest.raises(InvalidPlanError, match=message):
        compact.generate("x", GenerationOptions(), plan=plan)


def test_max_new_tokens_inside_a_plan(compact):
    processor = script(compact, ["<promise>-<topic>a very long topic that goes on 3</topic><|im_end|>"])
    result = compact.generate("x", GenerationOptions(max_new_tokens=8), logits_processor=processor)
    assert result.finish_reason == "length" and len(result.token_ids) == 8
    assert result.rounds[0].stop is None and result.spans == []


def test_scaffold_that_would_not_fit_is_not_built(compact):
    plan = "<promise>-<topic>a 9</topic><|im_end|>"  # 90 slots
    result = compact.generate("x", GenerationOptions(max_new_tokens=40), plan=plan)
    assert result.finish_reason == "length" and result.spans == []
    assert compact.tags.mask not in result.token_ids and len(result.token_ids) <= 40


def test_prompt_longer_than_the_context(compact):
    too_long = [100] * compact.checkpoint.config.max_position_embeddings
    with pytest.raises(PromptTooLongError, match="context holds"):
        compact.generate(too_long, GenerationOptions())
    with pytest.raises(InvalidRequestError, match="empty"):
        compact.generate([], GenerationOptions())


@pytest.mark.parametrize("bad", [
    dict(steps_ratio=0), dict(steps_ratio=1.5), dict(order="threshold"), dict(order="adaptive"), dict(threshold=2.0),
    dict(max_new_tokens=0), dict(length_scale=-1.0), dict(kv_refresh="sometimes"), dict(mode="fast"),
])
def test_invalid_options(bad):
    with pytest.raises(InvalidRequestError):
        GenerationOptions(**bad)


def test_the_context_bounds_generation(compact):
    limit = compact.checkpoint.config.max_position_embeddings
    prompt = [100] * (limit - 5)
    result = compact.generate(prompt, GenerationOptions(max_new_tokens=500))
    assert len(result.token_ids) == 5 and result.finish_reason == "length"


def test_sampling_is_seeded_per_request(compact):
    a, b, c = (compact.generate("x", GenerationOptions(temperature=1.0, seed=seed), plan=TWO_ROUNDS)
               for seed in (7, 7, 8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_strip_tags_matches_the_reference_rules():
    decoded = ("<promise>-<topic>Def 3</topic><promise>-<topic>List 2</topic><async>Aurora is light.[PAD][PAD]"
               "</async><async>1. sun\n2. wind</async><sync/><promise>-<topic>multi\nline 1</topic>"
               "<async>Done.</async>")
    assert strip_tags(decoded, TagProfile()) == "Aurora is light. \n1. sun\n2. wind Done."
