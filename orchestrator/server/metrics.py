"""Prometheus metrics of one server (prometheus-client, a private registry per app, so that a process
can hold several apps, as the tests do). vLLM's names under the `plandiff:` prefix, each with a
`model_name` label, plus the planned-diffusion counters. Everything is derived from the events and
the usage the orchestrator streams: workers keep no metrics of their own.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_client.disable_created_metrics()  # no `_created` series beside every counter (as vLLM)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
                   160.0, 640.0)
FORWARD_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
PREFIX = "plandiff:"


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        r, label = self.registry, ["model_name"]

        def counter(name, text, extra=()):
            return Counter(PREFIX + name, text, label + list(extra), registry=r)

        def histogram(name, text, buckets=LATENCY_BUCKETS):
            return Histogram(PREFIX + name, text, label, buckets=buckets, registry=r)

        self.running = Gauge(PREFIX + "num_requests_running", "Requests generating now.", label, registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Requests admitted and waiting for a running slot.",
                             label, registry=r)
        self.ttft = histogram("time_to_first_token_seconds",
                              "From arrival to the first answer text (text comes in document order).")
        self.e2e = histogram("e2e_request_latency_seconds", "From arrival to the end of a finished request.")
        self.queue_time = histogram("request_queue_time_seconds", "From arrival to a running slot.")
        self.critical_path = histogram("request_critical_path_forwards",
                                       "Sequential model forwards of a finished request.", FORWARD_BUCKETS)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("generation_tokens",
                                         "Generated tokens of finished requests (plan tags and pads included).")
        self.success = counter("request_success", "Finished requests, by finish reason (stop, length).",
                               ["finished_reason"])
        self.plan_rounds = counter("plan_rounds", "Planning rounds of finished requests (one plan per round).")
        self.spans = counter("spans", "Spans denoised and delivered (span_done events).")
        self.syncs = counter("syncs", "Rounds joined at <sync/> (sync events).")
        self.overflows = counter("span_overflow", (
            "Spans whose content filled every slot, by what was done: accept (delivered as is), retry "
            "(denoised again with more slots), replan (the round planned again)."), ["action"])
        self.retries = counter("span_retries", "Overflowing spans retried with more slots (usage.retries).")
        self.replans = counter("replans", "Rounds planned again because a span overflowed (usage.replans).")
        self.failovers = counter("failovers", "Requests moved to another worker after one was lost (usage.failovers).")
        self.rejected = counter("requests_rejected", (
            "Requests refused before any work, by reason: overloaded (429), starting or draining (503), "
            "invalid (4xx), unauthorized (401)."), ["reason"])
        self.cancelled = counter("requests_cancelled", "Requests whose client went away before the end.")
        self.failed = counter("request_failure", "Requests that ended in an error after admission, by code.", ["code"])

    def bind_admission(self, admission) -> None:
        self.running.labels(self.model_name).set_function(lambda: admission.running)
        self.waiting.labels(self.model_name).set_function(lambda: admission.waiting)

    def _inc(self, metric, amount=1, **labels) -> None:
        if amount:
            metric.labels(model_name=self.model_name, **labels).inc(amount)

    def reject(self, reason: str) -> None:
        self._inc(self.rejected, reason=reason)

    def cancel(self) -> None:
        self._inc(self.cancelled)

    def fail(self, code: str | None) -> None:
        self._inc(self.failed, code=code or "unknown")

    def observe(self, histogram, seconds: float) -> None:
        histogram.labels(self.model_name).observe(seconds)

    def event(self, event) -> None:
        """Count what one orchestrator event says (read by kind and field name)."""
        kind = event.kind
        if kind == "span_done":
            self._inc(self.spans)
            if getattr(event, "overflow", False):
                self._inc(self.overflows, action="accept")
        elif kind == "span_retried":
            self._inc(self.overflows, action="retry")
        elif kind == "sync":
            self._inc(self.syncs)

    def done(self, done, finish_reason: str, seconds: float) -> None:
        usage = done.usage
        self._inc(self.success, finished_reason=finish_reason)
        self._inc(self.prompt_tokens, usage.prompt_tokens)
        self._inc(self.generation_tokens, usage.generated_tokens)
        self._inc(self.plan_rounds, len(done.result.get("rounds", ())))
        self._inc(self.retries, getattr(usage, "retries", 0))
        replans = getattr(usage, "replans", 0)
        self._inc(self.replans, replans)
        self._inc(self.overflows, replans, action="replan")
        self._inc(self.failovers, getattr(usage, "failovers", 0))
        self.observe(self.critical_path, usage.critical_path)
        self.observe(self.e2e, seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
