"""`plandiff bench batch`: `plandiff batch` throughput with 1 and with N CPU worker actors, on the
same prompts (the synthetic task's test split), greedy, one compute thread per worker.

Each run starts its own embedded Ray cluster and workers; the clock starts once every worker has
loaded its model (the batch's own `wall_seconds`), so start-up is not counted. Outputs of the runs
are compared id by id: greedy answers must not depend on the number of workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class CpuWatch:
    """CPU used on the whole machine and by this process's tree (the driver, Ray's daemons and the
    worker actors), sampled every second from /proc while a run goes on: what other processes took
    is the difference. On a 2-core machine shared with other work, that decides what 2 workers can
    gain over 1."""

    def __init__(self):
        import threading

        self.machine = self.ours = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def _machine() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _tree() -> dict[int, float]:
        children: dict[int, list[int]] = {}
        times: dict[int, float] = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        found, todo = {}, [os.getpid()]
        while todo:
            pid = todo.pop()
            found[pid] = times.get(pid, 0.0)
            todo += children.get(pid, [])
        return found

    def _watch(self) -> None:
        machine, tree = self._machine(), self._tree()
        while not self.stop.wait(1.0):
            now_machine, now_tree = self._machine(), self._tree()
            self.machine += now_machine - machine
            self.ours += sum(t - tree.get(pid, 0.0) for pid, t in now_tree.items())
            machine, tree = now_machine, now_tree

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def write_prompts(path: Path, examples: int, seed: int = 0) -> None:
    from plandiff.model.training.synthetic import make_split

    with open(path, "w") as f:
        for i, example in enumerate(make_split("test", examples, seed)):
            f.write(json.dumps({"id": f"test-{i}", "prompt": example.prompt}) + "\n")


def run_bench_batch(settings, examples: int, workers: list[int], folder: str) -> int:
    from .batch.runner import run_batch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one compute thread per worker actor (Ray sets it too)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    write_prompts(prompts, examples)
    rows, texts = [], {}
    for n in workers:
        output = out / f"results-{n}.jsonl"
        output.unlink(missing_ok=True)
        with CpuWatch() as cpu:
            summary = run_batch(settings.model_copy(update={"executor": "ray", "workers": n, "device": "cpu"}),
                                str(prompts), str(output), str(out / f"summary-{n}.json"), tty=False)
        summary["cpu_seconds"] = {"machine": round(cpu.machine, 1), "this_run": round(cpu.ours, 1),
                                  "other_processes": round(max(cpu.machine - cpu.ours, 0.0), 1),
                                  "cores": os.cpu_count()}
        with open(output) as f:
            texts[n] = {r["id"]: r.get("text") for r in map(json.loads, f)}
        rows.append(summary)
        print(f"{n} worker(s): {summary['succeeded']} items in {summary['wall_seconds']} s, "
              f"{summary['items_per_second']} items/s, p50 {summary['latency_p50_seconds']} s, "
              f"p99 {summary['latency_p99_seconds']} s, failed {summary['failed']}; busy "
              f"{', '.join(str(w.get('busy_seconds')) for w in summary['per_worker'].values())} s per worker; "
              f"CPU seconds: this run {summary['cpu_seconds']['this_run']}, other processes "
              f"{summary['cpu_seconds']['other_processes']}", flush=True)
    base = rows[0]["items_per_second"]
    for row, n in zip(rows, workers):
        same = sum(texts[n][k] == texts[workers[0]].get(k) for k in texts[n])
        print(f"{n} worker(s): {row['items_per_second'] / base:.2f}× the throughput of {workers[0]}; "
              f"{same}/{len(texts[n])} answers identical to it")
    print(json.dumps({"examples": examples, "runs": rows}))
    return 0
