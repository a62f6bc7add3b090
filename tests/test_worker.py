"""The worker's phase interface, in-process and as a Ray actor (module-local Ray cluster)."""

import asyncio
import dataclasses
import time

import pytest
import ray
import torch

from plandiff.model import GenerationOptions, GenerationResult, InvalidRequestError
from plandiff.model.events import RoundJoined, RoundPlanned
from plandiff.workers import Worker

PLAN = ("<promise>-<topic>alpha 2</topic><promise>-<topic>beta 4</topic><sync/>"
        "<promise>-<topic>gamma 1</topic><|im_end|>")


def holds_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if dataclasses.is_dataclass(value):
        return any(holds_tensor(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return any(holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(holds_tensor(v) for v in value.values())
    return False


async def drain(stream):
    return [item async for item in stream]


def test_phases_in_process(compact_folder, compact):
    worker = Worker(str(compact_folder))
    prompt = compact.encode_prompt("x")
    worker.open("r", prompt, GenerationOptions(), compact.encode_plan(PLAN))
    assert worker.stats()["requests"] == 1 and worker.stats()["kv_cache_bytes"] > 0
    with pytest.raises(InvalidRequestError, match="phase plan, not denoise"):
        asyncio.run(drain(worker.denoise("r")))
    order = []
    for phase in ("plan", "denoise", "plan", "denoise"):
        items = asyncio.run(drain(worker.run_phase("r", phase)))
        events = [e for item in items if isinstance(item, list) for e in item]
        order.append((phase, type(events[-1]).__name__))
        assert not holds_tensor(items)
    assert order == [("plan", "RoundPlanned"), ("denoise", "RoundJoined"), ("plan", "RoundPlanned"),
                     ("denoise", "Finished")]
    result = items[-1]
    assert isinstance(result, GenerationResult)
    assert result.token_ids == compact.generate("x", GenerationOptions(), plan=PLAN).token_ids
    assert worker.release("r") and worker.stats()["requests"] == 0
    with pytest.raises(InvalidRequestError, match="not open"):
        asyncio.run(drain(worker.plan("r")))


def test_generate_frees_the_request_however_it_ends(compact_folder, compact):
    worker = Worker(str(compact_folder))
    prompt = compact.encode_prompt("x")
    items = asyncio.run(drain(worker.generate("a", prompt, GenerationOptions(), compact.encode_plan(PLAN))))
    assert isinstance(items[-1], GenerationResult) and worker.stats()["requests"] == 0

    async def abandon():
        stream = worker.generate("b", prompt, GenerationOptions(), compact.encode_plan(PLAN))
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(abandon())
    assert worker.stats()["requests"] == 0
    with pytest.raises(InvalidRequestError, match="control-tag"):
        asyncio.run(drain(worker.generate("c", prompt + [compact.tags.sync], GenerationOptions())))
    assert worker.stats()["requests"] == 0


@pytest.fixture(scope="module")
def actor(compact_folder):
    from plandiff.orchestrator.executors import start_local_ray
    from plandiff.workers.actor import remote_worker_class

    start_local_ray(num_cpus=2, log_to_driver=False)  # on 127.0.0.1 only
    handle = remote_worker_class(num_cpus=1).remote(str(compact_folder), flush_interval=0.0)
    ray.get(handle.health.remote())
    yield handle
    ray.shutdown()


def test_phases_across_ray(actor, compact):
    prompt = compact.encode_prompt("x")

    async def run():
        await actor.open.remote("r", prompt, GenerationOptions(), compact.encode_plan(PLAN), None)
        kinds = []
        for phase in ("plan", "denoise", "plan", "denoise"):
            async for ref in actor.run_phase.remote("r", phase):
                item = await ref
                assert not holds_tensor(item)
                kinds += [type(e) for e in item] if isinstance(item, list) else [type(item)]
        released = await actor.release.remote("r")
        return kinds, released, await actor.stats.remote()

    kinds, released, stats = asyncio.run(run())
    assert kinds.count(RoundPlanned) == 2 and kinds.count(RoundJoined) == 2 and kinds[-1] is GenerationResult
    assert released and stats["requests"] == 0


def test_control_calls_answer_while_a_phase_runs(actor, compact):
    long_plan = "<promise>-<topic>long 25</topic><|im_end|>"

    async def run():
        prompt = compact.encode_prompt("x")
        options = GenerationOptions(max_new_tokens=400)
        stream = actor.generate.remote("busy", prompt, options, compact.encode_plan(long_plan), None)
        await stream.__anext__()  # the phase is running now
        started = time.perf_counter()
        stats = await actor.stats.remote()
        answered = time.perf_counter() - started
        cancelled = await actor.cancel.remote("busy")
        async for ref in stream:
            await ref
        return stats, answered, cancelled, await actor.stats.remote()

    stats, answered, cancelled, after = asyncio.run(run())
    assert stats["requests"] == 1 and cancelled
    assert answered < 0.5  # not queued behind the 250-step phase
    assert after["requests"] == 0
