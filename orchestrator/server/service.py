"""What one server holds: its settings, the codec, the executor and orchestrator, admission, metrics,
and its state: starting (the model loads while the port already answers 503) → ready → draining
(SIGTERM: new requests get 503, in-flight ones finish) → stopped; or failed (the model did not load).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable, Literal

from plandiff.workers.logs import get_logger

from ..settings import ServeSettings
from .admission import Admission
from .errors import APIError
from .metrics import ServerMetrics

State = Literal["starting", "ready", "draining", "failed", "stopped"]


class Service:
    def __init__(self, settings: ServeSettings, served_model_name: str | None = None):
        self.settings = settings
        self.model_name = served_model_name or settings.served_model_name or Path(str(settings.model)).name
        self.defaults = settings.options()  # a request's body overrides these
        self.state: State = "starting"
        self.error: BaseException | None = None
        self.admission = Admission(settings.max_running_requests, settings.max_waiting_requests)
        self.metrics = ServerMetrics(self.model_name)
        self.metrics.bind_admission(self.admission)
        self.codec = None
        self.executor = None
        self.orchestrator = None
        self.created = int(time.time())
        self.started = time.perf_counter()
        self.ready_seconds: float | None = None
        self.on_change: list[Callable[[Service], None]] = []
        self.log = get_logger("plandiff.server", model=self.model_name)
        self._loading: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        """Load the model in the background; the app answers (503) meanwhile."""
        self.loop = asyncio.get_running_loop()
        self._loading = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        from plandiff.model.codec import TextCodec

        from ..executors import build_executor
        from ..orchestrator import Orchestrator

        try:
            # Loading blocks (files, torch, Ray start): off the event loop, which keeps answering.
            self.codec = await asyncio.to_thread(TextCodec.load, self.settings.model)
            self.executor = await asyncio.to_thread(build_executor, self.settings)
            await self.executor.wait_ready()
            self.orchestrator = Orchestrator(self.executor, self.codec)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.error = err
            self._set("failed")
            self.log.error("server_failed", error=str(err)[:500], error_type=type(err).__name__)
            return
        self.ready_seconds = time.perf_counter() - self.started
        if self.state != "starting":  # drained (SIGTERM) while loading
            return
        self._set("ready")
        self.log.info("server_ready", seconds=round(self.ready_seconds, 3), executor=self.settings.executor,
                      workers=len(self.executor.workers))

    def drain(self) -> None:
        if self.state in ("starting", "ready"):
            self._set("draining")
            self.log.info("server_draining", running=self.admission.running, waiting=self.admission.waiting)

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown)
            self.executor = None
        if self.state != "failed":
            self._set("stopped")

    def _set(self, state: State) -> None:
        self.state = state
        for callback in list(self.on_change):
            callback(self)

    # ------------------------------------------------------------------ requests

    @property
    def in_flight(self) -> int:
        return self.admission.running + self.admission.waiting

    @property
    def max_tokens_limit(self) -> int:
        return self.settings.max_tokens_limit or self.codec.max_positions or self.defaults.max_new_tokens

    @property
    def max_prompt_tokens(self) -> int | None:
        if self.settings.max_prompt_tokens is not None:
            return self.settings.max_prompt_tokens
        return self.codec.max_positions - 1 if self.codec.max_positions else None

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after)}

    def check_accepting(self) -> None:
        """Raise the 503 of a server that is not ready."""
        if self.state == "ready":
            return
        self.metrics.reject(self.state)
        why = {"starting": "the model is still loading", "draining": "the server is shutting down",
               "failed": f"the model failed to load: {str(self.error)[:300]}",
               "stopped": "the server has stopped"}[self.state]
        raise APIError(503, f"not ready: {why}; retry later", None, self.state,
                       self.retry_after() if self.state in ("starting", "draining") else None)
