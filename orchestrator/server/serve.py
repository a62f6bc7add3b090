"""Running the app under uvicorn, with a drain on SIGTERM (and SIGINT).

uvicorn's own handling stops at once on a signal: it closes the port and gives open connections a
grace period. A model server wants the other order: first tell clients and load balancers (503 on
new requests and on /health) while the requests in flight finish, then stop. So the first signal
drains (for at most `drain_timeout` seconds), then uvicorn shuts down as usual and the process exits
0; a second signal stops at once.

    serve(settings)                           # blocks; what `plandiff serve` runs
    with BackgroundServer(settings) as url:   # a thread, e.g. in a notebook or a test
        ...
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Callable

import uvicorn

from ..settings import ServeSettings
from .app import build_app
from .service import Service

SHUTDOWN_GRACE = 2.0  # seconds uvicorn gives connections still open after the drain


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, on_ready: Callable[[str], None] | None = None):
        super().__init__(config)
        self.service = service
        self.on_ready = on_ready
        self.url: str | None = None
        self.drain_deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.drain_deadline is None and not self.should_exit:
            self.begin_drain()
        else:
            super().handle_exit(sig, frame)  # a second signal: stop now

    def begin_drain(self) -> None:
        self.drain_deadline = time.monotonic() + self.service.settings.drain_timeout
        self.service.drain()

    async def on_tick(self, counter: int) -> bool:
        service = self.service
        if self.started and self.url is None and service.state == "ready":
            self._reclaim_signals()
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            self.url = f"http://{host}:{port}"
            if self.on_ready is not None:
                self.on_ready(self.url)
        if service.state == "failed":
            self.should_exit = True
        if self.drain_deadline is not None and not self.should_exit:
            if service.in_flight == 0 or time.monotonic() >= self.drain_deadline:
                if service.in_flight:
                    service.log.warning("drain_timeout", running=service.admission.running,
                                        waiting=service.admission.waiting)
                self.should_exit = True
        return await super().on_tick(counter)


    def _reclaim_signals(self) -> None:
        """Starting Ray (in a loader thread) puts its own fatal-signal handler on SIGTERM, which
        prints a stack and aborts the process after our drain (exit -6). Ours again, from the main
        thread, as uvicorn set them; uvicorn restores the originals when it returns."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)


def make_server(settings: ServeSettings, served_model_name: str | None = None,
                on_ready: Callable[[str], None] | None = None) -> Server:
    app = build_app(settings, served_model_name)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            lifespan="on", timeout_graceful_shutdown=SHUTDOWN_GRACE, access_log=False)
    return Server(config, app.state.service, on_ready)


def serve(settings: ServeSettings, served_model_name: str | None = None,
          on_ready: Callable[[str], None] | None = None) -> Service:
    """Serve until a signal (drained) or a failed model load; returns the service (its `error` is set
    if the model did not load)."""
    server = make_server(settings, served_model_name, on_ready)
    server.run()
    return server.service


class BackgroundServer:
    """The server on a thread of this process, for as long as the `with` block runs."""

    def __init__(self, settings: ServeSettings, served_model_name: str | None = None, timeout: float = 120.0):
        self.server = make_server(settings, served_model_name)
        self.timeout = timeout
        self.thread = threading.Thread(target=self.server.run, name="plandiff-server", daemon=True)

    @property
    def service(self) -> Service:
        return self.server.service

    def run_coroutine(self, coroutine):
        """Run a coroutine on the server's event loop (e.g. a worker's stats) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while self.server.url is None:
            if self.service.state == "failed":
                raise self.service.error
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.loop = self.service.loop
        return self.server.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
