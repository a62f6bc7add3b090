"""Input lines of a batch: `{"id": …, "prompt": …}` or `{"id": …, "messages": […]}`, with optional
per-line `system`, `plan` and any generation option as a flat field (`"temperature": 0.7`), read by
the one request model (`GenerationOptions`, `GenerateRequest`): a bad value is an
`InvalidRequestError` naming its field, exactly as in a server body.

A line that cannot run becomes an error record (the batch goes on): invalid JSON, no id, an id seen
on an earlier line (reported, never merged), a bad field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

from plandiff.model.errors import InvalidRequestError, PlandiffError
from plandiff.model.options import GenerationOptions

from ..orchestrator import GenerateRequest

OPTION_FIELDS = frozenset(GenerationOptions.model_fields)
LINE_FIELDS = frozenset({"id", "prompt", "messages", "system", "plan"})


class InvalidLineError(InvalidRequestError):
    """A line that is not one JSON object."""


class MissingIdError(InvalidRequestError):
    """A line without an id: its result could not be told apart (nor skipped on a rerun)."""


class DuplicateIdError(InvalidRequestError):
    """An id already given on an earlier line of the input: reported, not merged."""


@dataclass
class Item:
    """One runnable line: its position (1-based line number), the user's id, the request."""

    line: int
    id: Any
    request: GenerateRequest


@dataclass
class LineError:
    """One line that will not run, and why."""

    line: int
    id: Any  # None when the line had none (or was not JSON)
    error: PlandiffError


def id_key(value: Any) -> str:
    """Ids compare by their JSON text: 1 and "1" are two ids."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_line(text: str, line: int, defaults: GenerationOptions, default_system: str | None) -> Item | LineError:
    """One input line (without its newline) → an Item, or the LineError saying why not."""
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as err:
        return LineError(line, None, InvalidLineError(f"line {line} is not valid JSON: {str(err)[:200]}"))
    if not isinstance(data, dict):
        return LineError(line, None, InvalidLineError(f"line {line} must be a JSON object, not {type(data).__name__}"))
    if data.get("id") is None:
        return LineError(line, None, MissingIdError(f"line {line} has no id", field="id"))
    rid = data["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid):
        return LineError(line, None, MissingIdError(f"line {line}: id must be a non-empty string or an integer, "
                                                    f"not {json.dumps(rid)[:60]}", field="id"))
    unknown = sorted(set(data) - LINE_FIELDS - OPTION_FIELDS)
    try:
        if unknown:
            raise InvalidRequestError(f"unknown field {unknown[0]!r} (a line holds id, prompt or messages, "
                                      "system, plan and generation options)", field=unknown[0])
        if data.get("prompt") is None and data.get("messages") is None:
            raise InvalidRequestError(f"line {line} has no prompt: give prompt (text) or messages", field="prompt")
        options = {k: v for k, v in data.items() if k in OPTION_FIELDS}
        # Validated strictly, as a JSON body is: "2" is not a number.
        merged = GenerationOptions(**{**defaults.model_dump(), **options}) if options else defaults
        request = GenerateRequest(
            request_id=f"line-{line}", prompt=data.get("prompt"), messages=data.get("messages"),
            system=data.get("system", default_system), plan=data.get("plan"), options=merged)
    except InvalidRequestError as err:
        return LineError(line, rid, err)
    return Item(line, rid, request)


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, lazily: the input may be larger than memory."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, 1):
            if text.strip():
                yield number, text.rstrip("\n")


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for text in f if text.strip())
