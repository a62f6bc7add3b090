"""The OpenAI wire format of /v1/completions and /v1/chat/completions: request bodies in, response
bodies and stream chunks out.

A body holds OpenAI's fields, plus plandiff's as extra top-level fields (what the `openai` client sends
with `extra_body`): every `GenerationOptions` field (mode, steps_ratio, order, threshold, dense,
length_scale, on_overflow, …: read from its declaration, never restated here), `plan` (a forced plan),
`plandiff_events` (plan and span events in the stream) and, for completions, `system`.

Every bad field is an `APIError` naming it (`param`): an unknown field; an OpenAI field we do not
support given a value other than its default (n > 1, logprobs, echo, best_of, stop, tools, …); a wrong
type or range (the knobs' own validation, which names the field).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from plandiff.model.codec import check_text
from plandiff.model.errors import InvalidRequestError
from plandiff.model.options import GenerationOptions

from ..events import Event

from .errors import APIError, invalid

Kind = Literal["completion", "chat"]
OPTION_FIELDS = frozenset(GenerationOptions.model_fields)
# The orchestrator's event kinds but text, which travels in the OpenAI chunks themselves.
EVENT_KINDS = tuple(cls.model_fields["kind"].default for cls in typing.get_args(Event)
                    if cls.model_fields["kind"].default != "text")
FINISH = {"end": "stop", "length": "length"}
MAX_SEED = 2**63 - 1  # OpenAI's seed is an int64

# OpenAI fields plandiff does not implement: accepted only at a value that asks for nothing (or null).
_NOTHING = object()
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "one choice per request: send several requests, they run concurrently"),
    "best_of": ((1,), "one choice per request: send several requests, they run concurrently"),
    "echo": ((False,), "the prompt is not echoed"),
    "logprobs": ((False,), "log-probabilities are not returned"),
    "top_logprobs": ((0,), "log-probabilities are not returned"),
    "frequency_penalty": ((0,), "penalties are not supported"),
    "presence_penalty": ((0,), "penalties are not supported"),
    "logit_bias": (({},), "logit_bias is not supported"),
    "stop": (("", []), "stop sequences are not supported (a planned answer is not written left to right)"),
    "suffix": (("",), "suffix (insertion) is not supported"),
    "tools": (([],), "tools are not supported"),
    "tool_choice": (("none", "auto"), "tools are not supported"),
    "functions": (([],), "functions are not supported"),
    "function_call": (("none", "auto"), "functions are not supported"),
    "parallel_tool_calls": ((True, False), "tools are not supported"),
    "response_format": (({"type": "text"},), "only text responses are supported"),
    "modalities": ((["text"],), "only text is supported"),
    "audio": ((), "audio is not supported"),
    "prediction": ((), "predicted outputs are not supported"),
    "reasoning_effort": ((), "reasoning_effort is not supported"),
    "web_search_options": ((), "web search is not supported"),
    "verbosity": ((), "verbosity is not supported"),
    "service_tier": (("auto", "default"), "service tiers are not supported"),
    "store": ((False,), "responses are not stored"),
    "metadata": (({},), "responses are not stored, so metadata has nowhere to go"),
}
COMPLETION_UNSUPPORTED = {"n", "best_of", "echo", "logprobs", "frequency_penalty", "presence_penalty", "logit_bias",
                          "stop", "suffix"}
CHAT_UNSUPPORTED = set(UNSUPPORTED) - {"best_of", "echo", "suffix"}
IGNORED = {"user", "prompt_cache_key", "safety_identifier"}  # hints for the caller's own bookkeeping
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "plan", "plandiff_events"}
FIELDS: dict[Kind, frozenset[str]] = {
    "completion": frozenset(COMMON | {"prompt", "system"} | COMPLETION_UNSUPPORTED | IGNORED | OPTION_FIELDS),
    "chat": frozenset(COMMON | {"messages", "max_completion_tokens"} | CHAT_UNSUPPORTED | IGNORED | OPTION_FIELDS),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class ParsedBody:
    """A validated body: what to generate from, with which options, and how to answer."""

    kind: Kind
    prompt_text: str | None  # completions: user text, chat-wrapped with `system`
    prompt_ids: list[int] | None  # completions: token ids as given
    messages: list[tuple[str, str]] | None  # chat: (role, content)
    system: str | None
    plan: str | None
    options: GenerationOptions
    stream: bool
    include_usage: bool
    events: frozenset[str] | None  # plandiff event kinds to stream; None = none
    max_tokens_field: str  # the body's name for the length bound (max_tokens, max_completion_tokens, …)

    @property
    def prompt_field(self) -> str:
        return "messages" if self.kind == "chat" else "prompt"


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object; NaN, Infinity and numbers too large for a float are refused."""

    def no_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is out of range")
        return value

    try:
        data = json.loads(raw, parse_constant=no_constant, parse_float=finite)
    except RecursionError:
        raise invalid("the body is nested too deeply", None, "invalid_json") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid(f"the body is not valid JSON: {str(err)[:200]}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(f"the body must be a JSON object, not {type(data).__name__}", None, "invalid_json")
    return data


def _is_nothing(value: Any, defaults: tuple[Any, ...]) -> bool:
    if value is None:
        return True
    for d in defaults:
        if isinstance(d, bool) or isinstance(value, bool):
            if type(value) is type(d) and value == d:
                return True
        elif isinstance(d, (int, float)) and isinstance(value, (int, float)):
            if value == d:
                return True
        elif value == d:
            return True
    return False


def _strict_type(body: dict, name: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise invalid(f"{name} must be {what}, not {json.dumps(value)[:60]}", name, "invalid_type")
    return value


def parse_body(kind: Kind, body: dict, served_model: str, defaults: GenerationOptions, max_tokens_limit: int,
               default_system: str | None) -> ParsedBody:
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        name = unknown[0]
        hint = " (plan and span events: plandiff_events)" if "event" in name else ""
        raise APIError(400, f"unknown field {name!r}{hint}", name, "unknown_parameter")
    for name in sorted(set(body) & set(UNSUPPORTED)):
        allowed, why = UNSUPPORTED[name]
        if not _is_nothing(body[name], allowed):
            raise APIError(400, f"{name}={json.dumps(body[name])[:60]} is not supported: {why}", name,
                           "unsupported_parameter")
    for name in sorted(set(body) & IGNORED):
        _strict_type(body, name, (str,), "a string")

    model = _strict_type(body, "model", (str,), "a string")
    if model is not None and model != served_model:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {served_model!r}", "model",
                       "model_not_found")
    stream = bool(_strict_type(body, "stream", (bool,), "true or false"))
    include_usage = _stream_options(body, stream)
    events = _events(body)
    plan = _strict_type(body, "plan", (str,), "a string (a plan in the model's tags)")
    if plan is not None:
        check_text(plan, "plan")
        if not plan.strip():
            raise invalid("plan is empty: leave it out to let the model plan", "plan")

    # The length bound: OpenAI's names, or the knob's own; one value.
    names = [n for n in ("max_tokens", "max_completion_tokens", "max_new_tokens") if body.get(n) is not None]
    given: dict[str, Any] = {n: body[n] for n in OPTION_FIELDS if n in body and n != "max_new_tokens"}
    for name in ("temperature", "top_p", "seed"):  # OpenAI's fields: null means "the default"
        if given.get(name, 0) is None:
            del given[name]
    bound_field = "max_tokens"
    if names:
        values = {n: _strict_type(body, n, (int,), "an integer") for n in names}
        if len(set(values.values())) > 1:
            raise invalid(f"{' and '.join(names)} disagree; give one of them", names[1])
        bound_field, bound = names[0], values[names[0]]
        if bound < 1:
            raise invalid(f"{bound_field} must be at least 1", bound_field)
        if bound > max_tokens_limit:
            raise invalid(f"{bound_field} is {bound}; this server allows at most {max_tokens_limit}", bound_field,
                          "max_tokens_too_large")
        given["max_new_tokens"] = bound
    seed = given.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed > MAX_SEED:
        raise invalid(f"seed must be at most {MAX_SEED}", "seed")
    try:
        # The constructor, not GenerationOptions.parse: parse loses the field's name (pydantic runs
        # the overridden __init__ inside model_validate and reports its error at the top level).
        options = GenerationOptions(**{**defaults.model_dump(), **given})
    except InvalidRequestError as err:
        raise invalid(str(err), err.field) from None
    if options.max_new_tokens > max_tokens_limit:  # a server default above the limit
        options = options.replace(max_new_tokens=max_tokens_limit)

    prompt_text = prompt_ids = messages = None
    system = default_system
    if kind == "completion":
        prompt_text, prompt_ids = _prompt(body)
        if "system" in body:
            system = _strict_type(body, "system", (str,), "a string")
            if system is not None:
                check_text(system, "system")
    else:
        messages = _messages(body)
    return ParsedBody(kind, prompt_text, prompt_ids, messages, system, plan, options, stream, include_usage, events,
                      bound_field)


def _stream_options(body: dict, stream: bool) -> bool:
    value = body.get("stream_options")
    if value is None:
        return False
    if not isinstance(value, dict):
        raise invalid("stream_options must be an object", "stream_options", "invalid_type")
    if not stream:
        raise invalid("stream_options is only allowed with stream: true", "stream_options")
    for key, item in value.items():
        if key not in ("include_usage", "continuous_usage_stats", "include_obfuscation"):
            raise APIError(400, f"unknown field stream_options.{key}", f"stream_options.{key}", "unknown_parameter")
        if item is not None and not isinstance(item, bool):
            raise invalid(f"stream_options.{key} must be true or false", f"stream_options.{key}", "invalid_type")
    if value.get("continuous_usage_stats"):
        raise APIError(400, "continuous_usage_stats is not supported (the usage comes at the end)",
                       "stream_options.continuous_usage_stats", "unsupported_parameter")
    return bool(value.get("include_usage"))


def _events(body: dict) -> frozenset[str] | None:
    value = body.get("plandiff_events")
    if value is None or value is False:
        return None
    if value is True:
        return frozenset(EVENT_KINDS)
    if not isinstance(value, list):
        raise invalid(f"plandiff_events must be true, false or a list of event kinds ({', '.join(EVENT_KINDS)})",
                      "plandiff_events", "invalid_type")
    for i, kind in enumerate(value):
        if kind not in EVENT_KINDS:
            raise invalid(f"plandiff_events[{i}] is {json.dumps(kind)[:40]}, not one of {', '.join(EVENT_KINDS)}",
                          f"plandiff_events.{i}")
    return frozenset(value) | {"done"}


def _prompt(body: dict) -> tuple[str | None, list[int] | None]:
    value = body.get("prompt")
    if value is None:
        raise invalid("prompt is required", "prompt", "missing_field")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        check_text(value, "prompt")
        if not value:
            raise invalid("prompt is empty", "prompt")
        return value, None
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return None, list(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list)) for p in value):
        raise invalid("one prompt per request: send several requests, they run concurrently", "prompt")
    if value == []:
        raise invalid("prompt is empty", "prompt")
    raise invalid("prompt must be a string or a list of token ids", "prompt", "invalid_type")


