"""One step of many requests: each one's scheduled forward packed into one forward of the network,
then each request's state machine advanced with its own logits.

This is the single step of the code base: `ModelRuntime.run` steps one request with it, the
workers' engine (workers/engine.py) steps whatever its scheduler picks. It lives in model/ because
`ModelRuntime.generate`, which model/ itself uses, drives through it, and model/ imports nothing above.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import torch
from torch.nn.utils.rnn import pad_sequence

from .decisions import CommitRule, banned_mask, decide
from .errors import PromptTooLongError
from .feed import Feed
from .generation import Forward, Phase, RequestState
from .kv_pool import BLOCK, KVPool, blocks_for, slot_map
from .layout import PADDING
from .network import DreamNetwork, PackedBatch
from .step_graphs import GraphShape, StepGraphs, pack_padded
from .transfers import host_longs, to_device


@dataclass
class Sequence:
    """A request admitted to the pool: its state and the KV blocks it holds."""

    state: RequestState
    blocks: list[int]
    slots: torch.Tensor  # [blocks × BLOCK] pool slot of each position (host)
    slot_list: list[int] = field(init=False)  # the same as a list (read per token)

    def __post_init__(self):
        self.slot_list = self.slots.tolist()


@dataclass
class Launched:
    """A step queued on the device (ModelRunner.launch), until `finish` waits for it."""

    seqs: list[Sequence]
    forwards: list[Forward]
    logits: list[torch.Tensor]  # each forward's logit rows (device)
    groups: list[tuple[list[int], torch.Tensor]]  # each decision group's members and decisions (device)
    lap: _Laps
    keys: list[tuple] = field(default_factory=list)  # each group's key (RequestState.decision_group)
    # every group's decisions, flat, on their way to the host (pinned, copied without waiting) and
    # the event that says they are there (None off CUDA): a later step queued behind this one is
    # not waited for
    values: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None
    dropped: set[int] = field(default_factory=set)  # requests not to advance (a void step ahead's)


class ModelRunner:
    def __init__(self, network: DreamNetwork, pool: KVPool | None = None, cuda_graphs: bool = True):
        """`cuda_graphs`: on CUDA, replay captured graphs for small steps (step_graphs.py); a capture
        the torch build refuses turns them off and leaves its reason in `graph_error`."""
        self.network = network
        self.pool = pool or KVPool.for_network(network)
        self.forwards = 0
        self.graph_error: str | None = None
        on_cuda = network.device.type == "cuda"
        self.cuda_graphs = cuda_graphs and on_cuda
        self._graphs = StepGraphs(network, self.pool) if on_cuda else None
        # padding rows of a padded step write here (never read unmasked)
        self._scratch = self.pool.allocate(BLOCK)[0] * BLOCK if on_cuda else 0
        # launch_ahead: only where the device computes while the host works (on the CPU a step
        # launched ahead is computed at once, and one whose token ends an answer is wasted)
        self.ahead = on_cuda
        # A list to time every step's phases into (one dict of seconds per step: pack, device,
        # decide, advance; benchmarks only: it waits for the device after the forward)
        self.timings: list[dict[str, float]] | None = None

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
        return self.finish(self.launch(seqs, forwards))

    def launch(self, seqs: list[Sequence], forwards: list[Forward] | None = None,
               feed: Feed | None = None) -> Launched:
        """Queue the step's forward and its batched decisions on the device, without waiting for
        them: the host is free until `finish` (a worker hands the previous step's events over
        meanwhile). Nothing here waits for this step's work (host-to-device copies of its inputs
        wait only for earlier steps), but benchmark laps do. `feed`: what a step launched ahead takes
        from the step in flight (launch_ahead)."""
        lap = _Laps(self.timings, self.network.device)
        forwards = forwards or [s.state.schedule() for s in seqs]
        for seq, forward in zip(seqs, forwards):
            if forward.fresh_cache:
                self.pool.zero(seq.blocks)
        groups = self._groups(seqs, forwards)
        logits, decided = self._forward(seqs, forwards, lap, groups, feed)
        self.forwards += 1
        lap("device", sync=True)
        if decided is None:
            decided = self._decide(seqs, forwards, logits, groups)
        step = Launched(seqs, forwards, logits, decided, lap, list(groups))
        self._send(step)
        return step

    @staticmethod
    def _send(step: Launched) -> None:
        """Queue the copy of the step's decisions to the host, not waited for."""
        if not step.groups:
            return
        flat = torch.cat([d.flatten() for _, d in step.groups])
        if flat.is_cuda:
            step.values = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            step.values.copy_(flat, non_blocking=True)
            step.ready = torch.cuda.Event()
            step.ready.record()
        else:
            step.values = flat

    def launch_ahead(self, step: Launched) -> Launched | None:
        """The step after `step`, queued while `step` is still in flight, when each of its requests'
        next forward can be known without `step`'s decisions (RequestState.ahead) and its input ids
        are those decisions, on the device, or known on the host: the next planning token of each
        (decided by `step`, or a forced plan's) or each request's next denoising step (the committed
        tokens its ids, the rows left masked its logit rows: Feed). The host packs and queues it
        while the device computes `step`. None when it cannot be known yet. Once `step` is
        finished, `void_ahead` drops the requests whose next forward is another (an answer or a
        round ended, a span filled)."""
        if not self.ahead or step.dropped or all(s.state.may_end_round() for s in step.seqs):
            return None  # every request may end its round: a void step would cost a whole forward
        forwards = [s.state.ahead(f) for s, f in zip(step.seqs, step.forwards)]
        if None in forwards or any(f.key_length > len(s.slot_list) for s, f in zip(step.seqs, forwards)):
            return None
        decided = {i for members, _ in step.groups for i in members}
        planning = [s.state for s, f in zip(step.seqs, forwards) if not f.segments]
        if any(i not in decided and (f.segments or s.state.known_token() is None)
               for i, (s, f) in enumerate(zip(step.seqs, forwards))):
            return None  # an input id only this request's own decision on the host will tell
        with ExitStack() as places:
            for state in planning:
                places.enter_context(state.reserved())
            return self.launch(step.seqs, forwards, feed=Feed(step.groups, step.forwards))

    def void_ahead(self, ahead: Launched) -> int:
        """Drop from a step launched ahead, once the step before it is finished, each request whose
        next forward is not the one it computes (its last token ended it, a span filled); how
        many. A denoising step's placeholder logit positions become the real ones (the device
        chose those rows); planning tokens whose decision group changed with the token before them
        (constrained planning's bans follow the plan) are decided again."""
        for i, (seq, forward) in enumerate(zip(ahead.seqs, ahead.forwards)):
            state = seq.state
            real = None if state.phase is Phase.DONE else state.schedule()
            if real is not None and state.phase is Phase.DENOISE:
                forward = replace(forward, logit_positions=real.logit_positions)
            if real != forward:
                ahead.dropped.add(i)
            else:
                ahead.forwards[i] = real
        live = [i for i in range(len(ahead.seqs)) if i not in ahead.dropped]
        groups = {key: [live[j] for j in members] for key, members in
                  self._groups([ahead.seqs[i] for i in live], [ahead.forwards[i] for i in live]).items()}
        before = {key: kept for key, (members, _) in zip(ahead.keys, ahead.groups)
                  if (kept := [i for i in members if i not in ahead.dropped])}
        if groups != before:
            ahead.groups, ahead.keys = self._decide(ahead.seqs, ahead.forwards, ahead.logits, groups), list(groups)
            self._send(ahead)
        return len(ahead.dropped)

    def finish(self, step: Launched) -> list[Exception | None]:
        """Wait for a launched step's decisions (one transfer) and advance each request with them."""
        decisions: list = [None] * len(step.seqs)
        if step.groups:
            if step.ready is not None:
                step.ready.synchronize()
            values = step.values.tolist()
            start = 0
            for members, d in step.groups:
                if d.dim() == 1:  # planning tokens, one per member
                    for i, token in zip(members, values[start: start + len(members)]):
                        decisions[i] = token
                    start += len(members)
                    continue
                rows = d.shape[1]
                x0, commit = values[start: start + rows], values[start + rows: start + 2 * rows]
                start += 2 * rows
                first = 0
                for i in members:
                    end = first + len(step.forwards[i].logit_positions)
                    decisions[i] = (x0[first:end], commit[first:end])
                    first = end
        step.lap("decide")
        errors: list[Exception | None] = []
        for i, (seq, forward, rows, decision) in enumerate(zip(step.seqs, step.forwards, step.logits, decisions)):
            if i in step.dropped:
                errors.append(None)
                continue
            try:
                seq.state.advance(forward, rows, decision)
                errors.append(None)
            except Exception as err:  # one request's failure must not stop the others
                errors.append(err)
        step.lap("advance")
        return errors

    @staticmethod
    def _groups(seqs: list[Sequence], forwards: list[Forward]) -> dict[tuple, list[int]]:
        """The step's requests by decision group (RequestState.decision_group); requests of no
        group (None) decide alone in `advance`."""
        groups: dict[tuple, list[int]] = {}
        for i, (seq, forward) in enumerate(zip(seqs, forwards)):
            group = seq.state.decision_group(forward) if len(forward.logit_positions) else None
            if group is not None:
                groups.setdefault(group, []).append(i)
        return groups

    @staticmethod
    def _rule(seqs: list[Sequence], forwards: list[Forward], members: list[int]) -> tuple[list[int], CommitRule]:
        """The live spans' rows and commit rules of a denoising group's members, concatenated."""
        rules = [seqs[i].state.commit_rule(forwards[i]) for i in members]
        return ([n for i in members for n in forwards[i].segments],
                CommitRule(*([v for rule in rules for v in getattr(rule, name)] for name in ("k", "lo", "hi"))))

    def _decide(self, seqs: list[Sequence], forwards: list[Forward], logits: list[torch.Tensor],
                groups: dict[tuple, list[int]]) -> list:
        """The step's decisions, one batch per decision group (decisions.decide), so the device
        does each group's filtering, scoring, ranking and commits at once. Each group's members
        and its decisions, on the device."""
        decided = []
        for group, members in groups.items():
            rows = logits[members[0]] if len(members) == 1 else torch.cat([logits[i] for i in members])
            if group[0] == "plan":
                decided.append((members, decide(group, rows)))
            else:
                decided.append((members, decide(group, rows, *self._rule(seqs, forwards, members))))
        return decided

    def forward(self, seqs: list[Sequence], forwards: list[Forward], lap: _Laps | None = None) -> list[torch.Tensor]:
        """The logits of each forward's logit positions (rows in that order), left on the device."""
        return self._forward(seqs, forwards, lap or _Laps(None, self.network.device))[0]

    def _forward(self, seqs: list[Sequence], forwards: list[Forward], lap: _Laps,
                 groups: dict[tuple, list[int]] | None = None,
                 feed: Feed | None = None) -> tuple[list[torch.Tensor], list | None]:
        """The logits (`forward`), and the decisions (as `_decide` gives them) when a CUDA graph made
        them: a small step whose logit rows all belong to one greedy decision group. `feed`: what a
        step launched ahead takes from the one in flight (launch_ahead)."""
        shape = GraphShape.of(forwards, self._graph_decision(forwards, groups)) if self.cuda_graphs else None
        if shape is not None:
            group = next(iter(groups)) if shape.decision is not None else None  # the graph decides for it
            members = groups[group] if group is not None else []
            segments, rule = self._rule(seqs, forwards, members) if shape.rules else (None, None)
            buffer, counts = pack_padded(seqs, forwards, self._graphs.step_buffer(shape, self._scratch), segments, rule)
            lap("pack")
            banned = None if group is None else banned_mask(group[-1], self.network.config.vocab_size,
                                                            self.network.device)
            patch = None if feed is None else lambda device: feed.apply_to_buffer(device, shape, forwards)
            try:
                logits, decided = self._graphs.run(shape, buffer, banned, patch)
            except RuntimeError as err:  # a capture this torch build refuses: stay eager, and say why
                self.cuda_graphs, self.graph_error = False, f"{type(err).__name__}: {err}"[:500]
                return self._forward(seqs, forwards, lap, groups, feed)
            rows = sum(counts)
            logits = list(torch.split(logits[:rows], counts))
            return logits, None if decided is None else [(members, decided[..., :rows])]
        batch, logit_rows, counts = self._pack(seqs, forwards)
        if feed is not None:
            starts = [0]
            for f in forwards[:-1]:
                starts.append(starts[-1] + len(f.positions))
            feed.apply(batch.input_ids, logit_rows, starts, forwards)
        lap("pack")
        hidden = self.network.forward_packed(batch, self.pool)
        logits = self.network.logits(hidden[logit_rows])
        return list(torch.split(logits, counts)), None

    @staticmethod
    def _graph_decision(forwards: list[Forward], groups: dict[tuple, list[int]] | None) -> tuple | None:
        """The decision a graph can make for this step: one greedy group holding every request
        with logit rows (its key without the banned ids, which the graph takes as a mask)."""
        if not groups or len(groups) > 1:
            return None
        group, members = next(iter(groups.items()))
        if group[1][0] > 0 or len(members) != sum(1 for f in forwards if f.logit_positions):
            return None
        return group[:-1]

    def _pack(self, seqs: list[Sequence], forwards: list[Forward]):
        """The packed batch, built on the host from Python lists in one conversion (plus one padded
        copy each for the requests' key layouts and pool slots), each part sent to the device once;
        the network reads attention visibility from the queries' and keys' layout metadata."""
        device = self.network.device
        count = len(seqs)
        t_max = max(len(f.positions) for f in forwards)
        ids, positions, writes, index, packed_rows, logit_rows, counts = [], [], [], [], [], [], []
        queries: list[list[int]] = [[], [], []]  # position, region, epoch of each padded query row
        offset = 0
        for i, (seq, f) in enumerate(zip(seqs, forwards)):
            state, ps, n = seq.state, f.positions, len(f.positions)
            region, epoch, slots, tokens = state.layout.region, state.layout.epoch, seq.slot_list, state.tokens
            pad = [0] * (t_max - n)
            ids += [tokens[p] for p in ps]
            positions += ps
            writes += [slots[p] for p in ps]
            queries[0] += ps + pad
            queries[1] += [region[p] for p in ps] + [PADDING] * (t_max - n)
            queries[2] += [epoch[p] for p in ps] + pad
            index += [*range(offset, offset + n), *pad]
            packed_rows += range(i * t_max, i * t_max + n)
            row = {p: offset + j for j, p in enumerate(ps)}
            logit_rows += [row[p] for p in f.logit_positions]
            counts.append(len(f.logit_positions))
            offset += n
        flat = to_device(host_longs(ids + positions + writes + queries[0] + queries[1] + queries[2] + index
                                    + packed_rows + logit_rows + [f.key_length for f in forwards]), device)
        keys = pad_sequence([s.state.layout.keys(f.key_length).T for s, f in zip(seqs, forwards)], batch_first=True,
                            padding_value=PADDING)  # [B, Lmax, 2]: region, epoch
        keys = to_device(keys, device).permute(2, 0, 1).contiguous()
        read = to_device(pad_sequence([s.slots[: f.key_length] for s, f in zip(seqs, forwards)], batch_first=True), device)
        grid = count * t_max
        tokens, query, rest = flat[: 3 * offset].view(3, offset), flat[3 * offset: 3 * offset + 4 * grid].view(
            4, count, t_max), flat[3 * offset + 4 * grid:]  # query: position, region, epoch, packed row
        batch = PackedBatch(
            input_ids=tokens[0], positions=tokens[1], write_slots=tokens[2], read_slots=read,
            query_layout=query[:3], key_layout=keys, key_lengths=rest[-count:],
            query_index=None if count == 1 else query[3], packed_rows=None if count == 1 else rest[:offset],
        )
        return batch, rest[offset:-count], counts


class _Laps:
    """Seconds since the last lap, summed per phase into a new dict appended to `timings` (no-op
    without a list). sync=True waits for the device first, so the phase holds its work."""

    def __init__(self, timings: list[dict[str, float]] | None, device: torch.device):
        self.record: dict[str, float] | None = None
        if timings is not None:
            self.record, self.device, self.last = {}, device, time.perf_counter()
            timings.append(self.record)

    def __call__(self, phase: str, sync: bool = False) -> None:
        if self.record is None:
            return
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.record[phase] = self.record.get(phase, 0.0) + now - self.last
        self.last = now
