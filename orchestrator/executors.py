"""Executor backends, as vLLM names them: where the workers live.

- ``local``: one worker in this process (no Ray): for one-shot runs and library use, where starting
  Ray costs more than the answer.
- ``ray``: worker actors on a Ray cluster: an embedded local one started on demand, or an existing
  one (``address``); one actor per GPU, or N CPU actors.

Both hand the orchestrator `WorkerHandle`s with the same async interface; a worker that is lost
(its process died) surfaces as `WorkerLost`, whatever the backend. After a loss the orchestrator asks
`Executor.live_worker` for a worker that answers `health`, waiting up to `failover_wait` seconds while
Ray restarts lost actors; none: `WorkersUnavailableError`.

An embedded Ray cluster (`start_local_ray`) listens on 127.0.0.1 only, unless a host is given.
"""

from __future__ import annotations

import asyncio
import os
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import TYPE_CHECKING, AsyncIterator

from plandiff.model.errors import PlandiffError
from plandiff.model.events import RequestEvent
from plandiff.model.options import GenerationOptions

if TYPE_CHECKING:
    from plandiff.model.result import GenerationResult
    from plandiff.model.runtime import ModelRuntime
    from plandiff.workers.worker import Worker

    from .settings import RunSettings


FAILOVER_WAIT = 60.0  # seconds: a restarting worker actor reloads its model (seconds on a loaded machine)


class WorkerLost(PlandiffError):
    """A worker's process died (or cannot be reached); its requests' states are gone. The orchestrator
    fails over; its callers see `WorkersUnavailableError` only. `restarting`: Ray may bring the
    worker back (False: it is gone for good, e.g. killed with no_restart or its restart failed)."""

    def __init__(self, message: str, restarting: bool = True):
        super().__init__(message)
        self.restarting = restarting


class WorkersUnavailableError(WorkerLost):
    """No worker could take the request: none answered within the failover wait (all lost, none
    restarted in time, or all gone for good), or the request lost too many workers in a row."""

    def __init__(self, message: str):
        super().__init__(message, restarting=False)


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

    @abstractmethod
    async def health(self) -> bool:
        """True once the worker answers (a control call: not queued behind a forward)."""


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

    async def health(self):
        return self.worker.health()


class RayWorkerHandle(WorkerHandle):
    def __init__(self, actor, name: str):
        self.actor = actor
        self.name = name

    def _lost(self, err) -> WorkerLost:
        from ray.exceptions import ActorUnavailableError

        # ActorUnavailableError: "temporarily unavailable" (restarting); ActorDiedError: dead for good
        # (with max_restarts=-1: killed with no_restart, or its __init__ failed).
        return WorkerLost(f"{self.name}: {err}", restarting=isinstance(err, ActorUnavailableError))

    async def generate(self, request_id, prompt_ids, options, plan, resume, stream):
        from ray.exceptions import RayActorError

        try:
            async for ref in self.actor.generate.remote(request_id, prompt_ids, options, plan, resume, stream):
                yield await ref
        except RayActorError as err:
            raise self._lost(err) from err

    async def _call(self, method: str, *args):
        from ray.exceptions import RayActorError

        try:
            return await getattr(self.actor, method).remote(*args)
        except RayActorError as err:
            raise self._lost(err) from err

    async def cancel(self, request_id):
        await self._call("cancel", request_id)

    async def stats(self):
        return await self._call("stats")

    async def health(self):
        return await self._call("health")


class Executor(ABC):
    workers: list[WorkerHandle]
    failover_wait = FAILOVER_WAIT

    def pick(self, avoid: WorkerHandle | None = None) -> WorkerHandle:
        """The least loaded worker, another than `avoid` when there is one."""
        candidates = [w for w in self.workers if w is not avoid] or self.workers
        return min(candidates, key=lambda w: w.load)

    async def live_worker(self, avoid: WorkerHandle | None = None, timeout: float | None = None) -> WorkerHandle:
        """The least loaded worker that answers `health` (another than `avoid` when one does). While
        none answers (all lost, Ray restarting them) each is polled with backoff, for up to `timeout`
        seconds (default `failover_wait`); workers gone for good are not waited for. None back in
        time: `WorkersUnavailableError`."""
        timeout = self.failover_wait if timeout is None else timeout
        deadline = time.monotonic() + timeout
        errors: dict[str, str] = {}

        async def answers(worker: WorkerHandle) -> WorkerHandle | None:
            delay = 0.05
            while True:
                try:
                    await asyncio.wait_for(worker.health(), max(deadline - time.monotonic(), 0.001))
                    return worker
                except (WorkerLost, asyncio.TimeoutError) as err:
                    errors[worker.name] = " ".join(str(err).split())[:300] if str(err) else f"{worker.name}: no answer"
                    if isinstance(err, WorkerLost) and not err.restarting:
                        return None  # gone for good
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)

        polls = {asyncio.ensure_future(answers(w)): w for w in self.workers}
        live: list[WorkerHandle] = []
        try:
            pending = set(polls)
            while pending and not live:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                live = [t.result() for t in done if t.result() is not None]
            if live and pending:  # the others' answers, if they come at once: pick the least loaded
                done, pending = await asyncio.wait(pending, timeout=0.02)
                live += [t.result() for t in done if t.result() is not None]
        finally:
            for task in polls:
                task.cancel()
        if not live:
            detail = "; ".join(errors.values())
            raise WorkersUnavailableError(
                f"no worker answered within {timeout:g} s (failover_wait) of losing one: {detail}"[:1000])
        return min([w for w in live if w is not avoid] or live, key=lambda w: w.load)

    async def wait_ready(self) -> None:
        """Return once every worker answers."""
        await asyncio.gather(*(w.stats() for w in self.workers))

    def shutdown(self) -> None:
        """Stop the workers (nothing to do for an in-process one)."""


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, model: str | ModelRuntime, dtype: str | None = None, device: str = "cpu",
                 max_requests: int = 64):
        """`model`: a checkpoint folder, or a loaded runtime (benchmarks build random weights in place)."""
        from plandiff.workers.worker import Worker

        worker = Worker(model, dtype=dtype, device=device, name="local-0", max_requests=max_requests)
        self.workers = [LocalWorkerHandle(worker)]


