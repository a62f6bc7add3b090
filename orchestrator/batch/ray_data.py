"""`PlandiffPredictor`: plandiff inside a Ray Data pipeline, used the way `ray.data.llm` processors
are: a callable class that `Dataset.map_batches` runs on `concurrency` actors, each holding one
engine (its own GPU with `num_gpus=1`).

    ds = ray.data.read_json("prompts.jsonl")
    ds = ds.map_batches(PlandiffPredictor, fn_constructor_kwargs={"model": "/ckpt", "options": {"max_new_tokens": 256}},
                        concurrency=4, num_gpus=1, batch_size=32)
    ds.write_json("out/")

Each row needs `prompt` (text) or `messages` (a list of {role, content}); the batch comes back with
`generated_text`, `finish_reason`, `prompt_tokens`, `generated_tokens`, `critical_path` and `error`
(empty on success, else "Type: message"): a bad row is marked, not fatal to the job. A batch's rows
run concurrently through one in-process orchestrator, so the engine can batch them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from plandiff.model.codec import DEFAULT_SYSTEM
from plandiff.model.errors import InvalidRequestError, PlandiffError
from plandiff.model.options import GenerationOptions

OUTPUT_COLUMNS = ("generated_text", "finish_reason", "prompt_tokens", "generated_tokens", "critical_path", "error")


def _plain(value: Any) -> Any:
    """A Ray Data cell (numpy array, numpy scalar, pyarrow-born dict) as plain Python."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class PlandiffPredictor:
    def __init__(self, model: str | None = None, options: dict | None = None, device: str = "auto",
                 dtype: str | None = None, system: str | None = DEFAULT_SYSTEM, max_in_flight: int = 64):
        """`model`: a checkpoint folder (none: the shipped demo model, with its preset's options);
        `options`: GenerationOptions fields for every row, validated here (a bad one fails the
        actor's start, naming the field, before any row runs)."""
        from plandiff.model.codec import TextCodec

        from ..executors import LocalExecutor
        from ..orchestrator import Orchestrator

        if model is None:
            from ..cli_common import DEMO_MODEL, DEMO_PRESET
            from ..settings import read_yaml

            model = str(DEMO_MODEL)
            preset = read_yaml(DEMO_PRESET)
            options = {**{k: v for k, v in preset.items() if k in GenerationOptions.model_fields}, **(options or {})}
            dtype = dtype or preset.get("dtype")
        self.options = GenerationOptions(**(options or {}))
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.system = system
        self.max_in_flight = max_in_flight
        self.orchestrator = Orchestrator(LocalExecutor(model, dtype=dtype, device=device), TextCodec.load(model))
        self.loop = asyncio.new_event_loop()  # one loop for the actor's life: the worker's state stays on it
        self.calls = 0

    def __call__(self, batch: Any) -> dict:
        rows = self._rows(batch)
        self.calls += 1
        results = self.loop.run_until_complete(self._run(rows))
        out = {k: [_plain(v) for v in values] for k, values in self._columns(batch).items()}
        for name in OUTPUT_COLUMNS:
            out[name] = [r[name] for r in results]
        return out

    async def _run(self, rows: list[dict]) -> list[dict]:
        limit = asyncio.Semaphore(self.max_in_flight)

        async def one(i: int, row: dict) -> dict:
            async with limit:
                return await self._answer(f"rd{id(self)}-{self.calls}-{i}", row)

        return await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))

    async def _answer(self, request_id: str, row: dict) -> dict:
        from ..orchestrator import GenerateRequest

        empty = {"generated_text": None, "finish_reason": None, "prompt_tokens": None, "generated_tokens": None,
                 "critical_path": None}
        try:
            prompt, messages = row.get("prompt"), row.get("messages")
            if prompt is None and messages is None:
                raise InvalidRequestError("the row has no prompt: give a prompt or a messages column", field="prompt")
            if isinstance(messages, str):  # a column written as JSON text
                messages = json.loads(messages)
            request = GenerateRequest(request_id=request_id, prompt=prompt, messages=messages,
                                      system=self.system, options=self.options)
            done = await self.orchestrator.complete(request)
        except (PlandiffError, ValueError) as err:
            return {**empty, "error": f"{type(err).__name__}: {' '.join(str(err).split())[:1000]}"}
        u = done.usage
        return {"generated_text": done.text, "finish_reason": done.finish_reason, "prompt_tokens": u.prompt_tokens,
                "generated_tokens": u.generated_tokens, "critical_path": u.critical_path, "error": ""}

    @staticmethod
    def _columns(batch: Any) -> dict[str, list]:
        if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # a pandas batch
            return {c: list(batch[c]) for c in batch.columns}
        return {k: list(v) for k, v in batch.items()}

    def _rows(self, batch: Any) -> list[dict]:
        columns = self._columns(batch)
        n = len(next(iter(columns.values()), []))
        return [{k: _plain(v[i]) for k, v in columns.items() if k in ("prompt", "messages")} for i in range(n)]
