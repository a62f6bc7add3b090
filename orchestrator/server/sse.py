"""Server-sent events, and an ASGI response that races its work against the client going away.

A disconnect cancels the work at once (the orchestrator then stops the request at the worker's next
forward and frees its slot), whether the answer streams or not, and whether or not anything has been
written yet: the listener waits on `http.disconnect` rather than on a failed write.
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

Send = Callable[[dict], Awaitable[None]]
DONE = b"data: [DONE]\n\n"
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]


def dumps(data) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {dumps(data)}\n\n".encode()


async def _disconnected(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class RacingResponse:
    """Runs `work(send)` as the response; returns early (cancelling it) if the client disconnects.
    `on_disconnect` is called when that happened before the work was done."""

    def __init__(self, work: Callable[[Send], Awaitable[None]], on_disconnect: Callable[[], None] | None = None):
        self.work = work
        self.on_disconnect = on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        work = asyncio.ensure_future(self.work(send))
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({work, listener}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                if self.on_disconnect is not None:
                    self.on_disconnect()
            try:
                await work
            except asyncio.CancelledError:
                if not listener.done():
                    raise  # we were cancelled ourselves (the server is stopping)
            except OSError:
                pass  # the client went away during a write
        finally:
            for task in (work, listener):
                if not task.done():
                    task.cancel()
            await asyncio.gather(work, listener, return_exceptions=True)
