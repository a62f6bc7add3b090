"""Which requests share the next forward.

Admission: a request runs once the KV pool holds its longest possible length, and at most
`max_requests` run at once; the others wait, first come first served. Each step takes the next
forward of every running request that is ready (the next planning token, or the live spans of a
round being denoised), oldest-stepped first, while the step's tokens stay within
`max_tokens_per_step` and its logit rows (only positions still to be decided have one) within
`max_logit_rows_per_step`; a request whose forward alone exceeds a budget (a long prefill) runs in
a step of its own. Requests join at any step and leave the moment they finish or are aborted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from plandiff.model.generation import Forward, Phase, RequestState
from plandiff.model.model_runner import ModelRunner, Sequence


@dataclass
class Entry:
    request_id: str
    state: RequestState
    seq: Sequence | None = None  # set once admitted
    paused: bool = False  # admitted and holding its memory, but not stepped (between a worker's phases)
    last_step: int = -1


class Scheduler:
    def __init__(self, runner: ModelRunner, max_tokens_per_step: int = 8192, max_requests: int = 64,
                 max_logit_rows_per_step: int = 8192):
        self.runner = runner
        self.max_tokens_per_step = max_tokens_per_step
        self.max_logit_rows_per_step = max_logit_rows_per_step  # rows × vocabulary: the step's largest tensors
        self.max_requests = max_requests
        self.waiting: deque[Entry] = deque()
        self.running: dict[str, Entry] = {}
        self.steps = 0

    def add(self, entry: Entry) -> None:
        self.waiting.append(entry)
        self.admit()

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.max_requests:
            seq = self.runner.admit(self.waiting[0].state)
            if seq is None:  # the pool is full: wait for a request to finish or be aborted
                return
            entry = self.waiting.popleft()
            entry.seq = seq
            self.running[entry.request_id] = entry

    def remove(self, request_id: str) -> Entry | None:
        entry = self.running.pop(request_id, None)
        if entry is not None:
            self.runner.release(entry.seq)
        else:
            entry = next((e for e in self.waiting if e.request_id == request_id), None)
            if entry is not None:
                self.waiting.remove(entry)
        self.admit()
        return entry

    def schedule(self) -> tuple[list[Entry], list[Forward]]:
        ready = sorted((e for e in self.running.values() if not e.paused and e.state.phase is not Phase.DONE),
                       key=lambda e: e.last_step)
        picked, forwards, tokens, rows = [], [], 0, 0
        for entry in ready:
            forward = entry.state.schedule()
            cost, logit_rows = len(forward.positions), len(forward.logit_positions)
            if picked and (tokens + cost > self.max_tokens_per_step or rows + logit_rows > self.max_logit_rows_per_step):
                continue
            picked.append(entry)
            forwards.append(forward)
            tokens += cost
            rows += logit_rows
        for entry in picked:
            entry.last_step = self.steps
        if picked:
            self.steps += 1
        return picked, forwards
