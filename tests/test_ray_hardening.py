"""Hardening of the control plane over a real embedded Ray cluster (issue 19): the cluster listens on
loopback only, a request survives losing every worker, workers gone for good give a typed error
within the bound, a duplicate request id leaves the running request alone, and logs and worker
output stay off stdout.

One Ray cluster for the module, started by `RayExecutor` itself (so its binding is the one tested),
with two CPU worker actors on the session's tiny checkpoint."""

import asyncio
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import ray

from plandiff.model import GenerationOptions, InvalidRequestError, PlandiffError
from plandiff.model.codec import TextCodec
from plandiff.orchestrator.executors import (Executor, LocalExecutor, RayExecutor, WorkerHandle, WorkerLost,
                                             WorkersUnavailableError)
from plandiff.orchestrator.orchestrator import GenerateRequest, Orchestrator

LONG_PLAN = ("<promise>-<topic>one 20</topic><promise>-<topic>two 15</topic><sync/>"
             "<promise>-<topic>three 20</topic><|im_end|>")
MEDIUM_PLAN = "<promise>-<topic>one 6</topic><promise>-<topic>two 4</topic><|im_end|>"
SHORT_PLAN = "<promise>-<topic>a 2</topic><|im_end|>"
ROOMY = GenerationOptions(max_new_tokens=1024)


@pytest.fixture(scope="module")
def executor(compact_folder):
    assert not ray.is_initialized(), "another module left Ray running"
    executor = RayExecutor(str(compact_folder), workers=2, num_cpus_per_worker=0.5)
    assert executor.started_ray
    asyncio.run(executor.wait_ready())
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def local_executor(compact_folder):
    return LocalExecutor(str(compact_folder))


async def settle(executor, timeout=90.0):
    """Every worker answers again (Ray restarts killed actors: seconds, tens on 2 loaded cores) and
    holds no request; their stats."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = await asyncio.gather(*(w.stats() for w in executor.workers))
            if all(s["requests"] == 0 for s in stats):
                return stats
        except WorkerLost:
            pass
        assert time.monotonic() < deadline, "the workers did not come back"
        await asyncio.sleep(0.2)


# --- binding ---------------------------------------------------------------------------------------

def family(root: int) -> set[int]:
    """`root` and every process below it (Ray's daemons are the driver's children, its workers the
    raylet's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def listening_sockets() -> list[tuple[str, str, int]]:
    """(address, process name, pid) of every listening TCP socket: from `ss -ltnpH`, or else from
    /proc/net/tcp{,6} with socket inodes mapped to pids."""
    rows = []
    if shutil.which("ss"):
        for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
            local = line.split()[3]
            for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line):
                rows.append((local.rsplit(":", 1)[0], name, int(pid)))
        return rows
    owners = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.startswith("socket:["):
                    owners[target[8:-1]] = int(entry)
        except OSError:
            continue
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in owners:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(fields[1].split(":")[0])
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
                rows.append((str(ipaddress.ip_address(words)), "?", owners[fields[9]]))
    return rows


def is_loopback(address: str) -> bool:
    host = address.strip("[]").split("%")[0]
    if host == "*":
        return False
    ip = ipaddress.ip_address(host)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def test_the_embedded_cluster_listens_on_loopback_only(executor):
    stats = asyncio.run(settle(executor))
    ours = [row for row in listening_sockets() if row[2] in family(os.getpid())]
    print("\n".join(f"{address} {name} {pid}" for address, name, pid in ours))
    listeners = {pid for _, _, pid in ours}
    assert {s["pid"] for s in stats} <= listeners, "the worker actors' sockets were not found"
    assert len(listeners) >= 4  # at least GCS, raylet and the two actors
    assert [row for row in ours if not is_loopback(row[0])] == []
    assert ray.util.get_node_ip_address() == "127.0.0.1"


