"""The worker as a Ray actor. Control calls (health, stats, cancel) run in their own concurrency
group, so they are answered while a phase is busy with a forward."""

from __future__ import annotations

import os
import sys

import ray

from .logs import configure_logging, get_logger
from .worker import Worker


def restore_priority() -> None:
    """Ray starts worker processes at nice 15 (RAY_worker_niceness); a model worker should not yield
    the CPU to every other process. Lowering the niceness needs privileges: try, else log."""
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            get_logger("plandiff.worker").warning("worker_runs_at_low_priority", nice=os.getpriority(os.PRIO_PROCESS, 0))


def stdout_to_stderr() -> None:
    """A worker's output is diagnostics: send what it prints (Python and C level) to its stderr, as
    its logs go, so that Ray forwards it to the driver's stderr. The driver's stdout may carry data
    (`plandiff generate --json`)."""
    sys.stdout.flush()
    try:
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stream without a file descriptor
        pass
    sys.stdout = sys.stderr


class WorkerActor(Worker):
    def __init__(self, model: str, dtype: str | None = None, device: str = "cpu", name: str = "worker",
                 flush_interval: float = 0.05, log_level: str = "INFO"):
        stdout_to_stderr()
        configure_logging(log_level)
        restore_priority()
        # Ray's fractional GPUs (gpus_per_worker < 1): the KV pool takes only this actor's share.
        share = min(ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0), 1.0) or 1.0
        super().__init__(model, dtype=dtype, device=device, name=name, flush_interval=flush_interval,
                         device_share=share)

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
