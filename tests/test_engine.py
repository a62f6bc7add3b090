"""The batched engine: batching changes nothing, memory leaves with the request, and through the
local executor many requests share forwards."""

import asyncio
from pathlib import Path

import pytest
import torch

from plandiff.model import GenerationOptions, ModelRuntime
from plandiff.model.codec import TextCodec
from plandiff.model.generation import Phase
from plandiff.model.random_checkpoint import build_random_checkpoint
from plandiff.orchestrator.executors import LocalExecutor
from plandiff.orchestrator.orchestrator import GenerateRequest, Orchestrator
from plandiff.workers.engine import Engine

PLAN = ("<promise>-<topic>alpha 2</topic><promise>-<topic>beta 4</topic><sync/>"
        "<promise>-<topic>gamma 1</topic><|im_end|>")
SHORT = "<promise>-<topic>a 1</topic><promise>-<topic>b 3</topic><promise>-<topic>c 0</topic><|im_end|>"
DEMO = Path(__file__).parents[1] / "model" / "demo" / "pd"

# (prompt, plan, options): planned and autoregressive, dense and sparse, each order, both refresh
# schemes, an overflow retry (the random model never writes [PAD]: every span overflows), sampling.
FORCED = [
    ("a", PLAN, GenerationOptions()),
    ("bb", PLAN, GenerationOptions(dense=True, order="confidence")),
    ("c", SHORT, GenerationOptions(order="margin", kv_refresh="reference")),
    ("dd", PLAN, GenerationOptions(order="threshold", threshold=0.5, steps_ratio=0.5)),
    ("e", SHORT, GenerationOptions(order="adaptive", threshold=0.3, dense=True, kv_refresh="reference")),
    ("f", None, GenerationOptions(mode="autoregressive", max_new_tokens=24)),
    ("g", SHORT, GenerationOptions(on_overflow="retry", max_span_length=40)),
    ("h", None, GenerationOptions(mode="diffusion", max_new_tokens=12, steps_ratio=0.5)),
    ("i", PLAN, GenerationOptions(temperature=0.9, seed=3, top_p=0.9)),
    ("j", None, GenerationOptions(max_new_tokens=20)),
    ("k", PLAN, GenerationOptions(kv_cache=False, max_new_tokens=200)),
]


def alone(runtime, prompt, plan, options):
    state = runtime.new_state(runtime.encode_prompt(prompt), options, runtime.encode_plan(plan) if plan else None)
    runtime.run(state)
    return state


def batched(runtime, cases, join_at, abort_at, budget=(64, 40)):
    """All cases through one engine, driven as a worker drives it (the next step launched ahead
    when it can be): those in `join_at` added at that step, the extra request `abort_at` names
    aborted at that step, both while steps are in flight (between launch and finish); each
    request's events, drained step by step. `budget`: tokens and logit rows per step."""
    engine = Engine(runtime.runner, budget[0], max_requests=6, max_logit_rows_per_step=budget[1])
    pool = runtime.runner.pool
    held_before = pool.blocks - len(pool.free_blocks)  # on CUDA, the padding rows' scratch block
    states, events = {}, {}
    pending = []
    for i, (prompt, plan, options) in enumerate(cases):
        state = runtime.new_state(runtime.encode_prompt(prompt), options, runtime.encode_plan(plan) if plan else None)
        states[i], events[i] = state, []
        pending.append((join_at.get(i, 0), i))
    victim = runtime.new_state(runtime.encode_prompt("victim"), GenerationOptions(), runtime.encode_plan(PLAN))
    engine.add("victim", victim)
    step = 0
    while pending or engine.has_work() or engine.in_flight:
        launched = engine.in_flight or engine.launch()
        if launched:
            engine.launch_ahead()
        for when, i in [p for p in pending if p[0] <= step]:
            engine.add(str(i), states[i])
            pending.remove((when, i))
        if step == abort_at:
            assert engine.abort("victim") and not engine.abort("victim")
        for output in engine.finish() if launched else []:
            assert output.error is None
            if output.request_id != "victim":
                events[int(output.request_id)] += output.events
        step += 1
    assert victim.phase is not Phase.DONE  # it was cut off midway
    assert engine.stats()["running"] == engine.stats()["waiting"] == engine.stats()["kv_cache_bytes"] == 0
    assert pool.blocks - len(pool.free_blocks) == held_before
    batched.engine = engine
    return states, events, engine.steps


