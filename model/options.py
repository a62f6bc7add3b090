"""Per-request generation options: the one declaration of every generation knob.

The HTTP body, the CLI flags, the YAML presets and the environment are all read from these fields
(orchestrator/settings.py, orchestrator/server/, orchestrator/cli.py), and a bad value raises
`InvalidRequestError` naming the field, wherever it came from, before any work starts. Torch-free:
the control plane validates requests without loading the model's stack.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import InvalidRequestError

Mode = Literal["planned", "autoregressive", "diffusion"]
Order = Literal["entropy", "confidence", "margin", "threshold", "adaptive"]
KVRefresh = Literal["exact", "reference"]
OverflowPolicy = Literal["accept", "retry", "replan"]

# Python callers and JSON bodies are validated strictly ("no" is not a bool, "2" not a number);
# settings read from text (environment, CLI) relax this in their own model.
STRICT = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=False)


def invalid(err: ValidationError) -> InvalidRequestError:
    """One typed error for a pydantic validation failure: every problem, each naming its field (a
    nested model's own InvalidRequestError keeps its inner field: `messages.0.role`)."""
    problems, fields = [], []
    for e in err.errors(include_url=False):
        loc = ".".join(str(part) for part in e["loc"])
        inner = e.get("ctx", {}).get("error")
        if isinstance(inner, InvalidRequestError) and inner.field and not loc.endswith(inner.field):
            prefix = f"{loc}." if loc else ""
            problems += [prefix + part for part in str(inner).split("; ")]
            fields.append(prefix + inner.field)
            continue
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {message}" if loc else message)
        fields.append(loc or None)
    return InvalidRequestError("; ".join(problems), field=fields[0] if fields else None)


class Validated(BaseModel):
    """A pydantic model whose construction raises `InvalidRequestError` instead of ValidationError."""

    model_config = STRICT

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise invalid(err) from None

    @classmethod
    def parse(cls, data: Any, strict: bool | None = None):
        """Validate a mapping (a JSON body, a YAML preset) into the model, or raise InvalidRequestError."""
        if not isinstance(data, dict):
            raise InvalidRequestError(f"expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data, strict=strict)
        except ValidationError as err:
            raise invalid(err) from None


class Sampling(Validated):
    """How a token is drawn from logits. Defaults are the reference profile at greedy decoding.

    Every official script runs with top_k 50 (reference Errata 1): it does not change an argmax, but
    it changes the probabilities behind the unmasking order. `top_k=None` turns it off.
    """

    temperature: float = Field(0.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(50, ge=1)


class GenerationOptions(Validated):
    """What one request asks for. Sampling knobs (temperature, top_p, top_k) are flat fields, as in
    the OpenAI body; `options.sampling` groups them for the unmasking rules."""

    mode: Mode = Field("planned", description=(
        "planned (plan → spans in parallel → sync → …), or the paper's baselines: autoregressive (plain "
        "left-to-right text, tags banned) and diffusion (Dream-style: the answer as one masked region)"))
    max_new_tokens: int = Field(512, ge=1, description="bound on tokens after the prompt, tags and pads included")
    steps_ratio: float = Field(1.0, gt=0, le=1, description=(
        "denoising steps per round = int(longest span × steps_ratio), at least 1"))
    order: Order = Field("entropy", description=(
        "which masked slot a span commits first: entropy (reference default), confidence, margin, "
        "threshold (the reference's: at most the schedule's count per step, each but the best needing "
        "confidence ≥ τ), adaptive (ours: the schedule's count plus every slot with confidence ≥ τ)"))
    threshold: float | None = Field(None, gt=0, le=1, validate_default=True, description="confidence threshold τ (orders threshold, adaptive)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus filtering; none = off")
    top_k: int | None = Field(50, ge=1, description="top-k filtering (50, as the reference); none = off")
    dense: bool | None = Field(None, description=(
        "spans of a round form one bidirectional region; none = the checkpoint's disable_block_sparsity"))
    length_scale: float | None = Field(None, gt=0, le=1000, description=(
        "slots per promised unit; none = the tag profile's unit (×10)"))
    max_span_length: int = Field(256, ge=1, description="a longer promise is clamped to it (and flagged)")
    kv_refresh: KVRefresh = Field("exact", description=(
        "exact: a finished span's keys are recomputed with its final tokens; reference: keep the stale "
        "keys as the official cached code does"))
    kv_cache: bool = Field(True, description="false recomputes the whole sequence every forward (verification)")
    on_malformed_plan: Literal["autoregressive", "raise"] = Field("autoregressive", description=(
        "unconstrained planning only: finish a malformed plan left to right, or raise MalformedPlanError"))
    constrained: bool = Field(True, description=(
        "mask logits so that the planner can only write a plan that parses and a slot never holds a tag"))
    max_plan_tokens: int = Field(256, ge=1, description="planner tokens per round; a longer round ends the answer")
    max_spans: int = Field(16, ge=1, description="spans per round")
    max_topic_tokens: int = Field(12, ge=1, description=(
        "tokens of a promise's topic (its length digits aside); then only its length may follow"))
    max_rounds: int = Field(8, ge=1, description="planning rounds per request")
    on_overflow: OverflowPolicy = Field("accept", description=(
        "a span whose content fills every slot probably did not fit: accept it (the reference), retry it "
        "with overflow_growth × the slots, or replan: retry, then plan the round again promising more"))
    max_overflow_retries: int = Field(1, ge=0, le=8, description="retries (and re-plans) per span")
    overflow_growth: float = Field(2.0, gt=1, le=16, description="slot growth factor of a retry or re-plan")
    seed: int | None = Field(None, ge=0, description="seeds this request's sampler (temperature > 0)")

    @field_validator("threshold")
    @classmethod
    def _threshold_for_order(cls, threshold: float | None, info: ValidationInfo) -> float | None:
        order = info.data.get("order")
        if order in ("threshold", "adaptive") and threshold is None:
            raise ValueError(f"order {order!r} needs a threshold τ in (0, 1]")
        return threshold

    @cached_property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    def replace(self, **changes: Any) -> GenerationOptions:
        """A copy with `changes`, validated."""
        return GenerationOptions(**{**self.model_dump(), **changes})
