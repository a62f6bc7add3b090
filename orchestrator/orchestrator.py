"""The control plane: per request, plan → span jobs → join → plan … → end, over an executor's workers.

    async for event in orchestrator.generate(GenerateRequest(prompt="…")):
        ...

A request runs on one worker, which holds its KV cache, in one streaming call (a Ray call costs
about a millisecond; the orchestrator has nothing to decide between phases: overflow retries and
malformed-plan recovery happen in the request's state machine). The task graph is built from the
streamed events. A worker that dies mid-request is replaced: the request is reopened on a live
worker from its committed tokens (prefix re-prefilled) and goes on; events already sent are not
sent again. Cancelling the consumer (or `cancel(request_id)`) stops the worker at its next forward
and frees the request's state, whatever the request is doing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import AsyncIterator

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from plandiff.model.codec import DEFAULT_SYSTEM, TextCodec, check_text
from plandiff.model.errors import InvalidRequestError
from plandiff.model.options import GenerationOptions, Validated
from plandiff.model.result import GenerationResult
from plandiff.workers.logs import get_logger

from .events import DoneEvent, Event
from .executors import Executor, WorkerHandle, WorkerLost, WorkersUnavailableError
from .task_graph import TaskGraph

MAX_FAILOVERS = 5  # workers a request may lose (each loss waits up to executor.failover_wait for one back)


class ChatMessage(Validated):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _text(cls, content: str) -> str:
        check_text(content, "content")
        return content


class GenerateRequest(Validated):
    """One request: user text (chat-wrapped with `system`), a conversation, or prompt token ids; an
    optional forced plan; the options. Invalid input raises InvalidRequestError naming the field."""

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16], min_length=1, max_length=128)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    prompt_ids: list[int] | None = Field(None, min_length=1)
    system: str | None = DEFAULT_SYSTEM
    plan: str | None = None  # forced plan text
    options: GenerationOptions = Field(default_factory=GenerationOptions)

    @field_validator("prompt", "system", "plan")
    @classmethod
    def _text(cls, text: str | None, info: ValidationInfo) -> str | None:
        if text is not None:
            check_text(text, info.field_name)
            if info.field_name != "system" and not text.strip():
                raise ValueError(f"{info.field_name} is empty" + (": leave it out to let the model plan"
                                                                  if info.field_name == "plan" else ""))
        return text

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
        if messages is not None and messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return messages

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        given = [name for name in ("prompt", "messages", "prompt_ids") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, messages and prompt_ids (got {', '.join(given) or 'none'})")
        return self

    def encode(self, codec: TextCodec) -> list[int]:
        """The prompt's token ids."""
        if self.prompt_ids is not None:
            return list(self.prompt_ids)
        if self.messages is not None:
            return codec.encode_chat([(m.role, m.content) for m in self.messages])
        return codec.encode_prompt(self.prompt, self.system)


class Orchestrator:
    def __init__(self, executor: Executor, codec: TextCodec):
        self.executor = executor
        self.codec = codec
        self.log = get_logger("plandiff.orchestrator")
        self._tasks: dict[str, asyncio.Task] = {}
        self._freeing: set[asyncio.Task] = set()

    async def generate(self, request: GenerateRequest, stream: bool = True) -> AsyncIterator[Event]:
        """The request's events. `stream=False` lets the worker send them in a few batches (at each
        round's join and at the end) instead of every few milliseconds: fewer messages, same events."""
        rid = request.request_id
        if rid in self._tasks:  # refused before anything is touched: the running request goes on
            raise InvalidRequestError(f"request_id {rid!r} is already running; give each request its own",
                                      field="request_id")
        codec, options = self.codec, request.options
        prompt_ids = request.encode(codec)
        plan = codec.encode_plan(request.plan) if request.plan else None
        graph = TaskGraph(rid, codec, options)
        log = self.log.bind(request_id=rid)
        timings = {"plan": 0.0, "denoise": 0.0}
        started = time.perf_counter()
        failovers = 0
        worker: WorkerHandle | None = None
        resume: list[int] | None = None
        result: GenerationResult | None = None
        self._tasks[rid] = me = asyncio.current_task()  # no await since the check above
        try:
            worker = self.executor.pick()
            while result is None:
                worker.load += 1
                log.info("request_routed", worker=worker.name, prompt_tokens=len(prompt_ids),
                         resumed_tokens=len(resume or ()))
                mark = time.perf_counter()
                try:
                    async for item in worker.generate(rid, prompt_ids, options, plan, resume, stream):
                        now = time.perf_counter()
                        timings[graph.next_phase if graph.next_phase in timings else "denoise"] += now - mark
                        mark = now
                        if isinstance(item, GenerationResult):
                            result = item
                            continue
                        for event in graph.apply(item):
                            yield event
                except WorkerLost as err:
                    failovers += 1
                    log.warning("worker_lost", worker=worker.name, round=graph.round.index, error=str(err)[:200])
                    if failovers > MAX_FAILOVERS:
                        raise WorkersUnavailableError(f"request {rid} lost {failovers} workers; giving up") from err
                    resume = graph.committed  # a live worker replays what was committed and goes on
                finally:
                    worker.load -= 1
                if result is None:
                    # One that answers: at once if another is alive, else once Ray has restarted one
                    # (up to executor.failover_wait); none: WorkersUnavailableError.
                    worker = await self.executor.live_worker(avoid=worker)
            for event in graph.final_text(result.text):
                yield event
            usage = dataclasses.replace(
                result.usage, retries=graph.retries, replans=graph.replans, failovers=failovers,
                plan_seconds=timings["plan"], denoise_seconds=timings["denoise"], total_seconds=time.perf_counter() - started,
            )
            log.info("request_done", finish=result.finish_reason, critical_path=usage.critical_path,
                     retries=usage.retries, failovers=failovers, seconds=round(usage.total_seconds, 4))
            yield DoneEvent(request_id=rid, text=result.text, finish_reason=result.finish_reason,
                            fallback=result.fallback, usage=usage, result=result.to_dict(),
                            worker=worker.name)
        finally:
            if self._tasks.get(rid) is me:
                del self._tasks[rid]
            if result is None and worker is not None:
                log.info("request_cancelled", round=graph.round.index)
                # The worker stops the request at its next forward and frees it; off the critical path.
                task = asyncio.ensure_future(self._cancel(worker, rid))
                self._freeing.add(task)
                task.add_done_callback(self._freeing.discard)

    async def complete(self, request: GenerateRequest) -> DoneEvent:
        """Run a request to the end and return only its final event."""
        done = None
        async for event in self.generate(request, stream=False):
            if isinstance(event, DoneEvent):
                done = event
        if done is None:
            raise InvalidRequestError(f"request {request.request_id} ended without a result")
        return done

    def cancel(self, request_id: str) -> bool:
        """Cancel a running request (the task consuming its events), wherever it is."""
        task = self._tasks.get(request_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def _cancel(self, worker: WorkerHandle, rid: str) -> None:
        try:
            await worker.cancel(rid)
        except WorkerLost:
            pass  # its state died with it
