"""One step of many requests: each one's scheduled forward packed into one forward of the network,
then each request's state machine advanced with its own logits.

This is the single step of the code base: `ModelRuntime.run` steps one request with it, the
workers' engine (workers/engine.py) steps whatever its scheduler picks. It lives in model/ because
`ModelRuntime.generate`, which model/ itself uses, drives through it, and model/ imports nothing above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PromptTooLongError
from .generation import Forward, RequestState, decide
from .kv_pool import BLOCK, KVPool, blocks_for, slot_map
from .layout import allowed
from .network import DreamNetwork, PackedBatch


@dataclass
class Sequence:
    """A request admitted to the pool: its state and the KV blocks it holds."""

    state: RequestState
    blocks: list[int]
    slots: torch.Tensor  # [blocks × BLOCK] pool slot of each position (host)


class ModelRunner:
    def __init__(self, network: DreamNetwork, pool: KVPool | None = None):
        self.network = network
        self.pool = pool or KVPool.for_network(network)
        self.forwards = 0

    # ------------------------------------------------------------------ memory

    def admit(self, state: RequestState) -> Sequence | None:
        """Reserve the request's KV memory for its longest possible length; None while the pool
        is too full, PromptTooLongError if it could never hold it."""
        if blocks_for(state.max_length) > self.pool.max_blocks:
            raise PromptTooLongError(
                f"the request may grow to {state.max_length} positions; the KV pool holds "
                f"{self.pool.max_blocks * BLOCK}")
        blocks = self.pool.allocate(state.max_length)
        return None if blocks is None else Sequence(state, blocks, slot_map(blocks))

    def release(self, seq: Sequence) -> None:
        self.pool.free(seq.blocks)
        seq.blocks = []

    # ------------------------------------------------------------------ stepping

    def step(self, seqs: list[Sequence], forwards: list[Forward] | None = None) -> list[Exception | None]:
        """One forward for all `seqs` (their `schedule()` unless given), then advance each; what
        each advance raised (a malformed plan with on_malformed_plan="raise", …), or None."""
        forwards = forwards or [s.state.schedule() for s in seqs]
        for seq, forward in zip(seqs, forwards):
            if forward.fresh_cache:
                self.pool.zero(seq.blocks)
        logits = self.forward(seqs, forwards)
        self.forwards += 1
        decisions = self._decide(seqs, forwards, logits)
        errors: list[Exception | None] = []
        for seq, forward, rows, decision in zip(seqs, forwards, logits, decisions):
            try:
                seq.state.advance(forward, rows, decision)
                errors.append(None)
            except Exception as err:  # one request's failure must not stop the others
                errors.append(err)
        return errors

    @staticmethod
    def _decide(seqs: list[Sequence], forwards: list[Forward], logits: list[torch.Tensor]) -> list:
        """The step's decisions, one batch per decision group (generation.decide), so the device
        does each group's filtering, scoring and choice at once and one transfer brings back ids
        and scores; requests of no group (None) decide alone in `advance`."""
        groups: dict[tuple, list[int]] = {}
        for i, (seq, forward) in enumerate(zip(seqs, forwards)):
            group = seq.state.decision_group(forward) if len(forward.logit_positions) else None
            if group is not None:
                groups.setdefault(group, []).append(i)
        decisions: list = [None] * len(seqs)
        for group, members in groups.items():
            rows = logits[members[0]] if len(members) == 1 else torch.cat([logits[i] for i in members])
            decided = decide(group, rows)
            if group[0] == "plan":
                for i, token in zip(members, decided):
                    decisions[i] = token
                continue
            x0, scores = decided
            start = 0
            for i in members:
                n = len(forwards[i].logit_positions)
                decisions[i] = (x0[start:start + n], scores[start:start + n])
                start += n
        return decisions

    def forward(self, seqs: list[Sequence], forwards: list[Forward]) -> list[torch.Tensor]:
        """The logits of each forward's logit positions (rows in that order), left on the device."""
        batch, logit_rows, counts = self._pack(seqs, forwards)
        hidden = self.network.forward_packed(batch, self.pool)
        logits = self.network.logits(hidden[logit_rows])
        return list(torch.split(logits, counts))

    def _pack(self, seqs: list[Sequence], forwards: list[Forward]):
        """The packed batch, built on the host in a few tensors, each sent to the device once; the
        attention mask is computed on the device from per-token layout metadata."""
        device = self.network.device
        count = len(seqs)
        t_max = max(len(f.positions) for f in forwards)
        l_max = max(f.key_length for f in forwards)
        tokens = torch.zeros(3, sum(len(f.positions) for f in forwards), dtype=torch.long)  # ids, pos, slot
        queries = torch.zeros(3, count, t_max, dtype=torch.long)  # position, region, epoch
        keys = torch.full((2, count, l_max), -2, dtype=torch.long)  # region, epoch; -2 = padding
        read = torch.zeros(count, l_max, dtype=torch.long)
        index = torch.zeros(count, t_max, dtype=torch.long)
        packed_rows, logit_rows, counts = [], [], []
        offset = 0
        for i, (seq, f) in enumerate(zip(seqs, forwards)):
            state, n, length = seq.state, len(f.positions), f.key_length
            positions = torch.tensor(f.positions, dtype=torch.long)
            region = torch.tensor(state.layout.region[:length], dtype=torch.long)
            epoch = torch.tensor(state.layout.epoch[:length], dtype=torch.long)
            rows = slice(offset, offset + n)
            tokens[0, rows] = torch.tensor([state.tokens[p] for p in f.positions], dtype=torch.long)
            tokens[1, rows] = positions
            tokens[2, rows] = seq.slots[positions]
            queries[0, i, :n], queries[1, i, :n], queries[2, i, :n] = positions, region[positions], epoch[positions]
            keys[0, i, :length], keys[1, i, :length] = region, epoch
            read[i, :length] = seq.slots[:length]
            index[i, :n] = torch.arange(offset, offset + n)
            packed_rows.append(torch.arange(i * t_max, i * t_max + n))
            row = {p: offset + j for j, p in enumerate(f.positions)}
            logit_rows += [row[p] for p in f.logit_positions]
            counts.append(len(f.logit_positions))
            offset += n
        tokens, queries, keys = tokens.to(device), queries.to(device), keys.to(device)
        key_positions = torch.arange(l_max, device=device)
        mask = allowed(queries[0], queries[1], queries[2], key_positions, keys[0], keys[1]) & (keys[0] != -2)[:, None]
        low = torch.finfo(self.network.dtype).min
        bias = torch.zeros(mask.shape, dtype=self.network.dtype, device=device).masked_fill(~mask, low)[:, None]
        single = count == 1
        batch = PackedBatch(
            input_ids=tokens[0], positions=tokens[1], write_slots=tokens[2], read_slots=read.to(device), bias=bias,
            query_index=None if single else index.to(device),
            packed_rows=None if single else torch.cat(packed_rows).to(device),
        )
        return batch, torch.tensor(logit_rows, dtype=torch.long, device=device), counts
