"""A worker: one loaded model serving generation *phases* for many requests, through one batched
engine (engine.py): every request with a phase running shares each forward.

A phase is "plan until the round's plan ends" or "denoise the round's spans until they are joined";
`plan` / `denoise` stream one phase's events. The worker keeps each request's state and KV memory
between phases (`open` … `release`), so every phase of a request must come back to the worker that
holds it; between its phases a request is paused in the engine. `generate` runs all of a request's
phases in one streaming call, for callers with nothing to decide between phases.

One drive task per event loop steps the engine while any phase runs and hands each request's events
to its stream; it gives the loop a turn while each step computes on the device, so requests join,
cancel and read the previous step's events between forwards at no cost to the device. When the
next step can be known without the one in flight's decisions (the next planning or decoding token
of each request, a round's next denoising step), it is queued before the one in flight is finished
(Engine.launch_ahead): the device does not wait for the host between them.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import torch

from plandiff.model import GenerationOptions, GenerationResult, InvalidRequestError, ModelRuntime
from plandiff.model.events import RequestEvent, RoundJoined, SpanRetried
from plandiff.model.generation import Phase, RequestState

from .engine import Engine
from .logs import get_logger

PhaseName = str  # "plan" or "denoise"
PHASES = {"plan": Phase.PLAN, "denoise": Phase.DENOISE}
IDLE_WAIT = 0.005  # seconds the drive task sleeps when running phases wait for KV memory
END = object()  # a phase stream's last item


@dataclass
class Slot:
    state: RequestState
    phases: set[Phase] = field(default_factory=set)  # the phases its running stream covers (empty: paused)
    interval: float = 0.0  # seconds to gather events before handing them over
    queue: asyncio.Queue | None = None
    pending: list[RequestEvent] = field(default_factory=list)
    flushed: float = 0.0
    cancelled: bool = False


class Worker:
    def __init__(self, model: str | ModelRuntime, dtype: str | None = None, device: str = "cpu", name: str = "worker",
                 flush_interval: float = 0.0, max_tokens_per_step: int = 8192, max_requests: int = 64,
                 device_share: float = 1.0):
        """`flush_interval`: seconds to gather a phase's events before yielding them (0 = after every
        forward); across Ray each yielded item costs a message, so remote workers batch.
        `max_tokens_per_step`, `max_requests`: the engine's token budget and admission limit.
        `model`: a checkpoint folder, or a loaded runtime (benchmarks build random weights in place).
        `device_share`: the share of the GPU this worker has (several workers on one GPU)."""
        self.name = name
        self.flush_interval = flush_interval
        self.runtime = model if isinstance(model, ModelRuntime) else ModelRuntime.load(
            model, dtype=dtype, device=device, device_share=device_share)
        self.engine = Engine(self.runtime.runner, max_tokens_per_step, max_requests)
        self.slots: dict[str, Slot] = {}
        self.busy_seconds = 0.0  # time spent in engine steps (forwards and state updates)
        # A list to time every step's parts into (benchmarks): the engine's launch, the others' turn
        # on the event loop while the device computes, the finish (waiting for the device included),
        # handing the events over; seconds, one dict a step
        self.laps: list[dict[str, float]] | None = None
        self._driver: asyncio.Task | None = None
        self.log = get_logger("plandiff.worker", worker=name, pid=os.getpid())
        self.log.info("worker_ready", model=str(model) if not isinstance(model, ModelRuntime) else "in memory",
                      device=str(self.runtime.network.device))

    @property
    def forwards(self) -> int:
        return self.engine.steps

    def open(
        self,
        request_id: str,
        prompt_ids: list[int],
        options: GenerationOptions,
        plan: list[list[int]] | None = None,
        resume: list[int] | None = None,
    ) -> None:
        """Create the request's state (and replay `resume`, its committed tokens, if given); it
        waits in the engine, paused, for its first phase (admitted once its KV memory fits)."""
        if request_id in self.slots:
            raise InvalidRequestError(f"request {request_id} is already open on {self.name}")
        state = self.runtime.new_state(prompt_ids, options, plan)
        if resume:
            state.resume(resume)
        self.engine.add(request_id, state, paused=True)
        self.slots[request_id] = Slot(state)
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

    async def _run(self, request_id: str, slot: Slot, phases: set[Phase], interval: float):
        """Un-pause the request for `phases`, and hand over what the drive task queues for it."""
        slot.phases, slot.interval = phases, interval
        slot.queue, slot.pending, slot.flushed = asyncio.Queue(), [], time.monotonic()
        self.engine.pause(request_id, False)
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        try:
            while (item := await slot.queue.get()) is not END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._stop(request_id, slot)

    def _stop(self, request_id: str, slot: Slot) -> None:
        """The phase stream ended (or its reader left): hold the request without stepping it."""
        slot.phases = set()
        self.engine.pause(request_id, True)

    async def _drive(self) -> None:
        """Step the engine while any phase runs; route each request's events to its stream. The
        loop's turn comes while the device computes: each step is launched (unless it was launched
        ahead), the next one too if it can be (Engine.launch_ahead), then the streams take the
        previous step's events, then the oldest step is finished."""
        while True:
            for request_id, slot in list(self.slots.items()):
                if slot.phases and slot.cancelled:
                    self.log.info("request_cancelled", request_id=request_id, round=slot.state.round.index)
                    self._stop(request_id, slot)
                    slot.queue.put_nowait(END)
            if not any(slot.phases for slot in self.slots.values()):
                return
            began, queued, resumed = time.perf_counter(), None, None
            try:
                launched = self.engine.in_flight or self.engine.launch()
                if launched:
                    self.engine.launch_ahead()
                queued = time.perf_counter()
                await asyncio.sleep(0 if launched else IDLE_WAIT)
                resumed = time.perf_counter()
                outputs = self.engine.finish() if launched else []
            except Exception as err:  # the forward itself failed (out of device memory, …): every running
                # phase ends with the error rather than wait for a step that will not come
                self.log.error("step_failed", error=f"{type(err).__name__}: {err}"[:500])
                for request_id, slot in list(self.slots.items()):
                    if slot.phases:
                        self._stop(request_id, slot)
                        slot.queue.put_nowait(err)
                continue
            finally:
                finished = time.perf_counter()
                self.busy_seconds += (queued or finished) - began + (finished - resumed if resumed else 0.0)
            for output in outputs:
                self._deliver(output)
            if self.laps is not None and launched:
                self.laps.append({"launch": queued - began, "others": resumed - queued, "finish": finished - resumed,
                                  "deliver": time.perf_counter() - finished})

    def _deliver(self, output) -> None:
        slot = self.slots.get(output.request_id)
        if slot is None or not slot.phases:
            return
        state = output.state
        for event in output.events:
            if isinstance(event, SpanRetried):
                self.log.info("span_retried", request_id=output.request_id, round=event.round, span=event.index,
                              previous=event.previous, length=event.length)
            elif isinstance(event, RoundJoined):
                self.log.info("round_joined", request_id=output.request_id, round=event.round, stop=event.stop)
        slot.pending += output.events
        if output.error is not None:
            slot.queue.put_nowait(output.error)
        elif state.phase in slot.phases:
            joined = any(isinstance(e, RoundJoined) for e in output.events)
            if joined or time.monotonic() - slot.flushed >= slot.interval:
                slot.queue.put_nowait(slot.pending)
                slot.pending, slot.flushed = [], time.monotonic()
            return
        else:
            if slot.pending:
                slot.queue.put_nowait(slot.pending)
            if state.phase is Phase.DONE:
                slot.queue.put_nowait(self.runtime.result(state))
        slot.pending = []
        slot.phases = set()
        self.engine.pause(output.request_id, True)
        slot.queue.put_nowait(END)

    def plan(self, request_id: str):
        return self.run_phase(request_id, "plan")

    def denoise(self, request_id: str):
        return self.run_phase(request_id, "denoise")

    def cancel(self, request_id: str) -> bool:
        """Stop the request's running phase at its next step boundary (a flag: Ray calls this from
        its control thread while the engine steps)."""
        slot = self.slots.get(request_id)
        if slot is not None:
            slot.cancelled = True
        return slot is not None

    def release(self, request_id: str) -> bool:
        """Free the request's state and KV memory."""
        slot = self.slots.pop(request_id, None)
        if slot is not None:
            self.engine.abort(request_id)
            self.log.info("request_released", request_id=request_id)
        return slot is not None

    def stats(self) -> dict:
        return {
            "name": self.name,
            "pid": os.getpid(),
            "requests": len(self.slots),
            **self.engine.stats(),
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