def test_batching_changes_nothing_forced_plans(compact):
    solo = [alone(compact, *case) for case in FORCED]
    states, events, steps = batched(compact, FORCED, join_at={3: 4, 7: 11, 10: 30}, abort_at=6)
    for i, state in states.items():
        assert state.tokens == solo[i].tokens, FORCED[i]
        assert state.forwards == solo[i].forwards and state.finish_reason == solo[i].finish_reason
        assert events[i] == solo[i].events
    assert steps < sum(s.forwards for s in solo)  # shared forwards, within a 64-token budget


PEOPLE = ("Read about these people. Maya is 34 years old, lives in Oslo, works as a nurse and has a cat. "
          "Omar is 51 years old, lives in Lima, works as a pilot and has a dog. Tell me about each person.")


@pytest.fixture(scope="module")
def demo():
    return ModelRuntime.load(DEMO)


def test_batching_changes_nothing_chosen_plans(demo):
    """The demo model plans itself; at length_scale 3 its spans get 0.3 of the slots they promised,
    so they overflow and are retried or re-planned."""
    cases = [(PEOPLE, None, GenerationOptions(order="adaptive", threshold=0.99, max_new_tokens=400)),
             (PEOPLE, None, GenerationOptions(on_overflow="replan", length_scale=3, max_new_tokens=400)),
             (PEOPLE.replace("Maya", "Ana"), None, GenerationOptions(on_overflow="retry", length_scale=3,
                                                                    order="adaptive", threshold=0.9)),
             (PEOPLE, None, GenerationOptions(mode="autoregressive", max_new_tokens=60)),
             (PEOPLE.replace("34", "27"), None, GenerationOptions(dense=True, steps_ratio=0.5))]
    solo = [alone(demo, *case) for case in cases]
    states, events, _ = batched(demo, cases, join_at={2: 5}, abort_at=2)
    for i, state in states.items():
        assert state.tokens == solo[i].tokens and events[i] == solo[i].events, cases[i]
    assert solo[1].replans > 0 and solo[2].retries > 0  # overflow handling was exercised


def test_steps_launched_ahead_change_nothing(compact, demo):
    """Autoregressive requests alone in the engine (and alone through ModelRuntime.run): each step
    after the first is launched while the one before is in flight, its input ids that step's
    decisions on the device. Requests join and one is aborted meanwhile (no step goes ahead while a
    joiner waits for its prefill), and the demo model ends its answers with an end token, which
    makes the step ahead of it void. Off on the CPU by default (nothing to overlap): on here."""
    cases = [(p, None, GenerationOptions(mode="autoregressive", max_new_tokens=n))
             for p, n in (("a", 9), ("bb", 30), ("c", 17), ("dd", 4), ("e", 25))]
    solo = [alone(compact, *case) for case in cases]
    compact.runner.ahead = demo.runner.ahead = True  # on by default where the device computes apart: CUDA
    try:
        states, events, _ = batched(compact, cases, join_at={2: 3, 4: 9}, abort_at=5)
        for i, state in states.items():
            assert state.tokens == solo[i].tokens and events[i] == solo[i].events, cases[i]
        assert batched.engine.steps_ahead > 20
        assert alone(compact, *cases[1]).tokens == solo[1].tokens  # ModelRuntime.run launches ahead too
        cases = [(PEOPLE.replace("Maya", name), None, GenerationOptions(mode="autoregressive", max_new_tokens=200))
                 for name in ("Maya", "Ana", "Iris")]
        solo = [alone(demo, *case) for case in cases]
        states, events, _ = batched(demo, cases, join_at={1: 2}, abort_at=3)
        for i, state in states.items():
            assert state.tokens == solo[i].tokens and events[i] == solo[i].events, cases[i]
            assert state.finish_reason == "end"
        assert batched.engine.steps_ahead > 5 and batched.engine.dropped_ahead >= 1
        assert alone(demo, *cases[0]).tokens == solo[0].tokens
    finally:
        compact.runner.ahead = demo.runner.ahead = compact.network.device.type == "cuda"


LONG = ("<promise>-<topic>alpha 12</topic><promise>-<topic>beta 9</topic><sync/>"
        "<promise>-<topic>gamma 7</topic><|im_end|>")


