"""The HTTP server for real: uvicorn on 127.0.0.1 (a thread of this process, one server for the
module; a subprocess where a signal is sent), a tiny random checkpoint, the real `plandiff.client`,
plain httpx and the unmodified `openai` client. Nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from plandiff.client import PlandiffClient
from plandiff.orchestrator.server import BackgroundServer
from plandiff.orchestrator.settings import ServeSettings

# 20 + 10 slots in round 0, 10 in round 1: about 50 forwards of the tiny model.
PLAN = "<promise>-<topic>alpha 2</topic><promise>-<topic>beta 1</topic><sync/><promise>-<topic>gamma 1</topic><|im_end|>"
LONG = {"max_tokens": 1800}  # no forced plan: this planner writes plain text to the bound (1,800 forwards)
RUNNING, WAITING = 2, 2


@pytest.fixture(scope="module")
def server(compact_folder):
    settings = ServeSettings(model=str(compact_folder), port=0, api_key=None, served_model_name="tiny",
                             max_running_requests=RUNNING, max_waiting_requests=WAITING, max_body_bytes=64 * 1024,
                             max_prompt_tokens=600, max_tokens_limit=1900, max_new_tokens=160, log_level="WARNING")
    background = BackgroundServer(settings)
    with background as url:
        background.url = url
        yield background


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def worker_stats(server) -> dict:
    return server.run_coroutine(server.service.executor.workers[0].stats())


def wait_idle(server, timeout=20.0) -> dict:
    """Until no request is admitted and the worker holds none; then the worker's stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = worker_stats(server)
        if (stats["requests"] == 0 and server.service.in_flight == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus exposition (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------ streams and answers


def test_stream_events_come_in_order(server):
    async def run():
        async with PlandiffClient(server.url) as client, client.stream("Tell me things.", plan=PLAN) as events:
            return [event async for event in events], events

    events, stream = asyncio.run(run())
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and kinds.count("sync") == 1
    assert kinds[0] == "plan_token"
    sync = kinds.index("sync")
    promised = [(e.round, e.topic, e.length) for e in events if e.kind == "span_promised"]
    assert promised == [(0, "alpha", 20), (0, "beta", 10), (1, "gamma", 10)]
    # Round 0: promises before its progress, its spans done before the join; round 1 after it.
    first_progress = kinds.index("span_progress")
    assert kinds.index("span_promised") < first_progress
    assert all(e.round == 0 for e in events[:sync] if e.kind in ("span_promised", "span_done", "span_progress"))
    assert all(e.round == 1 for e in events[sync:] if e.kind in ("span_promised", "span_done", "span_progress"))
    assert sorted((e.round, e.span) for e in events if e.kind == "span_done") == [(0, 0), (0, 1), (1, 0)]
    steps = [e.step for e in events[:sync] if e.kind == "span_progress"]
    assert steps == sorted(steps)
    # Text is released in document order, after the span it comes from, and adds up to the answer.
    done = events[-1]
    assert kinds.index("text") > kinds.index("span_done")
    assert "".join(e.text for e in events if e.kind == "text") == done.text
    assert done.usage.critical_path > 0 and done.usage.prompt_tokens > 0
    assert stream.request_id and stream.finish_reason == "stop"


def test_non_stream_answer_has_openai_shape_and_plandiff_usage(http):
    r = http.post("/v1/completions", json={"prompt": "Tell me things.", "plan": PLAN, "plandiff_events": True,
                                           "steps_ratio": 0.5, "order": "confidence"},
                  headers={"X-Request-Id": "my-id"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny" and body["id"].startswith("cmpl-my-id-")
    assert r.headers["x-request-id"].startswith("my-id-")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and isinstance(choice["text"], str)
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["critical_path"] > 0 and {"retries", "failovers", "steps_per_round", "total_seconds"} <= set(usage)
    assert usage["steps_per_round"] == [10, 5]  # steps_ratio 0.5 of the longest span, per round
    spans = [s["topic"] for r in body["plandiff"]["result"]["rounds"] for s in r["spans"]]
    assert spans == ["alpha", "beta", "gamma"]


def test_client_disconnect_cancels_the_work(server):
    """Closing a stream mid-request frees the worker's slot, and its forwards stop."""
    wait_idle(server)
    before = worker_stats(server)

    async def run():
        async with PlandiffClient(server.url) as client:
            stream = client.stream("Go on and on.", **LONG)
            seen = 0
            async for event in stream:
                seen += event.kind == "plan_token"
                if seen == 5:
                    break
            assert worker_stats(server)["requests"] == 1
            await stream.aclose()

    asyncio.run(run())
    stats = wait_idle(server, timeout=10)
    assert stats["requests"] == 0 and stats["kv_cache_bytes"] == 0
    time.sleep(0.3)
    after = worker_stats(server)
    assert after["forwards"] == stats["forwards"]  # nothing runs for it any more
    assert after["forwards"] - before["forwards"] < 1000  # it stopped far short of its 1,800 forwards
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "plandiff:requests_cancelled_total", model_name="tiny") >= 1


def test_overload_is_429_with_retry_after_and_the_server_lives_on(server):
    wait_idle(server)

    async def run():
        hold = asyncio.Event()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def long_stream():
                async with client.stream("POST", "/v1/completions",
                                         json={"prompt": "long", "stream": True, **LONG}) as r:
                    assert r.status_code == 200
                    await hold.wait()

            holders = [asyncio.ensure_future(long_stream()) for _ in range(RUNNING + WAITING)]
            deadline = time.monotonic() + 20
            while server.service.admission.running < RUNNING or server.service.admission.waiting < WAITING:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            health = (await client.get("/health")).json()
            assert (health["requests_running"], health["requests_waiting"]) == (RUNNING, WAITING)
            refused = await asyncio.gather(*(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
                                             for _ in range(3)))
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            return refused

    refused = asyncio.run(run())
    for r in refused:
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    wait_idle(server)
    assert httpx.get(server.url + "/health").status_code == 200
    ok = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "plan": PLAN}, timeout=60)
    assert ok.status_code == 200
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "plandiff:requests_rejected_total", model_name="tiny", reason="overloaded") >= 3


