"""POST /v1/completions and /v1/chat/completions: admit, validate, encode, then run the request
through the orchestrator and answer as JSON or as an SSE stream.

Order of checks, cheapest first: the server is ready (503) → a place is free (429, before the body is
read) → the body's size (413) → its fields (400 naming the field) → the prompt's length in tokens
(400). Then the request waits for a running slot and its first event is awaited *before* the status
line is sent, so what only the worker can check (a forced plan against the grammar, prompt ids
against the vocabulary) is still a 400, not an error inside a 200 stream.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextlib import aclosing

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from plandiff.model.errors import PromptTooLongError

from ..orchestrator import GenerateRequest
from .admission import Overloaded
from .errors import APIError, from_exception
from .openai_format import FINISH, Kind, ParsedBody, Shapes, parse_body, parse_json, usage_body
from .service import Service
from .sse import DONE, HEADERS, RacingResponse, Send, dumps, sse

ENCODE_IN_THREAD = 20_000  # characters: a longer prompt is tokenized off the event loop


async def handle(request: Request, kind: Kind):
    service: Service = request.app.state.service
    service.check_accepting()
    try:
        ticket = service.admission.reserve()
    except Overloaded as err:
        service.metrics.reject("overloaded")
        raise APIError(429, str(err), None, "server_overloaded", service.retry_after()) from None
    prompt_field = "messages" if kind == "chat" else "prompt"
    try:
        body = parse_json(await read_body(request, service.settings.max_body_bytes))
        parsed = parse_body(kind, body, service.model_name, service.defaults, service.max_tokens_limit,
                            service.settings.system)
        prompt_ids = await encode(service, parsed)
        generate = GenerateRequest(request_id=request_id(request), prompt_ids=prompt_ids, plan=parsed.plan,
                                   options=parsed.options)
    except ClientDisconnect:
        ticket.finish()
        service.metrics.cancel()
        return Response(status_code=400)  # nobody reads it
    except BaseException as err:
        ticket.finish()
        api = from_exception(err, prompt_field)
        if api.status >= 500:
            service.log.exception("request_invalid_internal", error=str(err)[:300])
        service.metrics.reject("invalid")
        raise api from None
    run = Run(service, parsed, generate, ticket)
    return RacingResponse(run.serve, run.disconnected)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the body has {int(declared)} bytes; this server takes at most {limit}", None,
                       "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the body is larger than {limit} bytes, this server's bound", None,
                           "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def request_id(request: Request) -> str:
    """The caller's X-Request-Id (cleaned, made unique with a suffix) or a fresh one."""
    given = re.sub(r"[^A-Za-z0-9._:-]", "", request.headers.get("x-request-id", ""))[:64]
    suffix = uuid.uuid4().hex[:12] if given else uuid.uuid4().hex[:24]
    return f"{given}-{suffix}" if given else suffix


async def encode(service: Service, parsed: ParsedBody) -> list[int]:
    codec = service.codec
    if parsed.prompt_ids is not None:
        ids = parsed.prompt_ids  # vocabulary and control tags are checked where the request is opened
    else:
        if parsed.messages is not None:
            size = sum(len(c) for _, c in parsed.messages)
            job = lambda: codec.encode_chat(parsed.messages)  # noqa: E731
        else:
            size = len(parsed.prompt_text) + len(parsed.system or "")
            job = lambda: codec.encode_prompt(parsed.prompt_text, parsed.system)  # noqa: E731
        ids = await asyncio.to_thread(job) if size > ENCODE_IN_THREAD else job()
    limit = service.max_prompt_tokens
    if limit is not None and len(ids) > limit:
        raise PromptTooLongError(f"the prompt has {len(ids)} tokens; this server takes at most {limit}",
                                 field=parsed.prompt_field)
    return ids


