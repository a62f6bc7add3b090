"""`PlandiffClient`: an async client (httpx) of a plandiff server.

    async with PlandiffClient("http://127.0.0.1:8000") as client:
        done = await client.generate("What is the aurora?", order="adaptive", threshold=0.99)
        print(done.text, done.usage.critical_path)

        async with client.stream("What is the aurora?") as events:      # leaving early cancels the work
            async for event in events:
                if event.kind == "text":
                    print(event.text, end="")

The generation options are `GenerationOptions`' fields (plus `max_tokens`), checked here before
anything is sent. Answers of 429 (its Retry-After honoured), 503 and failed connections are retried
with exponential backoff and jitter, up to `max_retries` times; a stream is retried only before its
first event. Stream events are the orchestrator's own types (`plandiff.orchestrator.events`): plan
tokens, spans promised, span progress, span done, retries, syncs, answer text in document order,
then `done` with the usage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import os
import random
import time
from typing import Any, AsyncIterator, Iterable, Literal

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from plandiff.model.errors import InvalidRequestError
from plandiff.model.options import GenerationOptions
from plandiff.orchestrator.events import DoneEvent, Event, TextEvent, Usage

from .errors import APIConnectionError, APITimeoutError, PlandiffAPIError, PlandiffClientError, error_for
from .sse import read_events

RETRIED = {429, 503}
OPTION_NAMES = frozenset(GenerationOptions.model_fields) | {"max_tokens"}
EVENTS = TypeAdapter(Event)
USAGE = TypeAdapter(Usage)
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is cut to this


class Completion(BaseModel):
    """A finished answer."""

    id: str
    request_id: str | None
    model: str
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage  # tokens, critical_path (sequential forwards), retries, failovers, seconds…
    result: dict | None = None  # plan, rounds, spans, token ids (when asked for with events=True)
    fallback: str | None = None


class OtherEvent(BaseModel):
    """An event of a kind this client does not know (a newer server)."""

    kind: str
    data: dict


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """The options as the body's fields; unknown names and bad values raise InvalidRequestError."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise InvalidRequestError(f"unknown option {unknown[0]!r} (options are GenerationOptions' fields)",
                                  field=unknown[0])
    body = dict(options)
    if "max_tokens" in body:
        if "max_new_tokens" in body and body["max_new_tokens"] != body["max_tokens"]:
            raise InvalidRequestError("max_tokens and max_new_tokens disagree; give one", field="max_tokens")
        body["max_new_tokens"] = body.pop("max_tokens")
    GenerationOptions(**body)  # validate here, before a round trip
    if "max_new_tokens" in body:
        body["max_tokens"] = body.pop("max_new_tokens")
    return body


