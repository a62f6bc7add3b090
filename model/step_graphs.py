"""CUDA graphs of small steps: planning and autoregressive steps of up to 64 requests, denoising
steps of up to 256 tokens, replayed instead of launched op by op.

Eager, a small step of a 28-layer network is ~1,300 kernel launches and costs tens of
milliseconds of host time, ten times the device's (docs/performance.md); a replay is one launch.
A graph needs static shapes, so a step is padded to a `GraphShape`: `count` requests (a bucket),
each given `width` query rows (a bucket) over `length` keys (a multiple of `GRAPH_LENGTH`).
Everything a step varies is in one integer buffer, copied to the device once per step (kept per
shape on the host: a step rewrites its requests' keys only where they changed); the attention bias
is computed from it inside the graph. Padding rows write their keys to a scratch
slot that no real query may see, and see nothing but it themselves. When one greedy decision group
decides every logit row of the step (the usual case: one request, or many with the same settings),
the graph makes the decisions too (decisions.decide_on_device: a few dozen small kernels that,
launched one by one, cost a batch-1 step about a millisecond of host time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .decisions import decide_on_device
from .layout import PADDING
from .network import DreamNetwork, PackedBatch
from .transfers import host_longs

GRAPH_COUNTS = (1, 2, 4, 8, 16, 32, 64)
GRAPH_WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GRAPH_TOKENS = 256  # count × width at most: a larger step is compute-bound, its launches matter little
GRAPH_LENGTH = 256  # keys are padded to a multiple of this
FIELDS = 6  # per query row: id, position, write slot, region, epoch, logit row; per key: slot, region, epoch;
# then each request's key count


@dataclass(frozen=True)
class GraphShape:
    count: int
    width: int
    length: int
    # the step's decision group (decisions.decide) without its banned ids, when one greedy group
    # decides every logit row: the graph then decides too (None: it ends at the logits)
    decision: tuple | None = None

    @classmethod
    def of(cls, forwards, decision: tuple | None = None) -> GraphShape | None:
        """The smallest shape holding these forwards, or None when they are too large for one."""
        if len(forwards) > GRAPH_COUNTS[-1]:
            return None
        widest = max(len(f.positions) for f in forwards)
        if widest > GRAPH_WIDTHS[-1]:
            return None
        count = next(c for c in GRAPH_COUNTS if c >= len(forwards))
        width = next(w for w in GRAPH_WIDTHS if w >= widest)
        if count * width > GRAPH_TOKENS:
            return None
        length = -(-max(f.key_length for f in forwards) // GRAPH_LENGTH) * GRAPH_LENGTH
        return cls(count, width, length, decision)

    @property
    def rows(self) -> int:
        return self.count * self.width

    @property
    def rules(self) -> int:
        """Longs of a denoising decision's span rules: rows, count, lo and hi (float64 bits) of
        up to `rows` spans and the padding rows' span."""
        return 4 * (self.rows + 1) if self.decision is not None and self.decision[0] == "denoise" else 0

    @property
    def size(self) -> int:
        return FIELDS * self.rows + 3 * self.count * self.length + self.count + self.rules


class StepBuffer:
    """A shape's integer step buffer (host; pinned for CUDA), kept from one of its steps to the next,
    with what each request row of its key section holds: (sequence, its layout's generation, keys
    written). A row is then written only past what it holds for the same request (an AR step: one
    key, not all of them)."""

    def __init__(self, shape: GraphShape, scratch: int, pinned: bool = False):
        self.shape, self.scratch = shape, scratch
        self.buffer = torch.zeros(shape.size, dtype=torch.long, pin_memory=pinned)
        self.keys()[:2] = torch.tensor([scratch, PADDING])[:, None, None]
        self.held: list[tuple | None] = [None] * shape.count

    def keys(self) -> torch.Tensor:
        """The key section, [3, count, length]: pool slot, region, epoch."""
        shape, rows = self.shape, self.shape.rows
        return self.buffer[FIELDS * rows: FIELDS * rows + 3 * shape.count * shape.length].view(3, shape.count,
                                                                                                shape.length)