# --- duplicate request ids -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_duplicate_request_id_is_refused_and_the_running_request_finishes(request, backend, compact_folder,
                                                                           compact):
    executor = request.getfixturevalue("local_executor" if backend == "local" else "executor")
    orchestrator = Orchestrator(executor, TextCodec.load(compact_folder))

    async def run():
        first = GenerateRequest(prompt="x", plan=MEDIUM_PLAN, options=ROOMY, request_id="same")
        running = asyncio.Event()

        async def consume():
            events = []
            async for event in orchestrator.generate(first):
                events.append(event)
                if event.kind == "span_progress":
                    running.set()
            return events

        consumer = asyncio.ensure_future(consume())
        await asyncio.wait_for(running.wait(), timeout=60)
        with pytest.raises(InvalidRequestError, match="already running") as refused:
            await orchestrator.complete(GenerateRequest(prompt="y", plan=SHORT_PLAN, request_id="same"))
        events = await consumer
        again = await orchestrator.complete(GenerateRequest(prompt="y", plan=SHORT_PLAN, request_id="same"))
        return refused.value, events, again

    refused, events, again = asyncio.run(run())
    assert refused.field == "request_id"
    done = events[-1]
    alone = compact.generate("x", ROOMY, plan=MEDIUM_PLAN)
    assert done.kind == "done" and done.usage.failovers == 0
    assert done.result["token_ids"] == alone.token_ids and done.usage.critical_path == alone.usage.critical_path
    assert [e.kind for e in events].count("span_done") == 2  # not restarted: each span once
    assert again.finish_reason == "end"  # the id is free once its request ended


# --- failover --------------------------------------------------------------------------------------

def test_all_workers_killed_mid_request_the_request_waits_for_their_restart(executor, compact_folder, compact):
    orchestrator = Orchestrator(executor, TextCodec.load(compact_folder))
    asyncio.run(settle(executor))

    async def run():
        events, killed = [], None
        async for event in orchestrator.generate(GenerateRequest(prompt="survive", plan=LONG_PLAN, options=ROOMY)):
            events.append(event)
            if killed is None and event.kind == "span_progress" and event.step >= 30:
                killed = await asyncio.gather(*(w.stats() for w in executor.workers))
                os.kill(killed[0]["pid"], signal.SIGKILL)  # the process dies: Ray restarts it
                ray.kill(executor.workers[1].actor, no_restart=False)  # killed, to be restarted
        return events, killed

    started = time.monotonic()
    events, killed = asyncio.run(run())
    print(f"\nrequest with both workers killed: {time.monotonic() - started:.1f} s")
    done = events[-1]
    assert killed is not None and done.kind == "done" and done.usage.failovers >= 1
    assert [e.kind for e in events].count("done") == 1
    assert sorted((e.round, e.span) for e in events if e.kind == "span_done") == [(0, 0), (0, 1), (1, 0)]
    assert "".join(e.text for e in events if e.kind == "text") == done.text
    alone = compact.generate("survive", ROOMY, plan=LONG_PLAN)
    assert done.result["token_ids"] == alone.token_ids and done.finish_reason == "end"
    stats = asyncio.run(settle(executor))
    assert not {s["pid"] for s in stats} & {s["pid"] for s in killed}  # both are new processes


def test_workers_gone_for_good_give_a_typed_error_within_the_bound(executor, compact_folder):
    bound = 5.0
    lone = RayExecutor(str(compact_folder), workers=1, num_cpus_per_worker=0.5, failover_wait=bound)
    try:
        asyncio.run(lone.wait_ready())
        orchestrator = Orchestrator(lone, TextCodec.load(compact_folder))

        async def run():
            killed_at = None
            try:
                async for event in orchestrator.generate(GenerateRequest(prompt="x", plan=LONG_PLAN, options=ROOMY)):
                    if killed_at is None and event.kind == "span_progress":
                        ray.kill(lone.workers[0].actor, no_restart=True)
                        killed_at = time.monotonic()
            except PlandiffError as err:
                return err, time.monotonic() - killed_at
            raise AssertionError("the request finished without its worker")

        err, waited = asyncio.run(run())
    finally:
        lone.shutdown()
    print(f"\nWorkersUnavailableError {waited:.2f} s after the kill: {err}")
    assert isinstance(err, WorkersUnavailableError) and "failover_wait" in str(err)
    assert waited < bound + 2.0


class FakeHandle(WorkerHandle):
    """A worker whose health answers after `back_after` seconds (never: None), failing meanwhile as a
    restarting actor does, or as one gone for good (`gone`); `hangs`: its health never returns."""

    def __init__(self, name, back_after=None, gone=False, hangs=False, load=0):
        self.name, self.back_after, self.gone, self.hangs, self.load = name, back_after, gone, hangs, load
        self.started = time.monotonic()

    async def health(self):
        if self.hangs:
            await asyncio.sleep(3600)
        if self.gone:
            raise WorkerLost(f"{self.name}: dead", restarting=False)
        if self.back_after is None or time.monotonic() - self.started < self.back_after:
            raise WorkerLost(f"{self.name}: the actor is restarting")
        return True

    def generate(self, *args):
        raise NotImplementedError

    async def cancel(self, request_id):
        pass

    async def stats(self):
        return {}


