"""The training objective of planned diffusion, and of its autoregressive and diffusion-only twins.

A training sequence is the chat prompt, the annotated answer and the end token. Its attention layout
is the one inference builds (layout.py): prompt and plan causal; each span (tags included)
bidirectional over itself; spans of a round isolated (sparse) or one region (dense); everything
after a ``<sync/>`` sees the spans before it. Each span is padded with ``[PAD]`` to the slots its
promise gives (``N × span_length_unit``), the scaffold inference will build.

Hybrid loss (paper §3; reference §5.3, with its two quirks fixed on purpose):
- plan positions: next-token cross-entropy, skipping whole scaffolds (the last plan token predicts
  ``<sync/>`` or the end token). The reference also divides this term by t; we do not: t is the
  noise level of the spans, and the plan is never noised.
- span slots: each slot is replaced by the mask with probability t ~ U(ε, 1); a masked slot j is
  predicted from the hidden state at j−1 (the logit shift inference uses), weighted by 1/t. The
  reference instead gates the term at p on *input* p being masked while the target is p+1, so it
  trains to copy visible neighbours and never trains the first slot after ``<async>``. Tags are
  never masked (inference never masks them).
loss = mean plan cross-entropy + Σ_masked CE/t ÷ number of slots.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F

from ..layout import CAUSAL, Layout, allowed
from ..plan_parser import PlanParser, PromiseClosed
from ..tags import TagVocabulary

Mode = Literal["planned", "autoregressive", "diffusion"]
EPS = 1e-3
IGNORE = -100


@dataclass
class Sequence:
    """One training sequence: tokens, their layout, and what is learned where."""

    tokens: list[int]
    layout: Layout
    ar_labels: list[int]  # per position: the next AR token it predicts, or IGNORE
    slots: list[int]  # positions that may be masked and predicted by diffusion


def planned_sequence(prompt: list[int], answer: list[int], end: int, tags: TagVocabulary,
                     dense: bool = False) -> Sequence:
    """Lay out prompt + annotated answer + end token for the hybrid objective."""
    parser = PlanParser(tags)
    lengths: list[int] = []  # slots promised, in order, for the spans of the current round
    tokens, region, epoch = list(prompt), [CAUSAL] * len(prompt), [0] * len(prompt)
    slots: list[int] = []
    current_epoch, next_region, span, dense_region = 0, 0, 0, None
    i = 0
    while i < len(answer):
        token = answer[i]
        if token == tags.span_open:
            close = answer.index(tags.span_close, i)
            content = answer[i + 1:close]
            size = lengths[span] if span < len(lengths) else len(content)
            if len(content) > size:
                raise ValueError(f"span {span} holds {len(content)} tokens; its promise gives {size} slots")
            if dense:
                dense_region = next_region if dense_region is None else dense_region
                r = dense_region
            else:
                r = next_region
            next_region += 1
            block = [tags.span_open, *content, *[tags.pad] * (size - len(content)), tags.span_close]
            slots += list(range(len(tokens) + 1, len(tokens) + 1 + size))
            tokens += block
            region += [r] * len(block)
            epoch += [current_epoch] * len(block)
            span += 1
            i = close + 1
            continue
        if token == tags.sync:
            current_epoch += 1
            lengths, span, dense_region = [], 0, None
            parser.reset()
        else:
            event = parser.feed(token)
            if isinstance(event, PromiseClosed):
                lengths.append(event.number * tags.span_length_unit)
        tokens.append(token)
        region.append(CAUSAL)
        epoch.append(current_epoch)
        i += 1
    tokens.append(end)
    region.append(CAUSAL)
    epoch.append(current_epoch)
    layout = Layout(region, epoch)
    causal = [p for p, r in enumerate(region) if r == CAUSAL]
    ar_labels = [IGNORE] * len(tokens)
    for p, q in zip(causal, causal[1:]):
        if q >= len(prompt):
            ar_labels[p] = tokens[q]
    return Sequence(tokens, layout, ar_labels, slots)


def autoregressive_sequence(prompt: list[int], answer: list[int], end: int) -> Sequence:
    tokens = [*prompt, *answer, end]
    labels = [IGNORE] * len(tokens)
    for p in range(len(prompt) - 1, len(tokens) - 1):
        labels[p] = tokens[p + 1]
    return Sequence(tokens, Layout([CAUSAL] * len(tokens), [0] * len(tokens)), labels, [])


def diffusion_sequence(prompt: list[int], answer: list[int], end: int, pad: int, length: int) -> Sequence:
    """Dream-style: prompt and answer form one bidirectional region; the answer (its end token
    and padding included, up to `length` tokens) is what gets masked."""
    body = [*answer, end][:length]
    body += [pad] * (length - len(body))
    tokens = [*prompt, *body]
    return Sequence(tokens, Layout([0] * len(tokens), [0] * len(tokens)), [IGNORE] * len(tokens),
                    list(range(len(prompt), len(tokens))))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], masked slots already replaced by the mask token
    mask: torch.Tensor  # [B, T, T] attention
    ar_labels: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T]: the clean token at masked slots, IGNORE elsewhere
    weights: torch.Tensor  # [B]: 1/t per sequence
    slots: torch.Tensor  # [B]: maskable slots per sequence


# Right-padding gets a region of its own per position and an epoch after every real one: a padding
# key is invisible to every real query, and a padding query sees itself (no empty softmax row).
_PAD_REGION = 1 << 30
_PAD_EPOCH = 1 << 30
# Packed ids, labels, regions and epochs are int32: half the memory of int64 (a million examples
# are gigabytes), and every value fits (vocabularies and layouts stay far below 2³¹).
STORED = torch.int32


@dataclass
class Packed:
    """Sequences as right-padded tensors on the training device: a batch is a gather plus noise,
    with no per-sequence Python work in the training loop."""

    tokens: torch.Tensor  # [N, L]
    ar_labels: torch.Tensor  # [N, L]
    region: torch.Tensor  # [N, L]
    epoch: torch.Tensor  # [N, L]
    maskable: torch.Tensor  # [N, L] bool: diffusion slots
    lengths: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.lengths)

    def columns(self) -> tuple[torch.Tensor, ...]:
        """The tensors in field order (dataclasses.astuple would deep-copy them)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def to(self, device: str | torch.device) -> Packed:
        return Packed(*(t.to(device) for t in self.columns()))


