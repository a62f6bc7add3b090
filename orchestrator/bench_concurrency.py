"""`plandiff bench engine`, section (4): requests at several concurrencies through the orchestrator on
one in-process worker (bench_engine.py holds the other sections and prints the table)."""

from __future__ import annotations

import asyncio
import statistics
import time

from .executors import LocalExecutor
from .orchestrator import GenerateRequest, Orchestrator


async def sweep(runtime, prompt, plan, pd, ar, levels, say=lambda message: None) -> dict:
    """AR (`ar`) and PD (`pd` with the forced `plan`) requests at each concurrency of `levels`
    through the orchestrator on one in-process worker of `runtime`: aggregate tokens/s, latency,
    forwards, the worker's time in engine calls and a step's parts, and where AR overtakes PD. Each
    level runs once untimed first, so its CUDA graphs are captured outside the timing. `say` is told
    each run as it starts."""
    executor = LocalExecutor(runtime, max_requests=max(levels))
    worker = executor.workers[0].worker
    orchestrator = Orchestrator(executor, runtime.codec)
    rows = {}
    for mode, options, forced in (("ar", ar, None), ("pd", pd, plan)):
        for level in levels:
            say(f"{mode.upper()} at concurrency {level} through the orchestrator")

            async def one():
                start = time.perf_counter()
                done = await orchestrator.complete(GenerateRequest(prompt_ids=prompt, plan=forced, options=options))
                return time.perf_counter() - start, done.usage.generated_tokens

            await asyncio.gather(*(one() for _ in range(level)))  # untimed: this level's graph shapes captured
            forwards, busy, graphs = worker.forwards, worker.busy_seconds, runtime.runner._graphs
            captures = (len(graphs.graphs), graphs.capture_seconds) if graphs is not None else (0, 0.0)
            worker.laps = []
            start = time.perf_counter()
            results = await asyncio.gather(*(one() for _ in range(level)))
            wall = time.perf_counter() - start
            laps, worker.laps = worker.laps, None
            latencies = sorted(r[0] for r in results)
            tokens = sum(r[1] for r in results)
            rows[f"{mode}_{level}"] = {
                "mode": mode, "concurrency": level, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                "p50_s": latencies[len(latencies) // 2], "p99_s": latencies[min(len(latencies) - 1,
                                                                              int(0.99 * len(latencies)))],
                "forwards": worker.forwards - forwards,
                # the worker's time in engine calls (device waits included); the rest is the host's
                # work outside the engine (the orchestrator, the streams) and waiting
                "engine_s": worker.busy_seconds - busy,
                # median ms of a step's parts in the worker: launch, the others' turn while the
                # device computes, finish (its wait included), handing the events over
                **{f"{part}_ms": statistics.median(lap[part] for lap in laps) * 1e3
                   for part in ("launch", "others", "finish", "deliver")},
            }
            if graphs is not None:  # CUDA graphs first captured during the timed run (counted in its wall time)
                rows[f"{mode}_{level}"].update(graphs_captured=len(graphs.graphs) - captures[0],
                                               capture_s=graphs.capture_seconds - captures[1])
    for mode in ("ar", "pd"):
        base = rows[f"{mode}_{min(levels)}"]["tokens_per_s"]
        for level in levels:
            rows[f"{mode}_{level}"]["x_batch1"] = rows[f"{mode}_{level}"]["tokens_per_s"] / base
    overtakes = [lv for lv in levels if rows[f"ar_{lv}"]["tokens_per_s"] > rows[f"pd_{lv}"]["tokens_per_s"]]
    rows["ar_overtakes_pd_at"] = overtakes[0] if overtakes else None
    return rows