def pack_keys(step: StepBuffer, seqs, forwards) -> None:
    """Each request's keys into the buffer's key section, padding past them: only what each row does
    not hold yet, the few new keys of every row in one indexed write."""
    key, scratch = step.keys(), step.scratch
    count, length = key.shape[1:]
    index, values = [], []
    for i in range(count):
        seq, f = (seqs[i], forwards[i]) if i < len(seqs) else (None, None)
        end = f.key_length if f is not None else 0
        held = step.held[i]
        start = held[2] if held is not None and held[0] is seq and held[1] == seq.state.layout.generation else 0
        if held is not None and held[2] > end:  # keys the row held past this request's: padding
            key[0, i, end:held[2]], key[1, i, end:held[2]] = scratch, PADDING
        if end - start > 8:
            key[0, i, start:end] = seq.slots[start:end]
            key[1:, i, start:end] = seq.state.layout.keys(end)[:, start:]
        elif end > start:
            layout, slots = seq.state.layout, seq.slot_list
            for field, source in enumerate((slots, layout.region, layout.epoch)):
                index += range((field * count + i) * length + start, (field * count + i) * length + end)
                values += source[start:end]
        step.held[i] = (seq, seq.state.layout.generation, end) if seq is not None else None
    if index:
        key.view(-1)[host_longs(index)] = host_longs(values)


def pack_padded(seqs, forwards, step: StepBuffer, segments: list[int] | None = None,
                rule=None) -> tuple[torch.Tensor, list[int]]:
    """The step's integer buffer (`step`'s, host) for its shape, and how many logit rows each forward
    has. Logit rows come first in the output, in the forwards' order. Built from Python lists in one
    conversion, plus the requests' new keys (pack_keys). A denoising decision in the graph also takes
    the spans' `segments` and commit `rule` (decisions.CommitRule), every request's in order; the
    padding rows make one more span that never commits."""
    shape, buffer, scratch = step.shape, step.buffer, step.scratch
    rows, width, length = shape.rows, shape.width, shape.length
    pack_keys(step, seqs, forwards)
    fields: list[list[int]] = [[] for _ in range(FIELDS - 1)]  # id, position, slot, region, epoch
    logit_rows, counts = [], []
    for i, (seq, f) in enumerate(zip(seqs, forwards)):
        state, positions, pad = seq.state, f.positions, width - len(f.positions)
        region, epoch, slots = state.layout.region, state.layout.epoch, seq.slot_list
        for values, source, pad_value in zip(fields, (state.tokens, None, slots, region, epoch), (0, 0, scratch, PADDING, 0)):
            values += (positions if source is None else [source[p] for p in positions]) + [pad_value] * pad
        row = {p: i * width + j for j, p in enumerate(positions)}
        logit_rows += [row[p] for p in f.logit_positions]
        counts.append(len(f.logit_positions))
    padding = rows - len(fields[0])  # padding requests
    for values, pad_value in zip(fields, (0, 0, scratch, PADDING, 0)):
        values += [pad_value] * padding
    buffer[: FIELDS * rows] = host_longs([v for values in fields for v in values] + logit_rows
                                         + [0] * (rows - len(logit_rows)))
    lengths = buffer[FIELDS * rows + 3 * shape.count * length:][: shape.count]
    lengths[:] = host_longs([f.key_length for f in forwards] + [0] * (shape.count - len(forwards)))
    if shape.rules:
        pad, never = rows + 1 - len(segments), float("inf")  # the padding rows' span, then empty ones
        rules = buffer[-shape.rules:].view(4, rows + 1)
        rules[:2] = host_longs(segments + [rows - sum(segments)] + [0] * (pad - 1) + rule.k + [0] * pad).view(2, -1)
        rules[2:].view(torch.float64)[:] = torch.tensor([rule.lo + [never] * pad, rule.hi + [never] * pad],
                                                        dtype=torch.float64)
    return buffer, counts


