"""`plandiff bench serve`: N concurrent streams against a running server, measured from the client.

Each of `concurrency` tasks streams one request after another (through `plandiff.client`, without
retries, so that every 429 or 503 counts) until `requests` have been sent. Per request: the time to
the first answer text (TTFT: planned diffusion releases text in document order, after the first
span is done) and to the end; over the run: p50 and p99 of both, errors by kind, generated tokens
per second (plan tags and pads included, as `usage.completion_tokens` counts them) and requests per
second, over the wall time of the whole run. A warm-up request runs first, not counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass

from plandiff.client import APIConnectionError, PlandiffAPIError, PlandiffClient

DEFAULT_PROMPT = ("Read about these people. Maya is 34 years old, lives in Oslo, works as a nurse and has a cat. "
                  "Omar is 51 years old, lives in Lima, works as a pilot and has a dog. Tell me about each person.")


@dataclass
class Sample:
    ttft: float | None
    e2e: float
    tokens: int
    critical_path: int


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def _one(client: PlandiffClient, prompt: str, options: dict) -> Sample:
    started = time.perf_counter()
    first = None
    async with client.stream(prompt, events=False, **options) as events:
        async for event in events:
            if event.kind == "text" and first is None:
                first = time.perf_counter() - started
    done = events.done
    return Sample(first, time.perf_counter() - started, done.usage.generated_tokens, done.usage.critical_path)


async def bench(url: str, concurrency: int, requests: int, prompt: str, api_key: str | None, options: dict,
                timeout: float, warmup: int = 1) -> dict:
    samples: list[Sample] = []
    errors: Counter[str] = Counter()
    async with PlandiffClient(url, api_key, max_retries=0, timeout=timeout) as client:
        model = (await client.models())[0]
        for _ in range(warmup):
            await _one(client, prompt, options)
        remaining = iter(range(requests))

        async def loop() -> None:
            for _ in remaining:
                try:
                    samples.append(await _one(client, prompt, options))
                except PlandiffAPIError as err:
                    errors[f"{err.status} {err.code or err.type}"] += 1
                except APIConnectionError as err:
                    errors[type(err).__name__] += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ttft = [s.ttft for s in samples if s.ttft is not None]
    e2e = [s.e2e for s in samples]
    tokens = sum(s.tokens for s in samples)
    return {
        "url": url, "model": model, "concurrency": concurrency, "requests": requests, "ok": len(samples),
        "errors": dict(errors), "wall_s": wall,
        "ttft_s": {"p50": percentile(ttft, 0.5), "p99": percentile(ttft, 0.99), "mean": _mean(ttft)},
        "e2e_s": {"p50": percentile(e2e, 0.5), "p99": percentile(e2e, 0.99), "mean": _mean(e2e)},
        "generated_tokens_per_s": tokens / wall if wall else None,
        "requests_per_s": len(samples) / wall if wall else None,
        "critical_path_mean": _mean([s.critical_path for s in samples]),
        "options": options,
    }


def _mean(values) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.0f}"


def print_report(r: dict) -> None:
    print(f"plandiff bench serve: {r['url']}, model {r['model']}, {r['requests']} requests at concurrency "
          f"{r['concurrency']}, {r['wall_s']:.2f} s")
    print(f"{'':16s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s}")
    for name, key in (("TTFT", "ttft_s"), ("end-to-end", "e2e_s")):
        d = r[key]
        print(f"{name:16s} {_ms(d['p50']):>8s} {_ms(d['p99']):>8s} {_ms(d['mean']):>8s}")
    errors = ", ".join(f"{n} × {k}" for k, n in sorted(r["errors"].items())) or "none"
    rate = r["generated_tokens_per_s"]
    cp = r["critical_path_mean"]
    print(f"ok {r['ok']}, errors: {errors}; {r['requests_per_s']:.2f} requests/s, "
          f"{rate:.0f} generated tokens/s" + (f", critical path {cp:.1f} forwards (mean)" if cp is not None else ""))
    print(json.dumps(r))


def run_bench_serve(url: str, concurrency: int, requests: int, prompt: str, api_key: str | None, options: dict,
                    timeout: float, warmup: int) -> int:
    report = asyncio.run(bench(url, concurrency, requests, prompt, api_key, options, timeout, warmup))
    print_report(report)
    return 0 if report["ok"] else 1