# ------------------------------------------------------------------ bad input

BAD = [
    # (path, body, status, param)
    ("/v1/completions", {"prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "x", "logprobs": 1}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "stop": ["\n"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400,
     "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "steps_ratio": 0}, 400, "steps_ratio"),
    ("/v1/completions", {"prompt": "x", "order": "sideways"}, 400, "order"),
    ("/v1/completions", {"prompt": "x", "order": "threshold"}, 400, "threshold"),
    ("/v1/completions", {"prompt": "x", "on_overflow": "explode"}, 400, "on_overflow"),
    ("/v1/completions", {"prompt": "x", "dense": "no"}, 400, "dense"),
    ("/v1/completions", {"prompt": "x", "length_scale": 1e9}, 400, "length_scale"),
    ("/v1/completions", {"prompt": "x", "seed": 2**64}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10_000}, 400,
     "max_completion_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 8, "max_new_tokens": 9}, 400, "max_new_tokens"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": {"x": 1}}, 400, "stream_options.x"),
    ("/v1/completions", {"prompt": "x", "plandiff_events": ["plan_token", "gossip"]}, 400, "plandiff_events.1"),
    ("/v1/completions", {"prompt": "x", "plan": "  "}, 400, "plan"),
    ("/v1/completions", {"prompt": "x", "plan": "<promise>-<topic>a 2</topic>"}, 400, "plan"),
    ("/v1/completions", {"prompt": "x", "plan": "<promise>-<topic>a 2</topic><|im_end|>", "mode": "diffusion"}, 400,
     "plan"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
    ("/v1/completions", {"prompt": {"text": "x"}}, 400, "prompt"),
    ("/v1/completions", {"prompt": "word " * 2000}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "system": 3}, 400, "system"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     400, "messages.1.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages.0.content.0.type"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, 400, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400,
     "messages.0.tool_calls"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 2000}]}, 400, "messages"),
    ("/v1/chat/completions", {"prompt": "x"}, 400, "prompt"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_field_is_4xx_naming_it(http, path, body, status, param):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"] and "Traceback" not in r.text


def test_bad_bodies_and_routes_are_4xx(http):
    cases = [(b"", 400), (b"{", 400), (b"[]", 400), (b"null", 400), (b'{"prompt": NaN}', 400),
             (b'{"prompt": "x", "temperature": 1e999}', 400), (b"\xff\xfe{}", 400), (b'{"prompt": "\xff"}', 400),
             (b"[" * 50_000, 400),
             (b'{"prompt": "\\ud800"}', 400), (b'{"prompt": "' + b"x" * 70_000 + b'"}', 413)]
    for raw, status in cases:
        r = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (raw[:40], r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    chunked = http.post("/v1/completions", content=iter([b'{"prompt": "', b"x" * 70_000, b'"}']))  # no length
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert http.get("/v1/models/gpt-4").status_code == 404


def test_fuzzed_fields_never_get_a_5xx(http):
    """Random values of random types in every field a body may hold: a 4xx naming a field, or 200."""
    rng = random.Random(7)
    values = [None, -1, 0, 1, 2, 0.5, -0.0, 1e308, 2**70, "", "x", "adaptive", [], [1], ["x"], {}, {"a": 1}, True,
              False, "\u0000", "<sync/>", "\U0010ffff"]
    fields = ["prompt", "model", "stream", "max_tokens", "temperature", "top_p", "seed", "plan", "plandiff_events",
              "system", "mode", "steps_ratio", "order", "threshold", "top_k", "dense", "length_scale",
              "max_span_length", "kv_refresh", "on_overflow", "max_overflow_retries", "overflow_growth", "max_spans",
              "max_rounds", "max_plan_tokens", "constrained", "n", "stop", "logprobs", "stream_options", "user"]
    for _ in range(150):
        body = {"prompt": "x", "max_tokens": 4}
        for name in rng.sample(fields, rng.randint(1, 3)):
            body[name] = rng.choice(values)
        r = http.post("/v1/completions", json=body)
        assert r.status_code < 500, (body, r.text)
        if r.status_code != 200:
            error = r.json()["error"]
            assert error["message"] and "Traceback" not in r.text, body
            assert error["param"] is None or error["param"].split(".")[0] in {*body, "threshold"}, (body, error)


# ------------------------------------------------------------------ the openai client, unmodified


def test_openai_client_completions_and_chat(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]

    completion = client.completions.create(model="tiny", prompt="Tell me things.", max_tokens=200,
                                           extra_body={"plan": PLAN, "order": "margin"})
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].text
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.model_extra["critical_path"] > 0

    chat = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                                                  {"role": "user", "content": "Hi"}],
                                          max_tokens=200, temperature=0.0, extra_body={"plan": PLAN})
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens > 0

    chunks = list(client.completions.create(model="tiny", prompt="Tell me things.", stream=True,
                                            stream_options={"include_usage": True}, extra_body={"plan": PLAN, "order": "margin"}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == completion.choices[0].text  # greedy: the same answer streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == completion.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="tiny", stream=True, messages=[{"role": "user", "content": "Hi"}],
                                                 extra_body={"plan": PLAN, "plandiff_events": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    kinds = [c.model_extra["plandiff"]["kind"] for c in chunks if not c.choices]
    assert kinds[0] == "plan_token" and "span_done" in kinds and "sync" in kinds and kinds[-1] == "done"


def test_openai_client_sees_errors_as_its_own_types(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")


# ------------------------------------------------------------------ models, health, metrics


def test_models_health_and_metrics(http):
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert http.get("/v1/models/tiny").json()["max_model_len"] == 2048
    assert http.get("/health").json()["status"] == "ready"
    # A forced overflow: this random model never writes [PAD], so every span fills its slots.
    r = http.post("/v1/completions", json={"prompt": "x", "plan": PLAN, "on_overflow": "retry",
                                           "max_overflow_retries": 1, "max_span_length": 40, "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    text = http.get("/metrics").text
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")
    for name in ["plandiff:time_to_first_token_seconds_count", "plandiff:e2e_request_latency_seconds_count",
                 "plandiff:request_queue_time_seconds_count", "plandiff:prompt_tokens_total",
                 "plandiff:generation_tokens_total", "plandiff:plan_rounds_total", "plandiff:spans_total",
                 "plandiff:syncs_total", "plandiff:span_retries_total"]:
        assert metric(text, name, model_name="tiny") > 0, name
    assert metric(text, "plandiff:request_success_total", model_name="tiny", finished_reason="stop") > 0
    assert metric(text, "plandiff:span_overflow_total", model_name="tiny", action="retry") > 0
    assert metric(text, "plandiff:span_overflow_total", model_name="tiny", action="accept") > 0
    assert "plandiff:num_requests_running{" in text and "plandiff:num_requests_waiting{" in text
    assert metric(text, "plandiff:requests_rejected_total", model_name="tiny", reason="invalid") > 0
    for name in ("plandiff:failovers_total", "plandiff:replans_total"):
        assert f"# TYPE {name} counter" in text


def test_control_plane_imports_no_torch():
    code = ("import sys; import plandiff.orchestrator.server, plandiff.client, plandiff.orchestrator.bench_serve; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ the process: start, SIGTERM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_serve_starts_at_503_then_sigterm_drains_in_flight_request_and_exits_0(compact_folder, executor):
    """With Ray too: starting Ray puts a fatal-signal handler on SIGTERM that aborted the process
    (exit -6) after the drain, until the server took the signal back."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANDIFF_")}
    env["OMP_NUM_THREADS"] = "1"  # as this process's torch: two threads on a busy 2-core machine crawl
    process = subprocess.Popen(
        [sys.executable, "-m", "plandiff.orchestrator.cli", "serve", "--model", str(compact_folder), "--port",
         str(port), "--served-model-name", "tiny", "--executor", executor],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        statuses = []
        deadline = time.monotonic() + 60
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline and process.poll() is None
            try:
                statuses.append(httpx.get(url + "/health").status_code)
            except httpx.TransportError:
                time.sleep(0.02)
        assert statuses[0] == 503 and set(statuses) == {503, 200}  # the port answers while the model loads
        assert process.stdout.readline().startswith(f"plandiff: serving tiny at {url}/v1")

        with httpx.Client(base_url=url, timeout=60) as client:
            body = {"prompt": "x", "stream": True, "max_tokens": 200, "plandiff_events": ["plan_token"]}
            with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                assert next(lines) == "event: plandiff"  # a plan token: the request is in flight
                process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while (health := httpx.get(url + "/health")).status_code == 200:
                    assert time.monotonic() < deadline
                assert health.status_code == 503 and health.json()["status"] == "draining"
                refused = httpx.post(url + "/v1/completions", json={"prompt": "x"})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
                rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the in-flight request finished
        final = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert [c["choices"][0]["finish_reason"] for c in final if c["choices"]][-1] == "length"
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
