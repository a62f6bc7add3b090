"""`plandiff.client` against a real server on 127.0.0.1 (one for the module, with an API key and room
for one request at a time, so that overload is easy to cause); the `openai` client with the key."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import pytest

from plandiff.client import (APIConnectionError, APITimeoutError, AuthenticationError, BadRequestError, Completion,
                             DoneEvent, PlandiffClient, RateLimitError, SpanDoneEvent, SpanPromisedEvent, TextEvent)
from plandiff.model.errors import InvalidRequestError
from plandiff.orchestrator.server import BackgroundServer
from plandiff.orchestrator.settings import ServeSettings

KEY = "test-key-0123456789"
PLAN = "<promise>-<topic>alpha 2</topic><promise>-<topic>beta 1</topic><sync/><promise>-<topic>gamma 1</topic><|im_end|>"


@pytest.fixture(scope="module")
def server(compact_folder):
    settings = ServeSettings(model=str(compact_folder), port=0, api_key=KEY, served_model_name="tiny",
                             max_running_requests=1, max_waiting_requests=0, max_new_tokens=160, log_level="WARNING")
    server = BackgroundServer(settings)
    with server as url:
        server.url = url
        yield server


@pytest.fixture(scope="module")
def url(server):
    return server.url


def run(coroutine):
    return asyncio.run(coroutine)


def client(url, **kwargs) -> PlandiffClient:
    return PlandiffClient(url, KEY, **kwargs)


def test_api_key_is_required_on_v1_and_compared(url):
    assert httpx.post(url + "/v1/completions", json={"prompt": "x"}).status_code == 401
    wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # probes and scrapers need no key
    assert httpx.get(url + "/metrics").status_code == 200

    with pytest.raises(AuthenticationError):
        run(PlandiffClient(url, "nope").models())
    ok = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert ok.completions.create(model="tiny", prompt="x", max_tokens=8).choices[0].finish_reason == "length"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_generate_and_chat_return_completions(url):
    async def go():
        async with client(url + "/v1") as c:  # with or without /v1
            assert await c.models() == ["tiny"]
            done = await c.generate("Tell me things.", plan=PLAN, events=True, steps_ratio=0.5)
            chat = await c.chat([("system", "Be brief."), {"role": "user", "content": "Hi"}], plan=PLAN,
                                max_tokens=100)
            return done, chat

    done, chat = run(go())
    assert isinstance(done, Completion) and done.finish_reason == "stop" and done.text
    assert done.usage.critical_path > 0 and done.usage.steps_per_round == [10, 5]
    assert [s["topic"] for r in done.result["rounds"] for s in r["spans"]] == ["alpha", "beta", "gamma"]
    assert done.id == "cmpl-" + done.request_id
    assert chat.id.startswith("chatcmpl-") and chat.usage.generated_tokens <= 100


def test_stream_yields_typed_events_in_order(url):
    async def go():
        async with client(url) as c, c.stream("Tell me things.", plan=PLAN) as events:
            return [event async for event in events], events.done

    events, done = run(go())
    assert isinstance(events[-1], DoneEvent) and events[-1] is done
    kinds = [e.kind for e in events]
    assert kinds.index("plan_token") < kinds.index("span_promised") < kinds.index("span_progress") \
        < kinds.index("span_done") < kinds.index("text") < kinds.index("sync")
    assert [e.topic for e in events if isinstance(e, SpanPromisedEvent)] == ["alpha", "beta", "gamma"]
    assert sum(isinstance(e, SpanDoneEvent) for e in events) == 3
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == done.text
    assert done.usage.critical_path > 0 and done.finish_reason == "end"

    async def quiet():  # events=False: text and done only
        async with client(url) as c:
            return [e.kind async for e in c.stream("Tell me things.", plan=PLAN, events=False)]

    assert set(run(quiet())) == {"text", "done"}


def test_options_are_checked_before_sending(url):
    async def go(**options):
        async with client(url) as c:
            await c.generate("x", **options)

    with pytest.raises(InvalidRequestError) as err:
        run(go(steps_ratio=2.0))
    assert err.value.field == "steps_ratio"
    with pytest.raises(InvalidRequestError) as err:
        run(go(temprature=0.5))
    assert err.value.field == "temprature"


def test_server_refusals_are_typed_errors_naming_the_field(url):
    async def go():
        async with client(url) as c:
            await c.generate("x", plan="<promise>-<topic>a 2</topic>")

    with pytest.raises(BadRequestError) as err:
        run(go())
    assert err.value.status == 400 and err.value.param == "plan" and err.value.code == "invalid_plan"
    assert isinstance(err.value, InvalidRequestError) and err.value.field == "plan"


async def hold_the_only_slot(url, release: asyncio.Event):
    """A long stream that takes the server's only running slot, closed once `release` is set."""
    async with client(url) as c, c.stream("long", max_tokens=1800) as events:
        async for _ in events:
            if release.is_set():
                return


async def until_busy(url):
    async with httpx.AsyncClient() as h:
        while (await h.get(url + "/health")).json()["requests_running"] == 0:
            await asyncio.sleep(0.01)


def test_429_is_retried_after_retry_after_then_succeeds(url):
    async def go():
        release = asyncio.Event()
        holder = asyncio.ensure_future(hold_the_only_slot(url, release))
        await until_busy(url)
        async with client(url, max_retries=0) as c:
            with pytest.raises(RateLimitError) as refused:
                await c.generate("x", plan=PLAN)
        started = time.monotonic()
        # The slot is freed only after the retrying client was surely refused once (timed from here,
        # not from the holder's start: on a loaded machine the first refusal can take a while).
        asyncio.get_running_loop().call_later(0.5, release.set)
        async with client(url, max_retries=4) as c:
            done = await c.generate("x", plan=PLAN)  # refused while the slot is held, then admitted
        await holder
        return refused.value, done, time.monotonic() - started

    refused, done, waited = run(go())
    assert refused.status == 429 and refused.retry_after == 1.0
    assert done.finish_reason == "stop" and waited >= 1.0  # it waited at least the server's Retry-After


def test_connection_errors_are_retried_with_backoff(url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed

    async def go():
        async with PlandiffClient(f"http://127.0.0.1:{port}", max_retries=3, backoff=0.1) as c:
            started = time.monotonic()
            with pytest.raises(APIConnectionError):
                await c.generate("x")
            return time.monotonic() - started

    waited = run(go())
    assert waited >= 0.05 + 0.1 + 0.2  # three backoffs of at least half of 0.1, 0.2, 0.4 s


def test_timeout_raises_and_the_server_cancels_the_work(server, url):
    def forwards():
        return server.run_coroutine(server.service.executor.workers[0].stats())["forwards"]

    before = forwards()

    async def go():
        async with client(url, timeout=0.2, max_retries=0) as c:
            with pytest.raises(APITimeoutError):  # autoregressive: a plan round would end at max_plan_tokens
                await c.generate("long", max_tokens=1800, mode="autoregressive")
        async with httpx.AsyncClient() as h:  # the disconnect freed the slot
            deadline = time.monotonic() + 10
            while (await h.get(url + "/health")).json()["requests_running"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        spent = forwards() - before
        await asyncio.sleep(0.2)
        assert forwards() - before == spent < 1000  # stopped, far short of its 1,800 forwards
        async with client(url) as c:
            return await c.generate("x", plan=PLAN)

    assert run(go()).finish_reason == "stop"
