"""The orchestrator over real executors: a real local Ray cluster (started once for this module)
with two CPU worker actors, and the in-process `local` backend for the same task-graph tests."""

import asyncio
import os
import signal
import time

import pytest
import ray

from plandiff.model import GenerationOptions, InvalidRequestError, ModelRuntime
from plandiff.model.codec import TextCodec
from plandiff.model.random_checkpoint import build_random_checkpoint
from plandiff.orchestrator.executors import LocalExecutor, RayExecutor, WorkerLost, start_local_ray
from plandiff.orchestrator.orchestrator import GenerateRequest, Orchestrator

PLAN = ("<promise>-<topic>alpha 2</topic><promise>-<topic>beta 4</topic><sync/>"
        "<promise>-<topic>gamma 1</topic><|im_end|>")
LONG_PLAN = ("<promise>-<topic>one 20</topic><promise>-<topic>two 15</topic><sync/>"
             "<promise>-<topic>three 20</topic><|im_end|>")
ROOMY = GenerationOptions(max_new_tokens=1024)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random planner that writes tags itself (well-formed or not, depending on constraints)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("orch") / "ckpt", "compact", writes_tags=True)


@pytest.fixture(scope="module")
def direct(folder):
    return ModelRuntime.load(folder)


@pytest.fixture(scope="module")
def ray_cluster():
    start_local_ray(num_cpus=4, log_to_driver=False)  # on 127.0.0.1 only
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_executor(folder, ray_cluster):
    executor = RayExecutor(folder, workers=2, num_cpus_per_worker=0.5)
    asyncio.run(executor.wait_ready())
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def local_executor(folder):
    return LocalExecutor(folder)


@pytest.fixture(params=["local", "ray"])
def orchestrator(request, folder):
    executor = request.getfixturevalue(f"{request.param}_executor")
    return Orchestrator(executor, TextCodec.load(folder))


def collect(orchestrator, request):
    async def run():
        return [event async for event in orchestrator.generate(request)]

    return asyncio.run(run())