def test_denoising_steps_launched_ahead_change_nothing(compact, demo):
    """A denoising step whose spans commit known counts (entropy, confidence, margin) is launched
    while the step before it is in flight: the committed tokens become its ids and the slots left
    masked its logit rows on the device. Alone (ModelRuntime.run) and batched, joining and with
    one aborted: the tokens, events and forwards of each request alone without steps ahead. Orders
    whose counts depend on the scores (adaptive), the reference's refresh and overflow retries mix
    in; the demo model plans for itself and fills spans with padding."""
    one = GenerationOptions(length_scale=1)  # the plan's numbers are its spans' slots
    cases = [("a", LONG, one),
             ("bb", LONG, one.replace(dense=True, order="confidence")),
             ("c", LONG, one.replace(order="margin", steps_ratio=0.5)),
             ("dd", LONG, one.replace(on_overflow="retry", max_span_length=40)),
             ("e", LONG, one.replace(order="adaptive", threshold=0.3)),
             ("f", LONG, one.replace(kv_refresh="reference")),
             ("g", LONG, one)]
    solo = [alone(compact, *case) for case in cases]
    chosen = [(PEOPLE.replace("Maya", name), None, GenerationOptions(max_new_tokens=300)) for name in ("Maya", "Ana")]
    solo_chosen = [alone(demo, *case) for case in chosen]
    compact.runner.ahead = demo.runner.ahead = True
    try:
        for i in (0, 1, 2, 3):
            forwards = compact.runner.forwards
            state = alone(compact, *cases[i])
            assert state.tokens == solo[i].tokens and state.forwards == solo[i].forwards, cases[i]
            assert compact.runner.forwards - forwards == state.forwards  # no void steps ahead alone
        states, events, _ = batched(compact, cases, join_at={2: 3, 4: 9}, abort_at=5)
        for i, state in states.items():
            assert state.tokens == solo[i].tokens and events[i] == solo[i].events, cases[i]
            assert state.forwards == solo[i].forwards
        assert batched.engine.steps_ahead > 10
        states, events, _ = batched(demo, chosen, join_at={1: 4}, abort_at=2)
        for i, state in states.items():
            assert state.tokens == solo_chosen[i].tokens and events[i] == solo_chosen[i].events
        assert batched.engine.steps_ahead > 0  # its spans are short: most of its steps are planning
    finally:
        compact.runner.ahead = demo.runner.ahead = compact.network.device.type == "cuda"


def test_planning_steps_launched_ahead_change_nothing(compact, demo):
    """A planned-diffusion planning step goes ahead too: its input id is the step in flight's
    decision on the device (or a forced plan's next token), and where the token before changed the
    step's decision group (constrained planning's bans follow the plan) it is decided again once
    that token is known; a token that ends the round makes it void. Batched with requests joining,
    one aborted, planning and denoising requests in one step and several decision groups (forced,
    sampled and seeded plans, decoding): the tokens and events of each request alone without
    steps ahead."""
    plan = "<promise>-<topic>Maya 9</topic><promise>-<topic>Omar 9</topic><|im_end|>"
    cases = [(PEOPLE, None, GenerationOptions(max_new_tokens=300)),
             (PEOPLE.replace("Maya", "Ana"), None, GenerationOptions(order="confidence", max_new_tokens=300)),
             (PEOPLE, plan, GenerationOptions()),
             (PEOPLE.replace("Omar", "Joon"), None, GenerationOptions(constrained=False, max_new_tokens=300)),
             (PEOPLE, None, GenerationOptions(mode="autoregressive", max_new_tokens=40)),
             (PEOPLE.replace("34", "27"), None, GenerationOptions(temperature=0.7, seed=5, max_new_tokens=300))]
    solo = [alone(demo, *case) for case in cases]
    demo.runner.ahead = True
    try:
        forwards = demo.runner.forwards
        state = alone(demo, *cases[0])
        assert state.tokens == solo[0].tokens and state.events == solo[0].events
        assert demo.runner.forwards - forwards == state.forwards  # none void: alone, no step goes ahead of
        # a token that may end the round (it would cost a forward where a step ahead saves the host's gap)
        forwards = demo.runner.forwards
        state = alone(demo, *cases[2])
        assert state.tokens == solo[2].tokens and demo.runner.forwards - forwards == state.forwards  # known: none void
        states, events, _ = batched(demo, cases, join_at={1: 3, 2: 9, 5: 14}, abort_at=6, budget=(1024, 512))
        for i, state in states.items():
            assert state.tokens == solo[i].tokens and events[i] == solo[i].events, cases[i]
        assert batched.engine.steps_ahead > 30
    finally:
        demo.runner.ahead = demo.network.device.type == "cuda"