def padded_forward(network: DreamNetwork, pool, buffer: torch.Tensor, shape: GraphShape,
                   banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits [shape.rows, vocab] of a padded step given its buffer on the device: the rows of
    its logit positions first, then padding; and, when the shape has a decision, that decision for
    every row (`banned`: its [vocab] mask). What a graph captures; on the CPU it runs as is."""
    rows, keys = shape.rows, 3 * shape.count * shape.length
    ids, positions, write, region, epoch, logit_rows = buffer[: FIELDS * rows].view(FIELDS, rows)
    key = buffer[FIELDS * rows: FIELDS * rows + keys].view(3, shape.count, shape.length)  # slot, region, epoch
    grid = (shape.count, shape.width)
    batch = PackedBatch(input_ids=ids, positions=positions, write_slots=write, read_slots=key[0],
                        query_layout=torch.stack((positions, region, epoch)).view(3, *grid), key_layout=key[1:],
                        key_lengths=buffer[FIELDS * rows + keys:][: shape.count], query_index=None, packed_rows=None)
    logits = network.logits(network.forward_packed(batch, pool)[logit_rows])
    if shape.decision is None:
        return logits, None
    if not shape.rules:
        return logits, decide_on_device(shape.decision, logits, banned)
    rules = buffer[-shape.rules:].view(4, rows + 1)
    return logits, decide_on_device(shape.decision, logits, banned, rules[:2], rules[2:].view(torch.float64))


class StepGraphs:
    """The graphs captured so far, one per shape, captured when a step first needs its shape. They
    share one memory pool: a replay's output is copied out before the next replay."""

    def __init__(self, network: DreamNetwork, pool):
        self.network, self.pool = network, pool
        self.memory = torch.cuda.graph_pool_handle()
        # per shape: the graph, its input buffer, its outputs (logits, decisions or None)
        self.graphs: dict[GraphShape, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}
        self.capture_seconds = 0.0  # spent capturing (warm-up forwards included)
        # each shape's two step buffers (pinned), kept across its steps and taken in turn
        self.buffers: dict[GraphShape, list[StepBuffer]] = {}
        # the banned-token mask of the step being replayed (one for every graph: replays are in order)
        self.banned = torch.zeros(network.config.vocab_size, dtype=torch.bool, device=network.device)

    def step_buffer(self, shape: GraphShape, scratch: int) -> StepBuffer:
        """A step buffer of the shape to pack the next step into (pack_padded). Packing rewrites it
        while the device may not have copied the step before yet (a step ahead is packed while its
        predecessor is in flight: ModelRunner.launch_ahead), so a shape's steps take two buffers in
        turn: a step is packed while at most one other is unfinished, so the step packed into the
        other buffer before has been waited for, its copy with it."""
        if shape not in self.buffers:
            self.buffers[shape] = [StepBuffer(shape, scratch, pinned=True) for _ in range(2)]
        pair = self.buffers[shape]
        pair.reverse()
        return pair[0]

    def run(self, shape: GraphShape, buffer: torch.Tensor, banned: torch.Tensor | None = None,
            patch=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits of the step whose host `buffer` is given, and its decisions when the shape
        has them (`banned`: the group's [vocab] mask on the device), copied out of the graph's
        output. `patch`: called with the buffer on the device before the replay (a step launched
        ahead writes what the step in flight decides into it). Raises RuntimeError when this torch
        build refuses the capture."""
        if banned is not None:
            self.banned.copy_(banned, non_blocking=True)
        if shape not in self.graphs:
            started = time.perf_counter()
            self.graphs[shape] = self._capture(shape, buffer)
            self.capture_seconds += time.perf_counter() - started
        graph, device_buffer, (logits, decided) = self.graphs[shape]
        device_buffer.copy_(buffer.pin_memory(), non_blocking=True)  # a kept buffer is pinned already
        if patch is not None:
            patch(device_buffer)
        graph.replay()
        return logits.clone(), None if decided is None else decided.clone()

    def _capture(self, shape: GraphShape, buffer: torch.Tensor):
        device_buffer = buffer.to(self.network.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (allocator, library handles)
            for _ in range(2):
                padded_forward(self.network, self.pool, device_buffer, shape, self.banned)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.memory):
            outputs = padded_forward(self.network, self.pool, device_buffer, shape, self.banned)
        return graph, device_buffer, outputs