async def settle(executor, timeout=10.0):
    """Wait until no worker holds a request, and every restarting actor answers; return their stats.
    (Ray restarts a killed actor in seconds, more on a loaded machine.)"""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = await asyncio.gather(*(w.stats() for w in executor.workers))
        except WorkerLost:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        if all(s["requests"] == 0 for s in stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


def test_multi_round_request(orchestrator, direct):
    events = collect(orchestrator, GenerateRequest(prompt="Tell me things.", plan=PLAN))
    kinds = [e.kind for e in events]
    done = events[-1]
    assert done.kind == "done" and kinds.count("done") == 1 and kinds.count("sync") == 1
    promised = [e for e in events if e.kind == "span_promised"]
    assert [(e.round, e.topic, e.length) for e in promised] == [(0, "alpha", 20), (0, "beta", 40), (1, "gamma", 10)]
    assert kinds.index("span_promised") < kinds.index("span_done") < kinds.index("sync")
    assert sorted((e.round, e.span) for e in events if e.kind == "span_done") == [(0, 0), (0, 1), (1, 0)]
    assert "".join(e.text for e in events if e.kind == "text") == done.text
    alone = direct.generate("Tell me things.", GenerationOptions(), plan=PLAN)
    assert done.result["token_ids"] == alone.token_ids and done.text == alone.text
    assert done.usage.critical_path == alone.usage.critical_path and done.usage.failovers == 0
    assert done.usage.steps_per_round == [40, 10]


def test_sixteen_concurrent_requests_match_their_runs_alone(orchestrator, direct):
    requests = [GenerateRequest(prompt=f"question {i}", plan=PLAN if i % 2 else None,
                                options=GenerationOptions(max_new_tokens=60)) for i in range(16)]

    async def run_all():
        return await asyncio.gather(*(orchestrator.complete(r) for r in requests))

    results = asyncio.run(run_all())
    for request, done in zip(requests, results):
        alone = direct.generate(request.prompt, request.options, plan=request.plan)
        assert done.result["token_ids"] == alone.token_ids, request.prompt
    assert asyncio.run(settle(orchestrator.executor))[0]["requests"] == 0


def test_forced_overflow_is_retried_and_recovers(orchestrator):
    # This random model never writes [PAD]: every span fills all its slots, an overflow.
    options = GenerationOptions(on_overflow="retry", max_overflow_retries=1, max_span_length=40)
    events = collect(orchestrator, GenerateRequest(prompt="x", plan=PLAN, options=options))
    retried = [(e.round, e.span, e.previous, e.length) for e in events if e.kind == "span_retried"]
    assert retried == [(0, 0, 20, 40), (1, 0, 10, 20)]
    done = events[-1]
    assert done.finish_reason == "end" and done.usage.retries == 2
    assert [s["length"] for r in done.result["rounds"] for s in r["spans"]] == [40, 40, 20]
    assert "".join(e.text for e in events if e.kind == "text") == done.text


def test_malformed_plan_is_recovered(orchestrator, direct):
    prompt = "prompt 0"  # this random planner writes a stray <|mask|> into its plan
    options = GenerationOptions(max_new_tokens=80, constrained=False)
    done = asyncio.run(orchestrator.complete(GenerateRequest(prompt=prompt, options=options)))
    assert done.fallback == "the mask token outside a promise"
    assert done.result["token_ids"] == direct.generate(prompt, options).token_ids
    constrained = asyncio.run(orchestrator.complete(
        GenerateRequest(prompt=prompt, options=GenerationOptions(max_new_tokens=80))))
    assert constrained.fallback is None


def test_prompt_with_literal_tags_answers_as_text(orchestrator):
    text = "What do <sync/>, <async>x</async> and <|mask|> mean?"
    done = asyncio.run(orchestrator.complete(GenerateRequest(prompt=text, plan=PLAN)))
    tags = orchestrator.codec.tags
    control = {tags.sync, tags.span_open, tags.span_close, tags.mask, tags.promise_open, tags.promise_close}
    assert not control & set(done.result["prompt_ids"])
    assert done.finish_reason == "end"


def test_prompt_ids_with_control_ids_are_rejected(orchestrator):
    ids = orchestrator.codec.encode_prompt("hi")
    bad = ids[:-3] + [orchestrator.codec.tags.sync] + ids[-3:]
    with pytest.raises(InvalidRequestError, match="control-tag ids"):
        collect(orchestrator, GenerateRequest(prompt_ids=bad))


def test_a_runaway_planning_round_ends(orchestrator):
    done = asyncio.run(orchestrator.complete(GenerateRequest(
        prompt="x", options=GenerationOptions(max_plan_tokens=10, max_new_tokens=500))))
    assert done.finish_reason == "length" and len(done.result["token_ids"]) == 10


@pytest.mark.parametrize("when", ["denoising", "between_rounds"])
def test_cancel_frees_the_slot(orchestrator, when):
    trigger = "span_progress" if when == "denoising" else "sync"

    async def run():
        seen = []
        async for event in orchestrator.generate(GenerateRequest(prompt="x", plan=LONG_PLAN, options=ROOMY)):
            seen.append(event.kind)
            if event.kind == trigger:
                break  # the consumer goes away: the request is cancelled
        return seen, await settle(orchestrator.executor)

    seen, stats = asyncio.run(run())
    assert seen[-1] == trigger and "done" not in seen
    assert all(s["requests"] == 0 for s in stats)


def test_cancel_by_request_id(orchestrator):
    async def run():
        request = GenerateRequest(prompt="x", plan=LONG_PLAN, options=ROOMY)
        started = asyncio.Event()

        async def consume():
            async for event in orchestrator.generate(request):
                if event.kind == "span_progress":
                    started.set()

        consumer = asyncio.ensure_future(consume())
        await asyncio.wait_for(started.wait(), timeout=30)
        assert orchestrator.cancel(request.request_id)
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert not orchestrator.cancel(request.request_id)  # it is gone
        return await settle(orchestrator.executor)

    assert all(s["requests"] == 0 for s in asyncio.run(run()))


def test_a_worker_killed_mid_request_completes_exactly_once(ray_executor, folder, direct):
    orchestrator = Orchestrator(ray_executor, TextCodec.load(folder))

    async def run():
        events, killed = [], None
        async for event in orchestrator.generate(GenerateRequest(prompt="survive", plan=LONG_PLAN, options=ROOMY)):
            events.append(event)
            if killed is None and event.kind == "span_progress" and event.step >= 30:
                stats = await asyncio.gather(*(w.stats() for w in ray_executor.workers))
                killed = next(s for s in stats if s["requests"] == 1)
                os.kill(killed["pid"], signal.SIGKILL)  # the actor's process dies mid-request
        return events, killed

    events, killed = asyncio.run(run())
    done = events[-1]
    assert killed is not None and done.kind == "done" and done.usage.failovers == 1
    assert [e.kind for e in events].count("done") == 1
    assert sorted((e.round, e.span) for e in events if e.kind == "span_done") == [(0, 0), (0, 1), (1, 0)]
    assert "".join(e.text for e in events if e.kind == "text") == done.text
    alone = direct.generate("survive", ROOMY, plan=LONG_PLAN)
    assert done.result["token_ids"] == alone.token_ids and done.finish_reason == "end"
    # the dead actor was restarted by Ray and serves again
    stats = asyncio.run(settle(ray_executor, timeout=60.0))
    assert len(stats) == 2 and killed["pid"] not in {s["pid"] for s in stats}
