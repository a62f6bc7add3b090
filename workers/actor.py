"""The worker as a Ray actor. Control calls (health, stats, cancel) run in their own concurrency
group, so they are answered while a phase is busy with a forward."""

from __future__ import annotations

import ray

from .logs import configure_logging
from .worker import Worker


class WorkerActor(Worker):
    def __init__(self, model: str, dtype: str | None = None, device: str = "cpu", name: str = "worker",
                 flush_interval: float = 0.05):
        configure_logging()
        super().__init__(model, dtype=dtype, device=device, name=name, flush_interval=flush_interval)

    @ray.method(concurrency_group="control")
    def cancel(self, request_id: str) -> bool:
        return super().cancel(request_id)

    @ray.method(concurrency_group="control")
    def stats(self) -> dict:
        return super().stats()

    @ray.method(concurrency_group="control")
    def health(self) -> bool:
        return True


def remote_worker_class(num_cpus: float = 1.0, num_gpus: float = 0.0):
    """A Ray actor class of the worker. A worker that dies is restarted (its requests are resumed
    elsewhere by the orchestrator); calls are not retried by Ray, the orchestrator decides."""
    return ray.remote(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0,
        concurrency_groups={"control": 1},
    )(WorkerActor)