def _messages(body: dict) -> list[tuple[str, str]]:
    value = body.get("messages")
    if value is None:
        raise invalid("messages is required", "messages", "missing_field")
    if not isinstance(value, list):
        raise invalid("messages must be a list of {role, content} objects", "messages", "invalid_type")
    if not value:
        raise invalid("messages is empty", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise invalid(f"{where} must be an object with role and content", where, "invalid_type")
        for key in m:
            if key not in ("role", "content", "name"):
                raise APIError(400, f"{where}.{key} is not supported (text messages only)", f"{where}.{key}",
                               "unsupported_parameter")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(ROLES)}, not {json.dumps(role)[:40]}",
                          f"{where}.role")
        if m.get("name") is not None and not isinstance(m["name"], str):
            raise invalid(f"{where}.name must be a string", f"{where}.name", "invalid_type")
        out.append((ROLES[role], _content(m.get("content"), f"{where}.content")))
    if out[-1][0] != "user":
        raise invalid("the last message must be the user's", f"messages.{len(out) - 1}.role")
    return out


def _content(value: Any, where: str) -> str:
    if isinstance(value, list):  # content parts: text only
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else None
                raise APIError(400, f"{where}.{j} must be a text part ({{type: text, text: …}}), not "
                                    f"{json.dumps(kind)[:40]}", f"{where}.{j}.type", "unsupported_parameter")
            texts.append(part["text"])
        value = "".join(texts)
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string or a list of text parts", where, "invalid_type")
    if len(value) > 1_000_000:
        raise invalid(f"{where} is longer than 1,000,000 characters", where)
    check_text(value, where)
    return value


