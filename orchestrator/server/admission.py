"""Admission: at most `max_running` requests generate at once, at most `max_waiting` more wait for a
slot in arrival order, and a request past both is refused at arrival (429), before its body is read.
So memory is bounded by (running + waiting) requests whatever the load.

    ticket = admission.reserve()      # at arrival; raises Overloaded
    await ticket.start()              # waits for a running slot (cancellable)
    ticket.finish()                   # always; idempotent
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class Overloaded(Exception):
    """Every running and waiting place is taken."""


class Ticket:
    def __init__(self, admission: Admission):
        self.admission = admission
        self.state = "waiting"  # → running → finished
        self.arrived = time.perf_counter()
        self.started: float | None = None
        self._slot: asyncio.Future | None = None

    async def start(self) -> None:
        """Wait for a running slot. A cancelled wait leaves the queue (and passes on a slot it was handed)."""
        a = self.admission
        if self.state != "waiting":
            raise RuntimeError(f"ticket is {self.state}")
        if a.running < a.max_running and not a._queue:
            a.running += 1
            a.waiting -= 1
        else:
            self._slot = asyncio.get_running_loop().create_future()
            a._queue.append(self)
            await self._slot  # set by finish() of a running request, which moved the counts for us
        self.state = "running"
        self.started = time.perf_counter()

    def finish(self) -> None:
        a = self.admission
        if self.state == "finished":
            return
        if self.state == "running" or (self._slot is not None and self._slot.done() and not self._slot.cancelled()):
            a.running -= 1  # ours, or one handed to us while we were being cancelled
            a._hand_on()
        else:
            a.waiting -= 1
            if self._slot is not None:
                self._slot.cancel()
                try:
                    a._queue.remove(self)
                except ValueError:
                    pass
        self.state = "finished"


class Admission:
    def __init__(self, max_running: int, max_waiting: int):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0  # arrived and not yet running (reading the body, validating or queued)
        self._queue: deque[Ticket] = deque()

    def reserve(self) -> Ticket:
        if self.running + self.waiting >= self.max_running + self.max_waiting:
            raise Overloaded(f"{self.running} requests running and {self.waiting} waiting: the server is at its "
                             "bound; retry later")
        self.waiting += 1
        return Ticket(self)

    def _hand_on(self) -> None:
        """A running slot came free: the longest-waiting request takes it."""
        while self._queue and self.running < self.max_running:
            ticket = self._queue.popleft()
            if ticket._slot.done():
                continue
            self.running += 1
            self.waiting -= 1
            ticket._slot.set_result(None)
