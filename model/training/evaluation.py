"""Scoring a checkpoint on a split of the synthetic task: accuracy (every fact checked, each in its
own entity's part of the answer), facts right, plans whose spans match the entities, plan validity,
critical path (sequential forwards) and wall time, for one set of generation options."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import torch

from ..options import GenerationOptions
from ..runtime import ModelRuntime
from .synthetic import Example, score


@dataclass
class Evaluation:
    examples: int
    accuracy: float
    by_family: dict[str, float]
    valid_plans: float  # answers that ended normally with no malformed-plan fallback
    facts_right: float  # facts found where they belong (an entity's fact in its own part), of all facts
    spans_match: float | None  # planned answers whose first round has one span per entity (or question)
    critical_path: float  # mean sequential forwards per answer
    denoising: float  # of which denoising steps (the rest: prompt, plan and plain-text tokens)
    seconds: float  # mean wall time per answer


@dataclass
class Answer:
    """One example's answer, scored."""

    family: str
    correct: bool
    valid: bool
    facts_found: int
    facts_total: int
    spans_match: bool | None  # None: no plan to check (autoregressive, or a family with no span)
    forwards: int
    denoising: int
    seconds: float


def answer(runtime: ModelRuntime, example: Example, options: GenerationOptions) -> Answer:
    started = time.perf_counter()
    result = runtime.generate(example.prompt, options)
    seconds = time.perf_counter() - started
    scored = score(example, result.text)
    gold = len(example.rounds[0].spans)
    planned = options.mode == "planned" and gold > 0
    spans = len(result.rounds[0].spans) if result.rounds else 0
    return Answer(example.family, scored["correct"], result.fallback is None and result.finish_reason == "end",
                  scored["facts_found"], scored["facts_total"], spans == gold if planned else None,
                  result.usage.critical_path, sum(result.usage.steps_per_round), seconds)


def summarize(answers: list[Answer]) -> Evaluation:
    families: dict[str, list[bool]] = {}
    for a in answers:
        families.setdefault(a.family, []).append(a.correct)
    n = max(1, len(answers))
    plans = [a.spans_match for a in answers if a.spans_match is not None]
    return Evaluation(
        examples=len(answers), accuracy=sum(a.correct for a in answers) / n,
        by_family={family: sum(v) / len(v) for family, v in sorted(families.items())},
        valid_plans=sum(a.valid for a in answers) / n,
        facts_right=sum(a.facts_found for a in answers) / max(1, sum(a.facts_total for a in answers)),
        spans_match=sum(plans) / len(plans) if plans else None,
        critical_path=statistics.fmean(a.forwards for a in answers),
        denoising=statistics.fmean(a.denoising for a in answers),
        seconds=statistics.fmean(a.seconds for a in answers),
    )


def evaluate(runtime: ModelRuntime, examples: list[Example], options: GenerationOptions,
             progress: Callable[[], None] = lambda: None, pool: Executor | None = None) -> Evaluation:
    """Generate an answer per example and score it; `progress` is called after each one. A `pool`
    from `worker_pool(runtime, n)` answers the examples in n processes (the same answers; the wall
    times then include the processes' contention for the cores)."""
    one = partial(_answer_in_worker, options=options) if pool else partial(answer, runtime, options=options)
    answers = []
    for a in (pool.map(one, examples) if pool else map(one, examples)):
        answers.append(a)
        progress()
    return summarize(answers)


def worker_pool(runtime: ModelRuntime, workers: int) -> ProcessPoolExecutor:
    """Processes forked from this one, each holding `runtime` (shared, copy-on-write) and one thread."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_hold, initargs=(runtime,))


_runtime: ModelRuntime | None = None  # a pool worker's model


def _hold(runtime: ModelRuntime) -> None:
    global _runtime
    _runtime = runtime
    torch.set_num_threads(1)


def _answer_in_worker(example: Example, options: GenerationOptions) -> Answer:
    return answer(_runtime, example, options)


def sweep(runtime: ModelRuntime, examples: list[Example], mode: str, steps_ratios: list[float], order: str,
          thresholds: list[float] | None, max_new_tokens: int,
          progress: Callable[[], None] = lambda: None, pool: Executor | None = None) -> Iterator[tuple[dict, Evaluation]]:
    """One evaluation per steps_ratio × τ: (the options that vary, the evaluation)."""
    for ratio in steps_ratios:
        for tau in thresholds or [None]:
            shown = {"steps_ratio": ratio, "order": order} | ({"threshold": tau} if tau is not None else {})
            options = GenerationOptions(mode=mode, max_new_tokens=max_new_tokens, **shown)
            yield shown, evaluate(runtime, examples, options, progress, pool)