# ------------------------------------------------------------------ out


def usage_body(usage) -> dict:
    """OpenAI's three counts, then every field of the orchestrator's Usage (critical_path: sequential
    model forwards; retries, replans, failovers, per-phase seconds, …) by its own name."""
    fields = usage.model_dump() if hasattr(usage, "model_dump") else dataclasses.asdict(usage)
    completion = fields.get("generated_tokens", 0)
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": completion,
            "total_tokens": usage.prompt_tokens + completion, **fields}


class Shapes:
    """Builds one request's response bodies and chunks (same id, created, model throughout)."""

    def __init__(self, kind: Kind, request_id: str, created: int, model: str):
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        self.created = created
        self.model = model

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def response(self, text: str, finish: str, usage: dict, extra: dict | None = None) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            body = {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            body = {**self._head("text_completion"), "choices": [choice], "usage": usage}
        if extra:
            body["plandiff"] = extra
        return body

    def _chunk(self, choices: list, **more) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": choices, **more}

    def first(self) -> dict | None:
        """Chat streams open with the assistant's role."""
        if self.kind != "chat":
            return None
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def text(self, text: str, finish: str | None = None) -> dict:
        if self.kind == "chat":
            delta = {"content": text} if text else {}
            return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        return self._chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}])

    def usage(self, usage: dict) -> dict:
        return self._chunk([], usage=usage)

    def plandiff(self, event: dict) -> dict:
        """A plandiff event as a chunk with no choices (an OpenAI client passes it through, as it does
        the usage chunk); sent under `event: plandiff` for SSE clients that dispatch on event names."""
        return self._chunk([], plandiff=event)
