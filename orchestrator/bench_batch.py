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
        summary = run_batch(settings.model_copy(update={"executor": "ray", "workers": n, "device": "cpu"}),
                            str(prompts), str(output), str(out / f"summary-{n}.json"), tty=False)
        with open(output) as f:
            texts[n] = {r["id"]: r.get("text") for r in map(json.loads, f)}
        rows.append(summary)
        print(f"{n} worker(s): {summary['succeeded']} items in {summary['wall_seconds']} s, "
              f"{summary['items_per_second']} items/s, p50 {summary['latency_p50_seconds']} s, "
              f"p99 {summary['latency_p99_seconds']} s, failed {summary['failed']}", flush=True)
    base = rows[0]["items_per_second"]
    for row, n in zip(rows, workers):
        same = sum(texts[n][k] == texts[workers[0]].get(k) for k in texts[n])
        print(f"{n} worker(s): {row['items_per_second'] / base:.2f}× the throughput of {workers[0]}; "
              f"{same}/{len(texts[n])} answers identical to it")
    print(json.dumps({"examples": examples, "runs": rows}))
    return 0
