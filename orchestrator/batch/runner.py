"""The batch loop: read lines, skip what the output already holds, keep each worker fed with up to
`max_in_flight_per_worker` requests, write each result (or error) as its own durable line.

Requests go through the `Orchestrator` like any other (it routes each to the least loaded worker
and fails a request over when its worker dies); an item whose request still lost its workers
(`WorkerLost`, `WorkersUnavailableError`) is redone `item_retries` more times. Every other failure is
that item's error line and the batch goes on. Results are written in completion order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

from plandiff.model.codec import TextCodec
from plandiff.model.errors import InvalidRequestError, PlandiffError, PromptTooLongError
from plandiff.workers.logs import get_logger

from ..executors import Executor, WorkerLost, build_executor
from ..orchestrator import GenerateRequest, Orchestrator
from .lines import DuplicateIdError, Item, LineError, count_lines, id_key, parse_line, read_lines
from .output import ResultsFile
from .progress import Progress
from .settings import BatchSettings
from .summary import Tally


def error_record(line: int, id, err: BaseException) -> dict:
    cause = getattr(err, "cause", None)  # a Ray task error carries the worker's exception
    err = cause if isinstance(cause, Exception) else err
    error = {"type": type(err).__name__, "message": " ".join(str(err).split())[:2000]}
    if getattr(err, "field", None):
        error["field"] = err.field
    return {"id": id, "line": line, "error": error}


class Batch:
    def __init__(self, settings: BatchSettings, executor: Executor, codec: TextCodec, input_path: str,
                 output_path: str, tty: bool | None = None):
        self.settings = settings
        self.executor = executor
        self.codec = codec
        self.orchestrator = Orchestrator(executor, codec)
        self.input_path = input_path
        self.results = ResultsFile(output_path, fsync=settings.fsync)
        self.defaults = settings.options()
        self.max_prompt_tokens = settings.max_prompt_tokens or (codec.max_positions - 1 if codec.max_positions else None)
        self.tally = Tally(total=count_lines(input_path))
        self.progress = Progress(self.tally.total, tty, settings.progress_interval)
        self.log = get_logger("plandiff.batch")

    async def _worker_stats(self) -> dict[str, dict]:
        """Each worker's counters (forwards, busy seconds); a worker that does not answer is left out."""
        stats = await asyncio.gather(*(w.stats() for w in self.executor.workers), return_exceptions=True)
        return {w.name: s for w, s in zip(self.executor.workers, stats) if isinstance(s, dict)}

    async def run(self) -> dict:
        before = await self._worker_stats()
        written = self.results.written
        if written.torn_bytes or written.unreadable:
            self.log.warning("output_repaired", torn_bytes=written.torn_bytes, unreadable_lines=written.unreadable)
        limit = asyncio.Semaphore(len(self.executor.workers) * self.settings.max_in_flight_per_worker)
        first_line: dict[str, int] = {}  # id key → the line that holds it
        running: set[asyncio.Task] = set()
        try:
            for line, text in read_lines(self.input_path):
                parsed = parse_line(text, line, self.defaults, self.settings.system)
                duplicate = False
                if parsed.id is not None:
                    key = id_key(parsed.id)
                    if key in first_line:
                        duplicate = True
                        parsed = LineError(line, parsed.id, DuplicateIdError(
                            f"id {parsed.id!r} is already on line {first_line[key]}; give each line its own id",
                            field="id"))
                    else:
                        first_line[key] = line
                if written.done(line, parsed.id, duplicate):
                    self.tally.skipped += 1
                    self.progress.advance()
                    continue
                if isinstance(parsed, LineError):
                    self._fail(line, parsed.id, parsed.error)
                    continue
                await limit.acquire()
                task = asyncio.ensure_future(self._run_item(parsed))
                running.add(task)
                task.add_done_callback(lambda t: (running.discard(t), limit.release()))
            await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()
            self.progress.close()
            self.results.close()
        after = await self._worker_stats()
        for name, end in after.items():  # a restarted worker counts from zero again
            start = before.get(name, {})
            forwards = end.get("forwards", 0) - start.get("forwards", 0)
            busy = end.get("busy_seconds", 0.0) - start.get("busy_seconds", 0.0)
            entry = self.tally.per_worker[name]
            entry["forwards"] = forwards if forwards >= 0 else end.get("forwards", 0)
            entry["busy_seconds"] = round(busy if busy >= 0 else end.get("busy_seconds", 0.0), 3)
        return self.tally.as_dict(input=self.input_path, output=self.results.path,
                                  workers=len(self.executor.workers),
                                  max_in_flight_per_worker=self.settings.max_in_flight_per_worker)

    async def _run_item(self, item: Item) -> None:
        try:
            request = self._encoded(item.request)
        except PlandiffError as err:
            return self._fail(item.line, item.id, err)
        for attempt in range(self.settings.item_retries + 1):
            started = time.perf_counter()
            try:
                done = await self.orchestrator.complete(request)
            except WorkerLost as err:
                if attempt == self.settings.item_retries:
                    return self._fail(item.line, item.id, err)
                self.tally.retried += 1
                self.log.warning("item_redone", id=item.id, line=item.line, error=str(err)[:300])
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the item's own failure (a plan the grammar refuses, …): recorded
                return self._fail(item.line, item.id, err)
            seconds = time.perf_counter() - started
            usage = dataclasses.asdict(done.usage)
            self.results.append({"id": item.id, "line": item.line, "text": done.text,
                                 "finish_reason": done.finish_reason, "usage": usage})
            self.tally.success(done.worker, seconds, done.usage.generated_tokens)
            self.progress.advance()
            return

    def _encoded(self, request: GenerateRequest) -> GenerateRequest:
        """The request with its prompt as token ids, checked against the prompt bound here, before a
        worker is busied with it."""
        ids = request.encode(self.codec)
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens; at most {self.max_prompt_tokens} fit "
                                     "(max_prompt_tokens, or the model's context less one)")
        return GenerateRequest(request_id=request.request_id, prompt_ids=ids, plan=request.plan,
                               options=request.options)

    def _fail(self, line: int, id, err: BaseException) -> None:
        record = error_record(line, id, err)
        self.results.append(record)
        self.tally.failure(record["error"]["type"])
        self.progress.advance()


def summary_path(output: str) -> Path:
    """results.jsonl → results.summary.json, beside it."""
    path = Path(output)
    return path.with_name(path.name.removesuffix(".jsonl") + ".summary.json")


def run_batch(settings: BatchSettings, input_path: str, output_path: str, summary: str | None = None,
              tty: bool | None = None) -> dict:
    """Run a whole batch (start the workers, run, stop them); its summary, also written as JSON."""
    if not Path(input_path).is_file():
        raise InvalidRequestError(f"input file {input_path} does not exist", field="input")
    if not Path(output_path).resolve().parent.is_dir():
        raise InvalidRequestError(f"the output's folder {Path(output_path).parent} does not exist", field="output")
    if Path(output_path).resolve() == Path(input_path).resolve():
        raise InvalidRequestError("the output must not be the input file", field="output")
    codec = TextCodec.load(settings.model)
    executor = build_executor(settings)

    async def main() -> dict:
        await executor.wait_ready()  # the models load before the clock starts
        return await Batch(settings, executor, codec, input_path, output_path, tty).run()

    try:
        result = asyncio.run(main())
    finally:
        executor.shutdown()
    path = Path(summary) if summary else summary_path(output_path)
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["summary"] = str(path)
    return result
