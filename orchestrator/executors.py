"""Executor backends, as vLLM names them: where the workers live.

- ``local``: one worker in this process (no Ray): for one-shot runs and library use, where starting
  Ray costs more than the answer.
- ``ray``: worker actors on a Ray cluster: an embedded local one started on demand, or an existing
  one (``address``); one actor per GPU, or N CPU actors.

Both hand the orchestrator `WorkerHandle`s with the same async interface; a worker that is lost
(its process died) surfaces as `WorkerLost`, whatever the backend.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from typing import AsyncIterator

from typing import TYPE_CHECKING

from plandiff.model.events import RequestEvent
from plandiff.model.options import GenerationOptions

if TYPE_CHECKING:
    from plandiff.model.result import GenerationResult
    from plandiff.workers.worker import Worker

    from .settings import RunSettings


class WorkerLost(Exception):
    """The worker's process died; its requests' states are gone."""


class WorkerHandle(ABC):
    name: str
    load = 0  # requests the orchestrator has routed here and not yet finished

    @abstractmethod
    def generate(self, request_id: str, prompt_ids: list[int], options: GenerationOptions,
                 plan: list[list[int]] | None, resume: list[int] | None, stream: bool
                 ) -> AsyncIterator[list[RequestEvent] | GenerationResult]:
        """Stream the request's phases to the end; the worker frees the request when it stops."""

    @abstractmethod
    async def cancel(self, request_id: str) -> None: ...

    @abstractmethod
    async def stats(self) -> dict: ...


class LocalWorkerHandle(WorkerHandle):
    def __init__(self, worker: Worker):
        self.worker = worker
        self.name = worker.name

    def generate(self, request_id, prompt_ids, options, plan, resume, stream):
        return self.worker.generate(request_id, prompt_ids, options, plan, resume, stream)

    async def cancel(self, request_id):
        self.worker.cancel(request_id)

    async def stats(self):
        return self.worker.stats()


class RayWorkerHandle(WorkerHandle):
    def __init__(self, actor, name: str):
        self.actor = actor
        self.name = name

    async def generate(self, request_id, prompt_ids, options, plan, resume, stream):
        from ray.exceptions import RayActorError

        try:
            async for ref in self.actor.generate.remote(request_id, prompt_ids, options, plan, resume, stream):
                yield await ref
        except RayActorError as err:
            raise WorkerLost(f"{self.name}: {err}") from err

    async def _call(self, method: str, *args):
        from ray.exceptions import RayActorError

        try:
            return await getattr(self.actor, method).remote(*args)
        except RayActorError as err:
            raise WorkerLost(f"{self.name}: {err}") from err

    async def cancel(self, request_id):
        await self._call("cancel", request_id)

    async def stats(self):
        return await self._call("stats")


class Executor(ABC):
    workers: list[WorkerHandle]

    def pick(self, avoid: WorkerHandle | None = None) -> WorkerHandle:
        """The least loaded worker, another than `avoid` when there is one."""
        candidates = [w for w in self.workers if w is not avoid] or self.workers
        return min(candidates, key=lambda w: w.load)

    async def wait_ready(self) -> None:
        """Return once every worker answers."""
        await asyncio.gather(*(w.stats() for w in self.workers))

    def shutdown(self) -> None:
        """Stop the workers (nothing to do for an in-process one)."""


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, model: str, dtype: str | None = None, device: str = "cpu"):
        from plandiff.workers.worker import Worker

        self.workers = [LocalWorkerHandle(Worker(model, dtype=dtype, device=device, name="local-0"))]


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, model: str, workers: int = 1, dtype: str | None = None, device: str = "cpu",
                 address: str | None = None, num_cpus_per_worker: float = 1.0):
        import ray

        from plandiff.workers.actor import remote_worker_class

        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            if address is None:
                # Ray starts workers at nice 15; a model worker then loses the CPU to Ray's own
                # daemons (measured: 5 % slower forwards on 2 cores). Workers of a cluster we start
                # run at normal priority.
                os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        gpu = device.startswith("cuda")
        cls = remote_worker_class(num_cpus=0 if gpu else num_cpus_per_worker, num_gpus=1 if gpu else 0)
        self.workers = [
            RayWorkerHandle(cls.remote(str(model), dtype, "cuda" if gpu else device, f"worker-{i}"), f"worker-{i}")
            for i in range(workers)
        ]

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w.actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()


def build_executor(settings: RunSettings, kind: str | None = None) -> Executor:
    """The one place an executor is made from settings (`kind` overrides settings.executor)."""
    kind = kind or settings.executor
    if kind == "ray":
        return RayExecutor(settings.model, workers=settings.workers, dtype=settings.dtype, device=settings.device,
                           address=settings.address)
    return LocalExecutor(settings.model, dtype=settings.dtype, device=settings.device)
