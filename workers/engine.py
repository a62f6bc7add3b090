"""The batched engine: many requests' steps in one forward.

    add(request_id, state) · abort(request_id) · step() = schedule → one packed forward
    (model_runner.ModelRunner.step) → every picked request's state machine advanced → its events

`step()` is `launch()` (schedule, queue the forward and decisions on the device) then `finish()`
(wait, advance, events); a caller with other host work does it between the two, while the
device computes. `launch_ahead()` queues the step after the one in flight when that step can be
known without the one in flight's decisions (each request's next planning or decoding token, or
its round's next denoising step: RequestState.ahead), which it then takes on the device: the host
packs it while the device computes, and the device does not wait for the host between the two.

Continuous batching: a request joins at any step (once admitted, scheduler.py) and leaves the
moment it finishes, fails or is aborted, freeing its KV memory for the next waiting request.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from plandiff.model.events import RequestEvent
from plandiff.model.generation import Phase, RequestState
from plandiff.model.kv_pool import BLOCK, bytes_per_position
from plandiff.model.model_runner import Launched, ModelRunner

from .scheduler import Entry, Scheduler


@dataclass
class StepOutput:
    request_id: str
    state: RequestState
    events: list[RequestEvent] = field(default_factory=list)
    error: Exception | None = None  # what its advance raised; the request has left the engine

    @property
    def finished(self) -> bool:
        return self.error is not None or self.state.phase is Phase.DONE


class Engine:
    def __init__(self, runner: ModelRunner, max_tokens_per_step: int = 8192, max_requests: int = 64,
                 max_logit_rows_per_step: int = 8192):
        self.runner = runner
        self.scheduler = Scheduler(runner, max_tokens_per_step, max_requests, max_logit_rows_per_step)
        self.last_step: list[tuple] = []
        self._in_flight: deque[tuple[list[Entry], Launched]] = deque()  # launched, oldest first (two at most)
        self.steps_ahead = 0  # steps launched ahead (launch_ahead)
        self.dropped_ahead = 0  # requests dropped from them: ended by their last token, or aborted

    def add(self, request_id: str, state: RequestState, paused: bool = False) -> None:
        if request_id in self.scheduler.running or any(e.request_id == request_id for e in self.scheduler.waiting):
            raise ValueError(f"request {request_id} is already in the engine")
        self.scheduler.add(Entry(request_id, state, paused=paused))

    def abort(self, request_id: str) -> bool:
        """Drop the request (running or waiting) and free its memory at once."""
        return self.scheduler.remove(request_id) is not None

    def pause(self, request_id: str, paused: bool = True) -> None:
        """Hold a request (and its memory) without stepping it, or let it step again."""
        entry = self.scheduler.running.get(request_id) or next(
            (e for e in self.scheduler.waiting if e.request_id == request_id), None)
        if entry is not None:
            entry.paused = paused

    def admitted(self, request_id: str) -> bool:
        return request_id in self.scheduler.running

    @property
    def steps(self) -> int:
        return self.scheduler.steps

    @property
    def in_flight(self) -> bool:
        return bool(self._in_flight)

    def has_work(self) -> bool:
        s = self.scheduler
        return any(not e.paused for e in s.running.values()) or any(not e.paused for e in s.waiting)

    def step(self) -> list[StepOutput]:
        """One forward for the requests the scheduler picks; their events (none picked: [])."""
        return self.finish() if self.launch() else []

    def launch(self) -> bool:
        """Schedule the next step and queue its forward on the device (ModelRunner.launch); False
        when no request is ready. Until `finish`, the host may do other work (a worker hands the
        previous step's events to their streams) and requests may join, pause or leave."""
        if self._in_flight:
            raise RuntimeError("a step is already in flight: finish it first")
        started = time.perf_counter()
        entries, forwards = self.scheduler.schedule()
        self.last_step = [(e.request_id, e.state.phase, f) for e, f in zip(entries, forwards)]  # for benchmarks
        if not entries:
            return False
        scheduling = time.perf_counter() - started
        self._in_flight.append((entries, self.runner.launch([e.seq for e in entries], forwards)))
        if self.runner.timings:  # the runner timed its phases of this step
            self.runner.timings[-1]["schedule"] = scheduling
        return True

    def launch_ahead(self) -> bool:
        """While one step is in flight, queue the next one when it can be known without that
        step's decisions (ModelRunner.launch_ahead) and no other request is ready to step (it would
        wait while steps go on ahead); False otherwise."""
        if len(self._in_flight) != 1:
            return False
        entries, step = self._in_flight[0]
        members = {e.request_id for e in entries}
        running = self.scheduler.running.values()
        if (any(e.paused or self.scheduler.running.get(e.request_id) is not e for e in entries)
                or any(not e.paused and e.request_id not in members for e in running)):
            return False
        ahead = self.runner.launch_ahead(step)
        if ahead is None:
            return False
        for entry in entries:
            entry.last_step = self.scheduler.steps
        self.scheduler.steps += 1
        self.steps_ahead += 1
        self._in_flight.append((entries, ahead))
        return True

    def finish(self) -> list[StepOutput]:
        """Wait for the oldest launched step and advance its requests; the events of those still in
        the engine (one aborted meanwhile has left: its memory was freed, its results are dropped).
        A step launched ahead keeps only the requests whose next forward is the one it computes."""
        entries, launched = self._in_flight.popleft()
        errors = self.runner.finish(launched)
        outputs = []
        for i, (entry, error) in enumerate(zip(entries, errors)):
            if i in launched.dropped or self.scheduler.running.get(entry.request_id) is not entry:
                continue
            output = StepOutput(entry.request_id, entry.state, entry.state.drain(), error)
            if output.finished:
                self.scheduler.remove(entry.request_id)
            outputs.append(output)
        if self._in_flight:  # the step ahead: without those aborted or ended meanwhile
            entries, ahead = self._in_flight[0]
            ahead.dropped.update(i for i, e in enumerate(entries) if self.scheduler.running.get(e.request_id) is not e)
            self.dropped_ahead += self.runner.void_ahead(ahead)
        return outputs

    def run(self, states: dict[str, RequestState]) -> dict[str, RequestState]:
        """Drive these requests together to their ends (a batch with nobody waiting on events), the
        next step launched while one is in flight where it can be (launch_ahead), as a worker does."""
        for request_id, state in states.items():
            self.add(request_id, state)
        while self.has_work() or self.in_flight:
            if self.in_flight or self.launch():
                self.launch_ahead()
                for output in self.finish():
                    if output.error is not None:
                        raise output.error
        return states

    def kv_bytes_held(self) -> int:
        pool = self.runner.pool
        held = sum(len(e.seq.blocks) for e in list(self.scheduler.running.values()))  # Ray's control thread reads
        return held * BLOCK * bytes_per_position(pool.config, pool.dtype)

    def stats(self) -> dict:
        pool = self.runner.pool
        return {
            "running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
            "kv_cache_bytes": self.kv_bytes_held(), "kv_pool_bytes": pool.nbytes(),
            "kv_pool_positions": pool.max_blocks * BLOCK, "kv_free_positions": len(pool.free_blocks) * BLOCK
            + (pool.max_blocks - pool.blocks) * BLOCK,
        }