_CLUSTER_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_node():
    """While Ray starts: node address 127.0.0.1, and every port on it. Ray (2.60) rewrites a loopback
    `_node_ip_address` to the host's own address and then listens on every interface (GCS, raylet,
    workers, the driver; the runtime-env agent on the host address); with Ray's "local cluster only"
    flag off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported, so set on the imported
    constant too; its daemons inherit the environment) everything stays on 127.0.0.1 (measured with
    `ss -ltnp`; tests/test_ray_hardening.py checks it). Both are put back once Ray is up."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_CLUSTER_FLAG), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_CLUSTER_FLAG] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_CLUSTER_FLAG, None)
        else:
            os.environ[_CLUSTER_FLAG] = saved_env
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag


def start_local_ray(host: str | None = None, **kwargs) -> None:
    """Start an embedded single-node Ray (never join one by a stale address: address="local"),
    dashboard off. It listens on 127.0.0.1 only unless `host` (the address to advertise, e.g. the
    machine's own for other nodes to join) is given. `kwargs` go to `ray.init` (num_cpus, …)."""
    import ray

    # Ray starts workers at nice 15; a model worker then loses the CPU to Ray's own daemons
    # (measured: 5 % slower forwards on 2 cores). Workers of a cluster we start run at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs = {"include_dashboard": False, "configure_logging": False, **kwargs}
    if host is not None:
        ray.init(address="local", _node_ip_address=host, **kwargs)
        return
    with _loopback_node():
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)


def connect_ray(address: str | None = None, host: str | None = None) -> bool:
    """Connect this process to Ray unless it already is: to `address` (or $RAY_ADDRESS, which a Ray
    job's driver is given), else to an embedded cluster (`start_local_ray`). True if this call
    connected, so that its caller disconnects (`ray.shutdown`) when done."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        start_local_ray(host, log_to_driver=True)
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    return True


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, model: str, workers: int = 1, dtype: str | None = None, device: str = "cpu",
                 address: str | None = None, num_cpus_per_worker: float = 1.0, host: str | None = None,
                 failover_wait: float = FAILOVER_WAIT, gpus_per_worker: float = 1.0, log_level: str = "INFO"):
        """`address`: an existing cluster (or $RAY_ADDRESS); none: an embedded one, on 127.0.0.1
        unless `host` is given. `failover_wait`: seconds a request waits for a lost worker (or any)
        to answer again before `WorkersUnavailableError`. `gpus_per_worker`: Ray's GPU share of each
        actor on cuda (below 1, several engines share a GPU, each with its own copy of the weights).
        `log_level`: the actors' (Ray forwards every line they log to the driver's stderr)."""
        import ray

        from plandiff.workers.actor import remote_worker_class

        self.failover_wait = failover_wait
        self.started_ray = connect_ray(address, host)
        gpu = device.startswith("cuda")
        cls = remote_worker_class(num_cpus=0 if gpu else num_cpus_per_worker, num_gpus=gpus_per_worker if gpu else 0)
        self.workers = [
            RayWorkerHandle(cls.remote(str(model), dtype, "cuda" if gpu else device, f"worker-{i}",
                                       log_level=log_level), f"worker-{i}")
            for i in range(workers)
        ]

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w.actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()


def build_executor(settings: RunSettings, kind: str | None = None) -> Executor:
    """The one place an executor is made from settings (`kind` overrides settings.executor). A device
    of `auto` is cuda where there are GPUs (the Ray cluster's, or this machine's); no `workers`
    (batch's default) is one engine per GPU share of the cluster on cuda, else one."""
    kind = kind or settings.executor
    if kind != "ray":
        device = settings.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return LocalExecutor(settings.model, dtype=settings.dtype, device=device)
    import ray

    started = connect_ray(settings.address, settings.ray_host)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        device = settings.device if settings.device != "auto" else ("cuda" if gpus else "cpu")
        per_gpu = int(1 / settings.gpus_per_worker + 1e-9) if device.startswith("cuda") else 0
        workers = settings.workers or (max(gpus * per_gpu, 1) if per_gpu else 1)
        executor = RayExecutor(settings.model, workers=workers, dtype=settings.dtype, device=device,
                               failover_wait=settings.failover_wait, gpus_per_worker=settings.gpus_per_worker,
                               log_level=settings.log_level)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    executor.started_ray = started  # this call connected: the executor's shutdown disconnects
    return executor
