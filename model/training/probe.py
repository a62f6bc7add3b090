"""The masked-number probe: what a checkpoint knows of the numbers in gold sub-question answers,
apart from the order it decodes in.

Each number of an answer (a run of digit tokens) is hidden on its own, the rest of the gold answer
given. A planned model predicts all its digits at once, as masked span slots read through the logit
shift; an autoregressive model predicts each digit from the gold tokens before it. A number counts
as known when every digit is the model's most likely token. A model that cannot bind a table's
values to their names fails here; one that can but decodes a wrong slot first passes
(docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import mask_rows
from ..runtime import ModelRuntime
from .objective import IGNORE, Sequence
from .recipe import encode_examples
from .synthetic import Example
from .trainer import TrainConfig


@dataclass
class NumberProbe:
    answers: int
    numbers: int
    known: int

    @property
    def accuracy(self) -> float:
        return self.known / self.numbers if self.numbers else 0.0


def probe_numbers(runtime: ModelRuntime, examples: list[Example], mode: str) -> NumberProbe:
    """Probe the sub-question answers among `examples`, laid out as `mode` trains them (they have
    no sentence after `<sync/>`, so the recipe's `join` does not matter)."""
    chosen = [e for e in examples if e.family == "subquestions"]
    digits = {i for token, i in runtime.tokenizer.get_vocab().items() if len(token) == 1 and token.isdigit()}
    known = numbers = 0
    with torch.inference_mode():
        for sequence in encode_examples(chosen, TrainConfig(mode=mode), runtime.tokenizer, "span"):
            runs = _numbers(sequence, digits, mode)
            numbers += len(runs)
            mask = mask_rows(sequence.layout, torch.arange(len(sequence.tokens)), len(sequence.tokens))
            if mode == "autoregressive":  # one causal forward scores every digit given the gold prefix
                predicted = _logits(runtime, sequence.tokens, mask).argmax(-1)
                known += sum(all(predicted[p - 1] == sequence.tokens[p] for p in run) for run in runs)
                continue
            for run in runs:
                hidden = list(sequence.tokens)
                for p in run:
                    hidden[p] = runtime.tags.mask
                predicted = _logits(runtime, hidden, mask).argmax(-1)
                known += all(predicted[p - 1] == sequence.tokens[p] for p in run)
    return NumberProbe(len(chosen), numbers, known)


def _numbers(sequence: Sequence, digits: set[int], mode: str) -> list[list[int]]:
    """Runs of digit positions in the answer: span slots for a planned model (the promises' digits
    are plan tokens, not answer), every predicted token for an autoregressive one."""
    if mode == "planned":
        answer = set(sequence.slots)
    elif mode == "autoregressive":
        answer = {p + 1 for p, label in enumerate(sequence.ar_labels) if label != IGNORE}
    else:
        raise ValueError(f"the probe reads planned and autoregressive models, not {mode!r}")
    runs: list[list[int]] = []
    for p, token in enumerate(sequence.tokens):
        if p in answer and token in digits:
            if runs and runs[-1][-1] == p - 1:
                runs[-1].append(p)
            else:
                runs.append([p])
    return runs


def _logits(runtime: ModelRuntime, tokens: list[int], mask: torch.Tensor) -> torch.Tensor:
    device = next(runtime.network.parameters()).device
    return runtime.network.forward_train(torch.tensor([tokens], device=device), mask[None].to(device))[0]