def pack(sequences: list[Sequence], pad_token: int, device: str | torch.device = "cpu") -> Packed:
    """The sequences as padded rows. Each column is converted from one flat list (row after row)
    and laid into the rows' positions at once: a tensor per row and column cost most of the time."""
    n, length = len(sequences), max(len(s.tokens) for s in sequences)
    lengths = torch.tensor([len(s.tokens) for s in sequences])
    filled = torch.arange(length) < lengths[:, None]  # row-major, as the flat lists run

    def column(fill, values: list[int]) -> torch.Tensor:
        out = fill if isinstance(fill, torch.Tensor) else torch.full((n, length), fill, dtype=STORED)
        out[filled] = torch.frombuffer(array("i", values), dtype=torch.int32).to(STORED)
        return out

    tokens = column(pad_token, [t for s in sequences for t in s.tokens])
    labels = column(IGNORE, [t for s in sequences for t in s.ar_labels])
    region = column(torch.arange(_PAD_REGION, _PAD_REGION + length, dtype=STORED).repeat(n, 1),
                    [r for s in sequences for r in s.layout.region])
    epoch = column(_PAD_EPOCH, [e for s in sequences for e in s.layout.epoch])
    maskable = torch.zeros((n, length), dtype=torch.bool)
    maskable.view(-1)[torch.tensor([i * length + p for i, s in enumerate(sequences) for p in s.slots],
                                   dtype=torch.long)] = True
    return Packed(tokens, labels, region, epoch, maskable, lengths).to(device)


def concat(parts: list[Packed], pad_token: int) -> Packed:
    """The rows of `parts` in order, right-padded to the longest: worker processes pack their
    chunks, so the main process copies arrays instead of building a million rows one by one."""
    length = max(p.tokens.shape[1] for p in parts)

    def widen(p: Packed) -> Packed:
        n, extra, device = len(p), length - p.tokens.shape[1], p.tokens.device

        def fill(value, dtype=STORED):
            return torch.full((n, extra), value, dtype=dtype, device=device)

        return Packed(
            torch.cat([p.tokens, fill(pad_token)], 1), torch.cat([p.ar_labels, fill(IGNORE)], 1),
            torch.cat([p.region, torch.arange(_PAD_REGION + p.tokens.shape[1], _PAD_REGION + length,
                                              dtype=STORED, device=device).repeat(n, 1)], 1),
            torch.cat([p.epoch, fill(_PAD_EPOCH)], 1), torch.cat([p.maskable, fill(False, torch.bool)], 1), p.lengths)

    return Packed(*(torch.cat(column) for column in zip(*(widen(p).columns() for p in parts))))


def make_batch(data: Packed, index: torch.Tensor, mask_token: int, generator: torch.Generator,
               length: int | None = None) -> Batch:
    """Rows `index` of `data`, cut to their longest (`length`, when the caller knows it), each
    noised at its own t ~ U(ε, 1) (on the generator's device, which must be the data's)."""
    index = index.to(data.tokens.device, non_blocking=True)
    length = length or int(data.lengths[index].max())
    ids = data.tokens[index, :length].long()
    region, epoch = data.region[index, :length], data.epoch[index, :length]
    positions = torch.arange(length, device=ids.device)
    t = (1 - EPS) * torch.rand(len(index), generator=generator, device=ids.device) + EPS
    maskable = data.maskable[index, :length]
    noised = maskable & (torch.rand(ids.shape, generator=generator, device=ids.device) < t[:, None])
    return Batch(
        input_ids=torch.where(noised, mask_token, ids),
        mask=allowed(positions, region, epoch, positions, region, epoch),
        ar_labels=data.ar_labels[index, :length].long(),
        targets=torch.where(noised, ids, IGNORE),
        weights=1 / t,
        slots=maskable.sum(dim=1).float(),
    )


def loss(network, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plan cross-entropy (mean) + diffusion ELBO term (Σ masked CE / t ÷ slots), and the terms as
    0-d tensors: nothing here waits for the device, so the next step's kernels queue behind this one."""
    logits = network.forward_train(batch.input_ids, batch.mask).float()
    vocab = logits.shape[-1]
    ar_targets = batch.ar_labels.reshape(-1)
    ar = F.cross_entropy(logits.reshape(-1, vocab), ar_targets, ignore_index=IGNORE, reduction="sum")
    ar = ar / (ar_targets != IGNORE).sum().clamp(min=1)
    # The slot at j is predicted by the logits at j − 1.
    targets = batch.targets[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), targets.reshape(-1), ignore_index=IGNORE,
                         reduction="none").view(targets.shape)
    per_sequence = ce.sum(dim=1) * batch.weights / batch.slots.clamp(min=1)
    noisy = (batch.slots > 0).float()  # sequences with diffusion slots: a plan-only one adds no term
    diffusion = (per_sequence * noisy).sum() / noisy.sum().clamp(min=1)
    total = ar + diffusion
    return total, {"loss": total.detach(), "ar_loss": ar.detach(), "diffusion_loss": diffusion.detach()}