def test_a_request_aborted_in_flight_leaves_at_once(compact):
    """Aborted between launch and finish: its memory is free at once, its results are dropped,
    and the request it shared the step with goes on as if alone."""
    engine = Engine(compact.runner)
    prompt = compact.encode_prompt("x")
    states = {rid: compact.new_state(prompt, GenerationOptions(), compact.encode_plan(PLAN)) for rid in ("gone", "kept")}
    for rid, state in states.items():
        engine.add(rid, state)
    engine.step()
    held = engine.stats()["kv_cache_bytes"]
    assert engine.launch() and {rid for rid, _, _ in engine.last_step} == {"gone", "kept"}
    assert engine.abort("gone") and engine.stats()["kv_cache_bytes"] == held // 2
    assert [o.request_id for o in engine.finish()] == ["kept"]
    engine.run({})  # the rest of "kept"
    assert states["kept"].tokens == alone(compact, "x", PLAN, GenerationOptions()).tokens
    assert engine.stats()["kv_cache_bytes"] == 0
    engine.add("again", compact.new_state(prompt, GenerationOptions(), compact.encode_plan(PLAN)))
    assert engine.launch()
    with pytest.raises(RuntimeError, match="in flight"):
        engine.launch()
    engine.finish()
    assert engine.abort("again") and engine.stats()["kv_cache_bytes"] == 0  # the runtime's pool is shared


def test_a_full_pool_makes_requests_wait(compact):
    from plandiff.model.kv_pool import BLOCK, KVPool
    from plandiff.model.model_runner import ModelRunner

    options = GenerationOptions(max_new_tokens=100)
    prompt = compact.encode_prompt("x")
    room = len(prompt) + 100
    network = compact.network  # room for two requests (and, on CUDA, the padding rows' scratch block)
    runner = ModelRunner(network, KVPool(network.config, network.device, network.dtype, 2 * room + 16 + BLOCK))
    engine = Engine(runner)
    states = {str(i): compact.new_state(prompt, options, compact.encode_plan(SHORT)) for i in range(3)}
    for rid, state in states.items():
        engine.add(rid, state)
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 1
    engine.run({})
    reference = alone(compact, "x", SHORT, options).tokens
    assert all(s.tokens == reference for s in states.values())


def test_sixteen_concurrent_requests_share_forwards(tmp_path):
    """CPU, the demo model, the local executor: 16 requests at once need at most half the forwards
    of the same requests one by one, with the same answers."""
    executor = LocalExecutor(str(DEMO))
    orchestrator = Orchestrator(executor, TextCodec.load(DEMO))
    options = GenerationOptions(order="adaptive", threshold=0.99, max_new_tokens=400)
    prompts = [f"Maya is {20 + i} years old and lives in Oslo. Omar is {30 + i} years old and lives in Lima. "
               "Tell me about each person." for i in range(16)]
    worker = executor.workers[0].worker

    async def one(prompt):
        return (await orchestrator.complete(GenerateRequest(prompt=prompt, options=options))).text

    async def one_by_one():
        return [await one(p) for p in prompts]

    async def together():
        return await asyncio.gather(*(one(p) for p in prompts))

    before = worker.stats()["forwards"]
    sequential = asyncio.run(one_by_one())
    middle = worker.stats()["forwards"]
    concurrent = asyncio.run(together())
    after = worker.stats()["forwards"]
    assert concurrent == sequential
    assert after - middle <= (middle - before) / 2


