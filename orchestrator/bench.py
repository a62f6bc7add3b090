"""`plandiff bench overhead`: what the orchestrator and an executor add to end-to-end latency.

For the same prompts and the same forced plan (two rounds, three spans, shaped like a short real
answer), each request is timed, one at a time, driven directly (`ModelRuntime.run`) and through
`Orchestrator.complete` over an executor, alternately. Overhead = (median routed − median direct) /
median direct. Every path computes with one thread, as a worker actor of one CPU does.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import torch

from plandiff.model import ModelRuntime
from plandiff.model.codec import TextCodec

from .executors import build_executor
from .orchestrator import GenerateRequest, Orchestrator
from .settings import GenerateSettings

PLAN = ("<promise>-<topic>definition 3</topic><promise>-<topic>examples 2</topic><sync/>"
        "<promise>-<topic>summary 1</topic><|im_end|>")
WARMUP = 2
THREADS = 1


def run_overhead(settings: GenerateSettings, requests: int, executors: list[str]) -> int:
    torch.set_num_threads(THREADS)  # the same compute as a worker actor of one CPU
    prompts = [f"Question number {i}: what is planned diffusion?" for i in range(requests + WARMUP)]
    options = settings.options()
    runtime = ModelRuntime.load(settings.model, dtype=settings.dtype, device=settings.device)
    print(f"{requests} requests, one at a time, forced plan of 3 spans in 2 rounds, {THREADS} thread(s); "
          f"model {settings.model}")
    print(f"{'path':32s} {'median ms':>10s} {'direct ms':>10s} {'overhead':>9s}")
    report = {}
    for kind in executors:
        executor = build_executor(settings, kind)
        try:
            orchestrator = Orchestrator(executor, TextCodec.load(settings.model))
            direct, routed = asyncio.run(_alternating(runtime, orchestrator, executor, prompts, settings, options))
        finally:
            executor.shutdown()
        base, median = statistics.median(direct[WARMUP:]), statistics.median(routed[WARMUP:])
        name = f"orchestrator + {kind} executor"
        report[name] = {"median_s": median, "direct_median_s": base, "overhead": (median - base) / base}
        print(f"{name:32s} {median * 1e3:10.2f} {base * 1e3:10.2f} {(median - base) / base:9.2%}")
    print(json.dumps(report))
    return 0


async def _alternating(runtime, orchestrator, executor, prompts, settings, options):
    """Each prompt runs directly and then through the orchestrator, so drift hits both alike."""
    await executor.wait_ready()
    direct, routed = [], []
    for prompt in prompts:
        state = runtime.new_state(runtime.encode_prompt(prompt, settings.system), options, runtime.encode_plan(PLAN))
        start = time.perf_counter()
        runtime.run(state)
        direct.append(time.perf_counter() - start)
        request = GenerateRequest(prompt=prompt, system=settings.system, plan=PLAN, options=options)
        start = time.perf_counter()
        await orchestrator.complete(request)
        routed.append(time.perf_counter() - start)
    return direct, routed
