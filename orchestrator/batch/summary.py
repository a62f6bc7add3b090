"""What a batch did: items, failures by type, throughput, latency p50/p99, and per worker."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0…100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Tally:
    total: int  # non-blank input lines
    skipped: int = 0  # already in the output (a resumed run)
    succeeded: int = 0
    failures: Counter = field(default_factory=Counter)  # error type → count
    retried: int = 0  # items redone after their worker was lost
    latencies: list[float] = field(default_factory=list)  # seconds, per succeeded item
    generated_tokens: int = 0
    per_worker: dict[str, dict] = field(default_factory=lambda: defaultdict(
        lambda: {"items": 0, "seconds": 0.0, "generated_tokens": 0}))
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> int:
        return self.skipped + self.succeeded + sum(self.failures.values())

    def success(self, worker: str | None, seconds: float, tokens: int) -> None:
        self.succeeded += 1
        self.latencies.append(seconds)
        self.generated_tokens += tokens
        w = self.per_worker[worker or "?"]
        w["items"] += 1
        w["seconds"] += seconds
        w["generated_tokens"] += tokens

    def failure(self, kind: str) -> None:
        self.failures[kind] += 1

    def as_dict(self, **extra) -> dict:
        wall = time.perf_counter() - self.started
        ran = self.succeeded + sum(self.failures.values())
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return {
            "items": self.total, "skipped": self.skipped, "succeeded": self.succeeded,
            "failed": sum(self.failures.values()), "failures": dict(self.failures), "retried": self.retried,
            "wall_seconds": round(wall, 3),
            "items_per_second": round(ran / wall, 3) if wall > 0 else None,
            "generated_tokens_per_second": round(self.generated_tokens / wall, 1) if wall > 0 else None,
            "latency_p50_seconds": None if p50 is None else round(p50, 4),
            "latency_p99_seconds": None if p99 is None else round(p99, 4),
            "per_worker": {name: {**w, "seconds": round(w["seconds"], 3)} for name, w in sorted(self.per_worker.items())},
            **extra,
        }


def render(summary: dict) -> str:
    """The summary as a few lines for people."""
    failures = ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items())) or "none"
    lines = [
        f"items {summary['items']}: {summary['succeeded']} done, {summary['failed']} failed ({failures}), "
        f"{summary['skipped']} already in the output, {summary['retried']} redone after a lost worker",
        f"{summary['wall_seconds']} s, {summary['items_per_second']} items/s, "
        f"{summary['generated_tokens_per_second']} generated tokens/s; latency p50 {summary['latency_p50_seconds']} s, "
        f"p99 {summary['latency_p99_seconds']} s",
    ]
    for name, w in summary["per_worker"].items():
        busy = f", {w['forwards']} forwards, busy {w['busy_seconds']} s" if "busy_seconds" in w else ""
        lines.append(f"  {name}: {w['items']} items, {w['generated_tokens']} generated tokens{busy}")
    return "\n".join(lines)
