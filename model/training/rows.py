"""The training rows a run draws its batches from, as the data workers deliver them.

Drawing and encoding millions of examples takes minutes of CPU; the rows arrive in chunks while the
model trains, so the GPU starts at once and every example can be new. The first pass takes the rows
in the order they arrive, batch after batch (step s gets rows (s−1)·B … s·B−1 of the stream), and
waits for the next chunk when it has used every row so far: a run never depends on how fast its
workers are, and a model adapted from a checkpoint at step k that skips k·B rows gets exactly the
batches its twin got after step k. Later passes shuffle all rows; a run that needs only one pass
keeps none (millions of rows need not sit in device memory).

Batches are grouped by length (`group` > 1): a batch is padded to its longest row, and rows of the
task range from about a hundred tokens to several hundred, so a batch of rows drawn at random
computes mostly padding (attention, quadratic, even more). Each window of `group` batches' rows
(the next group × B of the stream, or of a later pass's shuffle) is sorted by length, cut into
batches, and those are taken in an order seeded by the window's lengths: every row is still used
once per pass, the same windows give the same batches in the same order, and a run that skips k
batches, k a multiple of `group`, gets the batches its twin got after step k. Grouped batches are
padded to a multiple of `LENGTH_STEP` tokens: sorted batches come in nearly as many lengths as
there are batches, and every new length is a new shape for the compiled step and the attention
kernel's plan (72 batches of 256 of the task: 54 lengths grouped, 7 rounded, 32 in stream order).
Off by default: a compiled step measured slower grouped, before the rounding (docs/training.md).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable

import torch

from .objective import Packed, concat

LENGTH_STEP = 64  # grouped batches are padded to a multiple of this many tokens


class Rows:
    def __init__(self, chunks: Iterable[Packed], pad_token: int, device: str | torch.device, skip: int = 0,
                 keep: bool = True, group: int = 1):
        self._chunks = iter(chunks)
        self._pad, self._device = pad_token, device
        self._skip = skip  # rows of the stream still to drop
        self._keep = keep  # keep used rows for later, shuffled passes
        self._kept: list[Packed] = []  # each chunk as delivered, on the device
        self._current: Packed | None = None  # the first pass's rows not yet used
        self._ended = False
        self._all: Packed | None = None  # every row, for the shuffled passes
        self._order, self._seen = torch.empty(0, dtype=torch.long), 0
        self._group = group  # batches whose rows are sorted by length together
        self._queue: deque[tuple[Packed, torch.Tensor]] = deque()  # the window's batches still to take
        self.waited = 0.0  # seconds the first pass spent waiting for a chunk
        self.rows = 0  # rows delivered so far

    def batch(self, size: int, picker: torch.Generator) -> tuple[Packed, torch.Tensor, int]:
        """The data, the rows (a CPU index into it) and their longest length, for the next batch."""
        if not self._queue:
            while not self._ended and self._left() < size * self._group:
                self._receive()
            if self._left() >= size:
                self._first_pass(size)
            else:
                self._shuffled(size, picker)  # the first pass's last partial batch joins them
        data, index = self._queue.popleft()
        length = int(data.lengths[index].max())
        if self._group > 1:
            length = min(-(-length // LENGTH_STEP) * LENGTH_STEP, data.tokens.shape[1])
        return data, index, length

    def _left(self) -> int:
        return 0 if self._current is None else len(self._current)

    def _receive(self) -> None:
        started = time.perf_counter()
        chunk = next(self._chunks, None)
        self.waited += time.perf_counter() - started
        if chunk is None:
            self._ended = True
            return
        dropped = min(self._skip, len(chunk))
        self._skip -= dropped
        if dropped == len(chunk):
            return
        chunk = _rows(chunk, dropped, len(chunk))
        # On the device but the lengths: a batch's longest is read without waiting for the device.
        chunk = Packed(*(t.to(self._device) for t in chunk.columns()[:-1]), chunk.lengths.cpu())
        self.rows += len(chunk)
        if self._keep:
            self._kept.append(chunk)
        self._current = chunk if not self._left() else concat([self._current, chunk], self._pad)

    def _first_pass(self, size: int) -> None:
        data = self._current
        taken = min(self._group, len(data) // size) * size
        self._current = _rows(data, taken, len(data)) if len(data) > taken else None
        self._queue_window(data, torch.arange(taken), size)

    def _queue_window(self, data: Packed, window: torch.Tensor, size: int) -> None:
        """The window's rows as batches of rows of like length, in an order seeded by their lengths."""
        if self._group == 1:
            self._queue.append((data, window))
            return
        lengths = data.lengths[window]
        batches = window[torch.argsort(lengths, stable=True)].split(size)
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(int(lengths.sum())))
        self._queue.extend((data, batches[i]) for i in order.tolist())

    def _shuffled(self, size: int, picker: torch.Generator) -> None:
        if self._all is None:
            if not self._kept:
                raise RuntimeError(f"the training data ran out after {self.rows} rows (one pass, none kept)"
                                   if self.rows else "no training rows: the data has no examples")
            self._all = concat(self._kept, self._pad) if len(self._kept) > 1 else self._kept[0]
            self._kept = []
        if self._seen + size > len(self._order):
            self._order, self._seen = torch.randperm(len(self._all), generator=picker), 0
        left = len(self._order) - self._seen
        taken = min(self._group, left // size) * size or left  # fewer rows than a batch: all of them
        self._queue_window(self._all, self._order[self._seen:self._seen + taken], size)
        self._seen += taken


def _rows(data: Packed, start: int, stop: int) -> Packed:
    """Rows start…stop−1 (views, no copy)."""
    return Packed(*(t[start:stop] for t in data.columns()))