class FakeExecutor(Executor):
    def __init__(self, *workers):
        self.workers = list(workers)


@pytest.mark.parametrize("case", ["one_comes_back", "none_in_time", "hangs", "all_gone", "least_loaded"])
def test_live_worker_waits_within_the_bound(case):
    workers = {
        "one_comes_back": [FakeHandle("a", back_after=0.3), FakeHandle("b")],
        "none_in_time": [FakeHandle("a"), FakeHandle("b", back_after=5.0)],
        "hangs": [FakeHandle("a", hangs=True)],
        "all_gone": [FakeHandle("a", gone=True), FakeHandle("b", gone=True)],
        "least_loaded": [FakeHandle("a", back_after=0, load=3), FakeHandle("b", back_after=0, load=1),
                         FakeHandle("c", back_after=0, load=0)],
    }[case]
    executor = FakeExecutor(*workers)
    started = time.monotonic()
    if case in ("one_comes_back", "least_loaded"):
        picked = asyncio.run(executor.live_worker(avoid=workers[-1], timeout=2.0))
        assert picked is workers[0 if case == "one_comes_back" else 1]  # not `avoid`, the least loaded else
        assert time.monotonic() - started < (0.8 if case == "one_comes_back" else 0.2)
        return
    with pytest.raises(WorkersUnavailableError, match="within 0.5 s") as raised:
        asyncio.run(executor.live_worker(timeout=0.5))
    waited = time.monotonic() - started
    assert isinstance(raised.value, PlandiffError)
    assert waited < 0.1 if case == "all_gone" else 0.45 < waited < 1.0  # gone for good: no waiting


def test_a_request_that_keeps_losing_workers_fails_typed(compact_folder):
    class Dies(FakeHandle):
        async def generate(self, *args):
            raise WorkerLost(f"{self.name}: died")
            yield  # an async generator

    orchestrator = Orchestrator(FakeExecutor(Dies("a", back_after=0), Dies("b", back_after=0)),
                                TextCodec.load(compact_folder))
    with pytest.raises(WorkersUnavailableError, match="lost 6 workers"):
        asyncio.run(orchestrator.complete(GenerateRequest(prompt="x", plan=SHORT_PLAN)))


# --- logs and output -------------------------------------------------------------------------------

def test_library_logs_go_to_stderr():
    """Library use: configure_logging never called, structlog not configured by the application
    (structlog's own default prints to stdout)."""
    script = textwrap.dedent("""
        from plandiff.workers.logs import get_logger
        get_logger("plandiff.orchestrator", request_id="r").info("request_done")
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert '"event": "request_done"' in run.stderr and '"request_id": "r"' in run.stderr


def test_an_application_logging_config_is_kept():
    script = textwrap.dedent("""
        import structlog
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
        from plandiff.workers.logs import get_logger
        get_logger("plandiff.orchestrator", request_id="r").info("request_done")
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "request_id='r' event='request_done'" in run.stdout  # where the application sends it


def test_worker_output_reaches_the_driver_on_stderr(executor, capsys):
    asyncio.run(settle(executor))
    marker = f"printed-by-a-worker-{uuid.uuid4().hex}"
    ray.get(executor.workers[0].actor.__ray_call__.remote(lambda self, text: print(text, flush=True), marker))
    out = err = ""
    deadline = time.monotonic() + 20
    while marker not in out + err and time.monotonic() < deadline:  # Ray forwards it within a second
        time.sleep(0.1)
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
    assert marker in err and marker not in out


def test_generate_json_keeps_stdout_to_the_json(compact_folder, monkeypatch, capsys):
    """What prints to stdout while `plandiff generate --json` runs (Ray's raylet notices and forwarded
    worker lines are printed to sys.stdout as they arrive) goes to stderr."""
    import json

    from plandiff.orchestrator import cli

    complete = Orchestrator.complete

    async def noisy(self, request):
        print("(raylet) A worker died or was killed while executing a task")
        return await complete(self, request)

    monkeypatch.setattr(Orchestrator, "complete", noisy)
    assert cli.main(["generate", "--model", str(compact_folder), "--json", "hi", "--plan", SHORT_PLAN]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["token_ids"]
    assert "(raylet)" in captured.err and "(raylet)" not in captured.out
