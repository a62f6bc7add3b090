"""The training rows a run draws its batches from, as the data workers deliver them.

Drawing and encoding millions of examples takes minutes of CPU; the rows arrive in chunks while the
model trains, so the GPU starts at once and every example can be new. The first pass takes the rows
in the order they arrive, batch after batch (step s gets rows (s−1)·B … s·B−1 of the stream), and
waits for the next chunk when it has used every row so far: a run never depends on how fast its
workers are, and a model adapted from a checkpoint at step k that skips k·B rows gets exactly the
batches its twin got after step k. Later passes shuffle all rows; a run that needs only one pass
keeps none (millions of rows need not sit in device memory).
"""

from __future__ import annotations

import time
from typing import Iterable

import torch

from .objective import Packed, concat


class Rows:
    def __init__(self, chunks: Iterable[Packed], pad_token: int, device: str | torch.device, skip: int = 0,
                 keep: bool = True):
        self._chunks = iter(chunks)
        self._pad, self._device = pad_token, device
        self._skip = skip  # rows of the stream still to drop
        self._keep = keep  # keep used rows for later, shuffled passes
        self._kept: list[Packed] = []  # each chunk as delivered, on the device
        self._current: Packed | None = None  # the first pass's rows not yet used
        self._ended = False
        self._all: Packed | None = None  # every row, for the shuffled passes
        self._order, self._seen = torch.empty(0, dtype=torch.long), 0
        self.waited = 0.0  # seconds the first pass spent waiting for a chunk
        self.rows = 0  # rows delivered so far

    def batch(self, size: int, picker: torch.Generator) -> tuple[Packed, torch.Tensor, int]:
        """The data, the rows (a CPU index into it) and their longest length, for the next batch."""
        while not self._ended and self._left() < size:
            self._receive()
        if self._left() >= size:
            return self._first_pass(size)
        return self._shuffled(size, picker)  # the first pass's last partial batch joins them

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

    def _first_pass(self, size: int) -> tuple[Packed, torch.Tensor, int]:
        data = self._current
        self._current = _rows(data, size, len(data)) if len(data) > size else None
        return data, torch.arange(size), int(data.lengths[:size].max())

    def _shuffled(self, size: int, picker: torch.Generator) -> tuple[Packed, torch.Tensor, int]:
        if self._all is None:
            if not self._kept:
                raise RuntimeError(f"the training data ran out after {self.rows} rows (one pass, none kept)"
                                   if self.rows else "no training rows: the data has no examples")
            self._all = concat(self._kept, self._pad) if len(self._kept) > 1 else self._kept[0]
            self._kept = []
        if self._seen + size > len(self._order):
            self._order, self._seen = torch.randperm(len(self._all), generator=picker), 0
        index = self._order[self._seen:self._seen + size]
        self._seen += size
        return self._all, index, int(self._all.lengths[index].max())


def _rows(data: Packed, start: int, stop: int) -> Packed:
    """Rows start…stop−1 (views, no copy)."""
    return Packed(*(t[start:stop] for t in data.columns()))
