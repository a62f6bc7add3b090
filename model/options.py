"""Per-request generation options, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import InvalidRequestError
from .unmasking import Order, Sampling

Mode = Literal["planned", "autoregressive", "diffusion"]
KVRefresh = Literal["exact", "reference"]


@dataclass(frozen=True)
class GenerationOptions:
    """What one request asks for.

    mode:            "planned" (plan → spans in parallel → sync → …), or the paper's baselines:
                     "autoregressive" (plain left-to-right text, tags banned) and "diffusion"
                     (Dream-style: the whole answer as one masked region, prompt included).
    max_new_tokens:  bound on tokens after the prompt, tags and pads included.
    steps_ratio:     denoising steps per round = int(longest span × steps_ratio), at least 1.
    order:           which masked slot a span commits first: "entropy" (reference default),
                     "confidence", "margin", "threshold" (the reference's: at most the schedule's
                     count per step, each but the best needing confidence ≥ τ), or "adaptive"
                     (ours: the schedule's count, plus every other slot with confidence ≥ τ, so
                     easy spans finish in fewer steps; steps_ratio stays the worst case).
    dense:           spans of a round form one bidirectional region; None = the checkpoint's
                     `disable_block_sparsity`.
    length_scale:    slots per promised unit; None = the tag profile's unit (×10).
    max_span_length: a promised span longer than this is clamped to it (and flagged).
    kv_refresh:      "exact": a finished span's keys are recomputed with its final tokens
                     (the uncached reference's semantics); "reference": keep the stale keys as
                     the official cached code does (reference §4).
    kv_cache:        False recomputes the whole sequence every forward (slow; for verification).
    on_malformed_plan: "autoregressive" keeps the bad plan as text and finishes the answer
                     left to right with tags banned; "raise" raises MalformedPlanError.
    constrained:     mask logits so that the planner can only write a plan that parses
                     (plan_constraint.py) and a span slot never holds a tag ([PAD] aside); off, a
                     malformed plan goes to `on_malformed_plan` and spans may hold tags, as in the
                     reference.
    max_plan_tokens: planner tokens per round; a longer round ends the answer (finish "length").
    max_spans:       spans per round (constrained planning stops promising more).
    max_rounds:      planning rounds per request (constrained planning bans <sync/> in the last).
    on_overflow:     a span whose content fills every slot (no [PAD] at its end) probably did not
                     fit: "accept" it (the reference's behaviour), or "retry" it with
                     `overflow_growth` × the slots, up to `max_overflow_retries` times and
                     `max_span_length`, keeping the round's other spans.
    seed:            seeds this request's sampler (temperature > 0).
    """

    mode: Mode = "planned"
    max_new_tokens: int = 512
    steps_ratio: float = 1.0
    order: Order = "entropy"
    threshold: float | None = None
    sampling: Sampling = field(default_factory=Sampling)
    dense: bool | None = None
    length_scale: float | None = None
    max_span_length: int = 256
    kv_refresh: KVRefresh = "exact"
    kv_cache: bool = True
    on_malformed_plan: Literal["autoregressive", "raise"] = "autoregressive"
    constrained: bool = True
    max_plan_tokens: int = 256
    max_spans: int = 16
    max_rounds: int = 8
    on_overflow: Literal["accept", "retry"] = "accept"
    max_overflow_retries: int = 1
    overflow_growth: float = 2.0
    seed: int | None = None

    def __post_init__(self) -> None:
        def bad(message: str) -> None:
            raise InvalidRequestError(message)

        if self.mode not in ("planned", "autoregressive", "diffusion"):
            bad(f"mode must be planned, autoregressive or diffusion, got {self.mode!r}")
        if self.max_new_tokens < 1:
            bad(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.steps_ratio <= 1:
            bad(f"steps_ratio must be in (0, 1], got {self.steps_ratio}")
        if self.order not in ("entropy", "confidence", "margin", "threshold", "adaptive"):
            bad(f"order must be entropy, confidence, margin, threshold or adaptive, got {self.order!r}")
        if self.order in ("threshold", "adaptive") and self.threshold is None:
            bad(f"order {self.order!r} needs a threshold τ in (0, 1]")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            bad(f"threshold must be in (0, 1], got {self.threshold}")
        if self.length_scale is not None and self.length_scale <= 0:
            bad(f"length_scale must be > 0, got {self.length_scale}")
        if self.max_span_length < 1:
            bad(f"max_span_length must be >= 1, got {self.max_span_length}")
        if self.kv_refresh not in ("exact", "reference"):
            bad(f"kv_refresh must be exact or reference, got {self.kv_refresh!r}")
        for name in ("max_plan_tokens", "max_spans", "max_rounds"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.on_overflow not in ("accept", "retry"):
            bad(f"on_overflow must be accept or retry, got {self.on_overflow!r}")
        if self.max_overflow_retries < 0:
            bad(f"max_overflow_retries must be >= 0, got {self.max_overflow_retries}")
        if self.overflow_growth <= 1:
            bad(f"overflow_growth must be > 1, got {self.overflow_growth}")
        if self.on_malformed_plan not in ("autoregressive", "raise"):
            bad(f"on_malformed_plan must be autoregressive or raise, got {self.on_malformed_plan!r}")