def _messages(messages: Iterable) -> list[dict]:
    out = []
    for m in messages:
        if isinstance(m, dict):
            out.append(m)
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            out.append({"role": m[0], "content": m[1]})
        elif hasattr(m, "role") and hasattr(m, "content"):
            out.append({"role": m.role, "content": m.content})
        else:
            raise InvalidRequestError("a message is a {role, content} dict, a (role, content) pair or a ChatMessage",
                                      field="messages")
    return out


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class PlandiffClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = 600.0, connect_timeout: float = 10.0, max_retries: int = 3,
                 backoff: float = 0.5, max_backoff: float = 8.0, model: str | None = None,
                 http_client: httpx.AsyncClient | None = None):
        """`base_url` with or without /v1; `api_key` defaults to $PLANDIFF_API_KEY; `timeout` bounds
        each read (seconds; a stream's gap between events), `connect_timeout` each connection;
        `model` names the model in each body (default: whatever the server serves)."""
        base = base_url.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        self.base_url = base
        self.api_key = api_key if api_key is not None else os.environ.get("PLANDIFF_API_KEY")
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.model = model
        if not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout, connect=connect_timeout)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._own_http = http_client is None
        self.http = http_client or httpx.AsyncClient(base_url=base, timeout=timeout, headers=headers)
        if not self._own_http:
            self.http.headers.update(headers)

    async def __aenter__(self) -> PlandiffClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # ------------------------------------------------------------------ requests

    async def generate(self, prompt: str | list[int], *, plan: str | None = None, system: str | None = None,
                       events: bool = False, **options) -> Completion:
        """One completion of `prompt` (text, chat-wrapped with `system`, or token ids).
        `events=True` also returns the structured result (plan, spans) in `Completion.result`."""
        body = self._body(plan, events, options, prompt=prompt)
        if system is not None:
            body["system"] = system
        return await self._complete("/v1/completions", body)

    async def chat(self, messages: Iterable, *, plan: str | None = None, events: bool = False,
                   **options) -> Completion:
        """One answer to a conversation: {role, content} dicts, (role, content) pairs or ChatMessages."""
        return await self._complete("/v1/chat/completions",
                                    self._body(plan, events, options, messages=_messages(messages)))

    def stream(self, prompt: str | list[int] | None = None, *, messages: Iterable | None = None,
               plan: str | None = None, system: str | None = None, events: bool | list[str] = True,
               **options) -> EventStream:
        """The request's events as they happen (use it with `async with`, or iterate it directly).
        `events`: True for every event kind, a list of kinds (e.g. ["span_promised", "span_done",
        "sync"]), or False for text and done only. Closing the stream early cancels the server's work."""
        if (prompt is None) == (messages is None):
            raise InvalidRequestError("give a prompt or messages", field="prompt")
        body = self._body(plan, events if events else ["done"], options, prompt=prompt,
                          messages=None if messages is None else _messages(messages))
        body["stream"] = True
        if system is not None:
            body["system"] = system
        return EventStream(self, "/v1/chat/completions" if messages is not None else "/v1/completions", body)

    async def models(self) -> list[str]:
        response = await self._send("GET", "/v1/models")
        return [m["id"] for m in response.json()["data"]]

    async def health(self) -> dict:
        """The server's state (not retried): {"status": "ready" | "starting" | "draining", …}."""
        try:
            response = await self.http.get("/health")
        except httpx.TransportError as err:
            raise APIConnectionError(f"cannot reach {self.base_url}: {err}") from err
        return response.json()

    # ------------------------------------------------------------------ plumbing

    def _body(self, plan, events, options, **prompt) -> dict:
        body = {k: v for k, v in prompt.items() if v is not None}
        if self.model is not None:
            body["model"] = self.model
        if plan is not None:
            body["plan"] = plan
        if events:
            body["plandiff_events"] = events
        body.update(_options(options))
        return body

    async def _complete(self, path: str, body: dict) -> Completion:
        response = await self._send("POST", path, body)
        data = response.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        extra = data.get("plandiff") or {}
        return Completion(id=data["id"], request_id=response.headers.get("x-request-id"), model=data["model"],
                          text=text, finish_reason=choice["finish_reason"], usage=_usage(data["usage"]),
                          result=extra.get("result"), fallback=extra.get("fallback"))

    async def _send(self, method: str, path: str, body: dict | None = None, stream: bool = False) -> httpx.Response:
        """Send with retries on 429, 503 and connection failures; raise the typed error of any other
        failure. With `stream`, the response is returned open (its body unread)."""
        attempt = 0
        while True:
            request = self.http.build_request(method, path, json=body)
            try:
                response = await self.http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as err:
                # Nothing was answered: the request did no work, or the server cancelled it on the
                # broken connection. Safe to send again.
                if attempt >= self.max_retries:
                    raise APIConnectionError(f"cannot reach {self.base_url}: {err}") from err
                await asyncio.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            except httpx.TimeoutException as err:
                raise APITimeoutError(f"{method} {path}: no answer within the timeout ({err})") from err
            except httpx.TransportError as err:
                raise APIConnectionError(f"{method} {path}: {err}") from err
            if response.status_code < 400:
                return response
            await response.aread()
            try:
                payload = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = response.text
            await response.aclose()
            wait = _retry_after(response)
            error = error_for(response.status_code, payload, response.headers.get("x-request-id"), wait)
            if response.status_code not in RETRIED or attempt >= self.max_retries:
                raise error
            await asyncio.sleep(self._delay(attempt, wait))
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; at least the server's Retry-After when it gave one."""
        backoff = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after is None:
            return backoff
        return min(retry_after, MAX_RETRY_AFTER) * random.uniform(1.0, 1.2)


class EventStream:
    """A streamed request. Iterate it for events; `aclose()` (or leaving `async with`) disconnects,
    which cancels the request's work on the server. `done` holds the final event once it came."""

    def __init__(self, client: PlandiffClient, path: str, body: dict):
        self.client = client
        self.path = path
        self.body = body
        self.response: httpx.Response | None = None
        self.request_id: str | None = None
        self.done: DoneEvent | None = None
        self.finish_reason: str | None = None
        self._iterator: AsyncIterator | None = None

    async def __aenter__(self) -> EventStream:
        await self._open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __aiter__(self):
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def __anext__(self):
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()
        if self.response is not None:
            await self.response.aclose()

    async def _open(self) -> None:
        if self.response is None:
            self.response = await self.client._send("POST", self.path, self.body, stream=True)
            self.request_id = self.response.headers.get("x-request-id")

    async def _events(self) -> AsyncIterator:
        await self._open()
        rid = self.request_id or ""
        try:
            async for name, data in read_events(self.response.aiter_lines()):
                if data.startswith("[DONE]"):
                    return
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    raise PlandiffClientError(f"the server sent a stream event that is not JSON: {data[:200]!r}")
                if "error" in chunk:
                    raise _stream_error(chunk, rid)
                if "plandiff" in chunk:
                    event = _event(chunk["plandiff"])
                    if isinstance(event, DoneEvent):
                        self.done = event
                    yield event
                    continue
                for choice in chunk.get("choices") or ():
                    text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                    if text:
                        yield TextEvent(request_id=rid, text=text)
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
        except httpx.TimeoutException as err:
            raise APITimeoutError(f"the stream stalled past the timeout ({err})") from err
        except httpx.TransportError as err:
            raise APIConnectionError(f"the stream broke: {err}") from err
        finally:
            await self.response.aclose()


def _usage(data: dict) -> Usage:
    """The server's usage object (OpenAI's counts, then every Usage field by name) as a Usage."""
    names = set(Usage.model_fields) if hasattr(Usage, "model_fields") else {f.name for f in dataclasses.fields(Usage)}
    return USAGE.validate_python({k: v for k, v in data.items() if k in names})


def _event(data: dict):
    try:
        return EVENTS.validate_python(data)
    except ValidationError:
        return OtherEvent(kind=str(data.get("kind")), data=data)


def _stream_error(chunk: dict, request_id: str) -> PlandiffAPIError:
    """An error the server met after the stream began (the status line was already 200)."""
    error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
    status = {"invalid_request_error": 400, "service_unavailable_error": 503, "rate_limit_error": 429}.get(
        error.get("type"), 500)
    return error_for(status, {"error": error}, request_id)