class Run:
    """One admitted request, from its wait for a slot to its last byte."""

    def __init__(self, service: Service, parsed: ParsedBody, request: GenerateRequest, ticket):
        self.service = service
        self.parsed = parsed
        self.request = request
        self.ticket = ticket
        self.shapes = Shapes(parsed.kind, request.request_id, int(time.time()), service.model_name)
        self.headers_sent = False
        self.first_text: float | None = None
        self.log = service.log.bind(request_id=request.request_id)

    def disconnected(self) -> None:
        self.service.metrics.cancel()
        self.log.info("request_cancelled", reason="client disconnected", running=self.ticket.state == "running")

    async def serve(self, send: Send) -> None:
        s, p = self.service, self.parsed
        self.log.info("request_received", kind=p.kind, stream=p.stream, max_new_tokens=p.options.max_new_tokens,
                      prompt_tokens=len(self.request.prompt_ids), forced_plan=p.plan is not None)
        try:
            await self.ticket.start()
            s.metrics.observe(s.metrics.queue_time, self.ticket.started - self.ticket.arrived)
            events = s.orchestrator.generate(self.request, stream=p.stream)
            async with aclosing(events):
                try:
                    first = await anext(events)
                except StopAsyncIteration:
                    raise RuntimeError("the request ended without a result") from None
                if p.stream:
                    await self._stream(first, events, send)
                else:
                    await self._complete(first, events, send)
        except (asyncio.CancelledError, OSError):
            raise  # the client went away (or the server stops): the orchestrator cancels the work
        except Exception as err:
            api = from_exception(err, p.prompt_field)
            s.metrics.fail(api.code)
            if api.status >= 500:
                self.log.exception("request_failed", error=str(err)[:300])
            else:
                self.log.info("request_refused", status=api.status, param=api.param, error=api.message[:300])
            if not self.headers_sent:
                await send_json(send, api.status, api.body(), {**api.headers, "X-Request-Id": self.request.request_id})
            else:
                await self._write(send, sse(api.body()) + DONE, more=False)
        finally:
            self.ticket.finish()

    def _seen(self, event) -> None:
        self.service.metrics.event(event)
        if event.kind == "text" and self.first_text is None:
            self.first_text = time.perf_counter()
            self.service.metrics.observe(self.service.metrics.ttft, self.first_text - self.ticket.arrived)

    def _finished(self, done) -> str:
        finish = FINISH[done.finish_reason]
        seconds = time.perf_counter() - self.ticket.arrived
        self.service.metrics.done(done, finish, seconds)
        self.log.info("request_finished", finish=finish, critical_path=done.usage.critical_path,
                      completion_tokens=done.usage.generated_tokens, seconds=round(seconds, 4))
        return finish

    async def _complete(self, first, events, send: Send) -> None:
        done = None
        self._seen(first)
        if first.kind == "done":
            done = first
        async for event in events:
            self._seen(event)
            if event.kind == "done":
                done = event
        if done is None:
            raise RuntimeError("the request ended without a result")
        finish = self._finished(done)
        extra = {"fallback": done.fallback, "result": done.result} if self.parsed.events else None
        body = self.shapes.response(done.text, finish, usage_body(done.usage), extra)
        await send_json(send, 200, body, {"X-Request-Id": self.request.request_id})

    async def _stream(self, first, events, send: Send) -> None:
        p, shapes = self.parsed, self.shapes
        await send({"type": "http.response.start", "status": 200,
                    "headers": HEADERS + [(b"x-request-id", self.request.request_id.encode())]})
        self.headers_sent = True
        head = shapes.first()
        if head is not None:
            await self._write(send, sse(head))
        pending = [first]
        while True:
            if pending:
                event = pending.pop()
            else:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    raise RuntimeError("the request ended without a result") from None
            self._seen(event)
            if event.kind == "text":
                await self._write(send, sse(shapes.text(event.text)))
            elif event.kind == "done":
                finish = self._finished(event)
                tail = sse(shapes.text("", finish))
                if p.events:
                    tail += sse(shapes.plandiff(event.model_dump(mode="json")), "plandiff")
                if p.include_usage:
                    tail += sse(shapes.usage(usage_body(event.usage)))
                await self._write(send, tail + DONE, more=False)
                return
            elif p.events and event.kind in p.events:
                await self._write(send, sse(shapes.plandiff(event.model_dump(mode="json")), "plandiff"))

    @staticmethod
    async def _write(send: Send, data: bytes, more: bool = True) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})