def test_bench_engine_prints_a_table_and_json(tmp_path, capsys):
    import json

    from plandiff.orchestrator import cli

    out = tmp_path / "engine.json"
    assert cli.main(["bench", "engine", "--shape", "small", "--dtype", "float32", "--prompt-tokens", "20",
                     "--spans", "1", "--slots", "4", "--concurrency", "1,2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["concurrency"]["pd_2"]["forwards"] < 2 * report["concurrency"]["pd_1"]["forwards"]
    e2e = report["batch1_end_to_end"]
    assert e2e["ar"]["critical_path"] > e2e["pd_1.0"]["critical_path"]
    assert e2e["pd_1.0"]["ahead_speedup_vs_ar"] == pytest.approx(e2e["ar"]["ahead_seconds"] / e2e["pd_1.0"]["ahead_seconds"])
    assert e2e["pd_1.0"]["steps_ahead"] == e2e["ar"]["steps_ahead"] == 0  # on CUDA only: nothing overlaps on the CPU
    # the steps of a run timed by phase (AR's decode steps, PD's denoising steps of all its requests):
    # a denoising step of 2 requests has host and device work; the forced 4-slot span takes 4 of them
    assert set(report["step_phases"]) == {"ar_1", "ar_2", "pd_denoise_1", "pd_denoise_2"}
    pd = report["step_phases"]["pd_denoise_2"]
    assert pd["requests"] == 2 and pd["steps"] == 4
    assert all(pd[f"{p}_ms"] > 0 for p in ("schedule", "pack", "device", "decide", "advance"))
    ar = report["batch1_end_to_end"]["ar"]  # as served: wall time per forward of the concurrency-1 run
    assert ar["served_s_per_forward"] * report["concurrency"]["ar_1"]["forwards"] == pytest.approx(
        report["concurrency"]["ar_1"]["wall_s"])
    captured = capsys.readouterr()
    assert "KV pool" in captured.out and "step phases" in captured.out and "AR through the orchestrator" in captured.out
    # progress while it runs, on stderr: each section and each run through the orchestrator as it starts
    assert "bench engine: batch-1 steps" in captured.err and "PD at concurrency 2" in captured.err


def test_padded_steps_give_the_same_logits(compact):
    """What a CUDA graph replays (step_graphs.padded_forward): a step padded to a graph shape, its
    requests to a bucket, each one's rows to a width, its keys to a multiple of 256 (padding writes
    to a scratch block and is seen by nobody), gives the logits of the unpadded step, for planning,
    autoregressive and denoising steps together."""
    from plandiff.model.kv_pool import KVPool
    from plandiff.model.model_runner import ModelRunner
    from plandiff.model.step_graphs import GraphShape, StepBuffer, pack_padded, padded_forward

    runner = ModelRunner(compact.network, KVPool(compact.network.config, compact.network.device, compact.network.dtype, 8192))
    scratch = runner.pool.allocate(16)[0] * 16
    cases = [("a", None, GenerationOptions(mode="autoregressive", max_new_tokens=8)),
             ("bbb", PLAN, GenerationOptions()), ("cc", SHORT, GenerationOptions(dense=True, max_new_tokens=12))]
    seqs = [runner.admit(compact.new_state(compact.encode_prompt(p), o, compact.encode_plan(plan) if plan else None))
            for p, plan, o in cases]
    shapes, padded_steps = set(), 0
    for _ in range(12):
        live = [s for s in seqs if s.state.phase is not Phase.DONE]
        forwards = [s.state.schedule() for s in live]
        shape = GraphShape.of(forwards)
        if shape is not None:
            shapes.add(shape)
            padded_steps += len(live) < shape.count and max(len(f.positions) for f in forwards) < shape.width
            unpadded = runner.forward(live, forwards)
            buffer, counts = pack_padded(live, forwards, StepBuffer(shape, scratch))
            padded, _ = padded_forward(compact.network, runner.pool, buffer.to(compact.network.device), shape)
            assert counts == [len(f.logit_positions) for f in forwards]
            torch.testing.assert_close(torch.cat(unpadded), padded[: sum(counts)], rtol=1e-5, atol=1e-4)
        runner.step(live, forwards)
    assert any(s.width > 1 for s in shapes) and any(s.count > 1 for s in shapes)
    assert padded_steps  # steps with padding requests and padding rows both


def test_a_denoising_step_ahead_in_a_graph_buffer_gives_the_real_step_s_logits(compact):
    """What a CUDA graph replays for a denoising step launched ahead: the step packed before the
    step in flight is finished (placeholder logit rows), its buffer then given that step's
    commits on the device (Feed.apply_to_buffer), gives the logits of the step scheduled once the
    commits are known, step after step of a round (sparse and dense)."""
    from plandiff.model.kv_pool import KVPool
    from plandiff.model.feed import Feed
    from plandiff.model.model_runner import ModelRunner
    from plandiff.model.step_graphs import GraphShape, StepBuffer, pack_padded, padded_forward

    network = compact.network
    runner = ModelRunner(network, KVPool(network.config, network.device, network.dtype, 8192))
    scratch = runner.pool.allocate(16)[0] * 16
    for options in (GenerationOptions(length_scale=1), GenerationOptions(length_scale=1, dense=True, steps_ratio=0.5)):
        seqs = [runner.admit(compact.new_state(compact.encode_prompt("z"), options, compact.encode_plan(LONG)))]
        state, compared = seqs[0].state, 0
        while state.phase is not Phase.DONE:
            forward = state.schedule()
            step = runner.launch(seqs, [forward])
            ahead = state.ahead(forward) if state.phase is Phase.DENOISE else None
            if ahead is not None:
                shape = GraphShape.of([ahead])
                buffer, _ = pack_padded(seqs, [ahead], StepBuffer(shape, scratch))
                buffer = buffer.to(network.device)
                Feed(step.groups, [forward]).apply_to_buffer(buffer, shape, [ahead])
                padded, _ = padded_forward(network, runner.pool, buffer, shape)
            runner.finish(step)
            if ahead is not None:
                real = state.schedule()
                assert (real.positions, real.segments, real.step) == (ahead.positions, ahead.segments, ahead.step)
                unpadded, = runner.forward(seqs, [real])
                torch.testing.assert_close(unpadded, padded[: len(real.logit_positions)], rtol=1e-5, atol=1e-4)
                compared += 1
        assert compared > 4
        runner.release(seqs[0])


def test_kept_step_buffers_hold_what_fresh_ones_do(compact):
    """A shape's step buffer kept from step to step (only each request's new keys written) equals a
    buffer packed afresh, while requests join, leave, change rows, retry overflowing spans
    (truncated layouts) and go diffusion-only (one region for all)."""
    from plandiff.model.kv_pool import KVPool
    from plandiff.model.layout import PADDING
    from plandiff.model.model_runner import ModelRunner
    from plandiff.model.step_graphs import FIELDS, GraphShape, StepBuffer, pack_padded

    runner = ModelRunner(compact.network, KVPool(compact.network.config, compact.network.device, compact.network.dtype, 16384))
    scratch = runner.pool.allocate(16)[0] * 16
    cases = [FORCED[i] for i in (5, 6, 7, 9, 0)]  # AR, retries, diffusion-only, chosen plan, forced plan
    waiting = [runner.admit(compact.new_state(compact.encode_prompt(p), o, compact.encode_plan(plan) if plan else None))
               for p, plan, o in cases]
    admitted = list(waiting)
    running, kept, reused = [], {}, 0
    for step in range(400):
        if waiting and step % 3 == 0:
            running.insert(step % (len(running) + 1), waiting.pop())  # joins, at changing rows
        running = [s for s in running if s.state.phase is not Phase.DONE]
        if not running and not waiting:
            break
        if not running:
            continue
        forwards = [s.state.schedule() for s in running]
        shape = GraphShape.of(forwards)
        if shape is not None:
            reused += shape in kept
            got, _ = pack_padded(running, forwards, kept.setdefault(shape, StepBuffer(shape, scratch)))
            want, _ = pack_padded(running, forwards, StepBuffer(shape, scratch))
            keys = slice(FIELDS * shape.rows, FIELDS * shape.rows + 3 * shape.count * shape.length)
            assert torch.equal(got[: keys.start], want[: keys.start]) and torch.equal(got[keys.stop:], want[keys.stop:])
            got_keys, want_keys = got[keys].view(3, -1), want[keys].view(3, -1)
            live = want_keys[1] != PADDING
            assert torch.equal(got_keys[:2], want_keys[:2]) and torch.equal(got_keys[2][live], want_keys[2][live])
        runner.step(running, forwards)
    assert not running and not waiting and reused > 20
    assert sum(s.state.layout.generation > 0 for s in admitted) >= 2  # truncated and re-regioned layouts


def test_padded_steps_decide_as_the_eager_decision(compact):
    """A graph of a step whose logit rows all belong to one greedy decision group makes the
    decisions too (the banned ids as a mask, the spans' commit rules in the step's buffer, the
    padding rows one span that never commits): the same ids and commits as deciding its logits
    eagerly, for autoregressive and denoising steps, each order."""
    from plandiff.model.decisions import banned_mask, decide
    from plandiff.model.kv_pool import KVPool
    from plandiff.model.model_runner import ModelRunner
    from plandiff.model.step_graphs import GraphShape, StepBuffer, pack_padded, padded_forward

    runner = ModelRunner(compact.network, KVPool(compact.network.config, compact.network.device, compact.network.dtype, 16384))
    scratch = runner.pool.allocate(16)[0] * 16
    vocab = compact.network.config.vocab_size
    decided = set()
    for options in (GenerationOptions(), GenerationOptions(order="margin", dense=True),
                    GenerationOptions(order="threshold", threshold=0.5, steps_ratio=0.5),
                    GenerationOptions(order="adaptive", threshold=0.3, top_k=None)):
        cases = [("a", None, options.replace(mode="autoregressive", max_new_tokens=60)),
                 ("bb", None, options.replace(mode="autoregressive", max_new_tokens=50)),
                 ("e", None, options.replace(mode="autoregressive", max_new_tokens=40)),  # 3 of a bucket of 4
                 ("c", PLAN, options), ("ddd", SHORT, options)]
        seqs = [runner.admit(compact.new_state(compact.encode_prompt(p), o, compact.encode_plan(plan) if plan else None))
                for p, plan, o in cases]
        while live := [s for s in seqs if s.state.phase is not Phase.DONE]:
            forwards = [s.state.schedule() for s in live]
            groups = runner._groups(live, forwards)
            shape = GraphShape.of(forwards, runner._graph_decision(forwards, groups))
            if shape is not None and shape.decision is not None:
                (group, members), = groups.items()
                segments, rule = runner._rule(live, forwards, members) if shape.rules else (None, None)
                buffer, counts = pack_padded(live, forwards, StepBuffer(shape, scratch), segments, rule)
                device = compact.network.device
                logits, made = padded_forward(compact.network, runner.pool, buffer.to(device), shape,
                                              banned_mask(group[-1], vocab, device))
                rows = sum(counts)
                eager = decide(group, logits[:rows], segments, rule)
                assert torch.equal(made[..., :rows], eager), (group, counts)
                decided.add(group[0])
            runner.step(live, forwards)
        for seq in seqs:
            runner.release(seq)
    assert decided == {"plan", "denoise"}


def test_fused_projections_follow_the_checkpoint_weights(compact_folder):
    """q/k/v and gate/up run as one matmul each over views of the parameters: a weight changed in
    place after the first forward (a load, a training step) changes the packed forward too, and a
    network moved to another dtype fuses its new weights; training's unfused path agrees."""
    runtime = ModelRuntime.load(compact_folder)
    options = GenerationOptions(mode="autoregressive", max_new_tokens=4)
    prompt = runtime.encode_prompt("fused")

    def answer():
        return alone(runtime, "fused", None, options).tokens

    before = answer()
    attn = runtime.network.model.layers[0].self_attn
    qkv = attn.__dict__["_qkv"][0]
    assert attn.q_proj.weight.data_ptr() == qkv.data_ptr()  # a view, not a copy
    with torch.no_grad():
        for layer in runtime.network.model.layers:
            layer.self_attn.v_proj.weight.mul_(-3)
            layer.mlp.up_proj.weight.mul_(2)
    changed = answer()
    ids = torch.tensor([prompt + changed[len(prompt):]])
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()[None]
    unfused = runtime.network.forward_train(ids, causal)[0, len(prompt) - 1:-1].argmax(-1).tolist()
    assert changed[len(prompt):] == unfused and changed != before
    runtime.network.to(torch.float64)
    assert runtime.network.model.layers[0].self_attn.q_proj.weight.dtype == torch.float64
    runtime._runner = None
    assert alone(runtime, "fused", None, options).tokens == changed


def test_compiled_parts_give_the_eager_tokens(compact_folder):
    """`DreamNetwork.compile_packed` (bench engine --compile): the parts around attention compiled
    (torch.compile, dynamic shapes; here Inductor's CPU code) answer as the eager network does."""
    runtime = ModelRuntime.load(compact_folder)
    cases = [FORCED[0], FORCED[5]]  # a planned request (prefill, planning, denoising) and an AR one
    eager = [alone(runtime, *case).tokens for case in cases]
    runtime.network.compile_packed()
    assert [alone(runtime, *case).tokens for case in cases] == eager
