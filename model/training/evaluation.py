"""Scoring a checkpoint on the synthetic task's test split: accuracy (every fact checked), plan
validity, critical path (sequential forwards) and wall time, for one set of generation options."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from ..options import GenerationOptions
from ..runtime import ModelRuntime
from .synthetic import Example, score


@dataclass
class Evaluation:
    examples: int
    accuracy: float
    by_family: dict[str, float]
    valid_plans: float  # answers that ended normally with no malformed-plan fallback
    critical_path: float  # mean sequential forwards per answer
    denoising: float  # of which denoising steps (the rest: prompt, plan and plain-text tokens)
    seconds: float  # mean wall time per answer


def evaluate(runtime: ModelRuntime, examples: list[Example], options: GenerationOptions,
             progress: Callable[[], None] = lambda: None) -> Evaluation:
    """Generate an answer per example and score it; `progress` is called after each one."""
    correct: dict[str, list[bool]] = {}
    valid, forwards, denoising, seconds = 0, [], [], []
    for example in examples:
        started = time.perf_counter()
        result = runtime.generate(example.prompt, options)
        seconds.append(time.perf_counter() - started)
        correct.setdefault(example.family, []).append(score(example, result.text)["correct"])
        valid += result.fallback is None and result.finish_reason == "end"
        forwards.append(result.usage.forward_passes)
        denoising.append(sum(result.usage.steps_per_round))
        progress()
    total = sum(sum(v) for v in correct.values())
    return Evaluation(
        examples=len(examples), accuracy=total / max(1, len(examples)),
        by_family={family: sum(v) / len(v) for family, v in sorted(correct.items())},
        valid_plans=valid / max(1, len(examples)), critical_path=statistics.fmean(forwards),
        denoising=statistics.fmean(denoising),
        seconds=statistics.fmean(seconds),
    )


def sweep(runtime: ModelRuntime, examples: list[Example], mode: str, steps_ratios: list[float], order: str,
          thresholds: list[float] | None, max_new_tokens: int,
          progress: Callable[[], None] = lambda: None) -> Iterator[tuple[dict, Evaluation]]:
    """One evaluation per steps_ratio × τ: (the options that vary, the evaluation)."""
    for ratio in steps_ratios:
        for tau in thresholds or [None]:
            shown = {"steps_ratio": ratio, "order": order} | ({"threshold": tau} if tau is not None else {})
            options = GenerationOptions(mode=mode, max_new_tokens=max_new_tokens, **shown)
            yield shown, evaluate(runtime, examples, options, progress)
