"""A worker: one loaded model serving generation *phases* for many requests.

A phase is "plan until the round's plan ends" or "denoise the round's spans until they are joined";
`plan` / `denoise` stream one phase's events. The worker keeps each request's state and KV cache
between phases (`open` … `release`), so every phase of a request must come back to the worker that
holds it. `generate` runs all of a request's phases in one streaming call, for callers with nothing
to decide between phases. Until the batched engine exists, concurrent phases take turns, one
forward each.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import AsyncIterator

import torch

from plandiff.model import GenerationOptions, GenerationResult, InvalidRequestError, ModelRuntime
from plandiff.model.events import RequestEvent, RoundJoined, SpanRetried
from plandiff.model.generation import Phase, RequestState
from plandiff.model.network import KVCache

from .logs import get_logger

PhaseName = str  # "plan" or "denoise"
YIELD_INTERVAL = 0.02  # seconds a lone request may hold the event loop
PHASES = {"plan": Phase.PLAN, "denoise": Phase.DENOISE}


@dataclass
class Slot:
    state: RequestState
    cache: KVCache
    cancelled: bool = False


class Worker:
    def __init__(self, model: str, dtype: str | None = None, device: str = "cpu", name: str = "worker",
                 flush_interval: float = 0.0):
        """`flush_interval`: seconds to gather a phase's events before yielding them (0 = after every
        forward); across Ray each yielded item costs a message, so remote workers batch."""
        self.name = name
        self.flush_interval = flush_interval
        self.runtime = ModelRuntime.load(model, dtype=dtype, device=device)
        self.slots: dict[str, Slot] = {}
        self.forwards = 0
        self.running = 0  # requests in a phase right now
        self.busy_seconds = 0.0  # time spent in forwards and state updates
        self.log = get_logger("plandiff.worker", worker=name, pid=os.getpid())
        self.log.info("worker_ready", model=str(model), device=device)

    def open(
        self,
        request_id: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        plan: list[list[int]] | None = None,
        resume: list[int] | None = None,
    ) -> None:
        """Create the request's state (and replay `resume`, its committed tokens, if given)."""
        if request_id in self.slots:
            raise InvalidRequestError(f"request {request_id} is already open on {self.name}")
        state = self.runtime.new_state(prompt_ids, options, plan)
        if resume:
            state.resume(resume)
        self.slots[request_id] = Slot(state, self.runtime.network.new_cache(len(state.tokens) + 64))
        self.log.info("request_opened", request_id=request_id, resumed_tokens=len(resume or ()))

    async def run_phase(self, request_id: str, phase: PhaseName) -> AsyncIterator[list[RequestEvent] | GenerationResult]:
        """Run the request's current phase to its end, yielding its events (batched by
        `flush_interval`), and the result if the request is then done."""
        slot = self._slot(request_id)
        if slot.state.phase is not PHASES[phase]:
            raise InvalidRequestError(f"request {request_id} is in phase {slot.state.phase.value}, not {phase}")
        async for item in self._run(request_id, slot, {PHASES[phase]}, self.flush_interval):
            yield item

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        plan: list[list[int]] | None = None,
        resume: list[int] | None = None,
        stream: bool = True,
    ) -> AsyncIterator[list[RequestEvent] | GenerationResult]:
        """Open a request, run all its phases to the end and free it: one call per request, the
        cheapest across Ray. Events come every `flush_interval` if `stream`, else at each round's
        join (the commit points a resumed request needs) and at the end; then the result."""
        self.open(request_id, prompt_ids, options, plan, resume)
        interval = self.flush_interval if stream else float("inf")
        try:
            async for item in self._run(request_id, self.slots[request_id], {Phase.PLAN, Phase.DENOISE}, interval):
                yield item
        finally:
            self.release(request_id)

    async def _run(self, request_id: str, slot: Slot, phases: set[Phase], flush_interval: float):
        self.running += 1
        try:
            async for item in self._steps(request_id, slot, phases, flush_interval):
                yield item
        finally:
            self.running -= 1

    async def _steps(self, request_id: str, slot: Slot, phases: set[Phase], flush_interval: float):
        """Forward by forward while the request is in one of `phases`."""
        state = slot.state
        log = self.log.bind(request_id=request_id)
        pending: list[RequestEvent] = []
        flushed = yielded = time.monotonic()
        while state.phase in phases and not slot.cancelled:
            forward = state.schedule()
            if forward.fresh_cache:
                slot.cache = self.runtime.network.new_cache(forward.key_length)
            started = time.perf_counter()
            state.advance(forward, self.runtime.forward(state, forward, slot.cache))
            self.busy_seconds += time.perf_counter() - started
            self.forwards += 1
            events = state.drain()
            for event in events:
                if isinstance(event, SpanRetried):
                    log.info("span_retried", round=event.round, span=event.index, previous=event.previous,
                             length=event.length)
                elif isinstance(event, RoundJoined):
                    log.info("round_joined", round=event.round, stop=event.stop)
            pending += events
            joined = any(isinstance(e, RoundJoined) for e in events)
            if state.phase in phases and (joined or time.monotonic() - flushed >= flush_interval):
                yield pending
                pending, flushed = [], time.monotonic()
            # Turns: one forward each while other requests are running here; alone, still give
            # the event loop (an in-process caller, a cancel) a turn every YIELD_INTERVAL.
            if self.running > 1 or time.monotonic() - yielded >= YIELD_INTERVAL:
                await asyncio.sleep(0)
                yielded = time.monotonic()
        if slot.cancelled:
            log.info("request_cancelled", round=state.round.index)
            return
        if pending:
            yield pending
        if state.phase is Phase.DONE:
            yield self.runtime.result(state)

    def plan(self, request_id: str):
        return self.run_phase(request_id, "plan")

    def denoise(self, request_id: str):
        return self.run_phase(request_id, "denoise")

    def cancel(self, request_id: str) -> bool:
        """Stop the request's running phase at its next forward boundary."""
        slot = self.slots.get(request_id)
        if slot is not None:
            slot.cancelled = True
        return slot is not None

    def release(self, request_id: str) -> bool:
        """Free the request's state and KV cache."""
        slot = self.slots.pop(request_id, None)
        if slot is not None:
            self.log.info("request_released", request_id=request_id)
        return slot is not None

    def stats(self) -> dict:
        return {
            "name": self.name,
            "pid": os.getpid(),
            "requests": len(self.slots),
            "kv_cache_bytes": sum(s.cache.nbytes() for s in self.slots.values()),
            "forwards": self.forwards,
            "busy_seconds": self.busy_seconds,
            "threads": torch.get_num_threads(),
        }

    def health(self) -> bool:
        return True

    def _slot(self, request_id: str) -> Slot:
        if request_id not in self.slots:
            raise InvalidRequestError(f"request {request_id} is not open on {self.name}")
        return self.slots[request_id]
