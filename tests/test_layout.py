"""Who may attend to whom (model/layout.py), against the rules of reference §3.4 and §5.2.

Layouts are built as the generation state machine builds them: prompt and plan are causal
(region -1) in epoch r; a round's scaffold is one region per span (sparse) or one region for the
round (dense), in the round's epoch; the <sync/> is causal in epoch r+1. The independent reference
is the training mask walker of §5.2 (v2 sparse / v3 dense), written with explicit loops over a
dense N×N list of bools and never looking at region or epoch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import torch

from plandiff.model.layout import CAUSAL, PADDING, Layout, allowed, mask_rows

# token kinds of the reference walker
TEXT, OPEN, SLOT, CLOSE, SYNC = "text", "<async>", "slot", "</async>", "<sync/>"


@dataclass
class Built:
    layout: Layout
    kinds: list[str]
    prompt: range
    plans: list[range] = field(default_factory=list)  # per round
    spans: list[list[range]] = field(default_factory=list)  # per round, each incl. both tags
    syncs: list[int] = field(default_factory=list)
    trailing: int | None = None

    def __len__(self) -> int:
        return len(self.kinds)


def build(prompt: int, rounds: list[tuple[int, list[int]]], dense: bool, trailing: bool = False) -> Built:
    """rounds: (plan tokens, [slots per span]); rounds are joined by a <sync/>. `trailing` adds
    training's final <|im_end|> after the last round's spans, in the same epoch (no sync)."""
    layout, kinds = Layout(), []
    built = Built(layout, kinds, range(0, prompt))
    layout.append(CAUSAL, 0, prompt)
    kinds += [TEXT] * prompt
    next_region = 0
    for r, (plan, slots) in enumerate(rounds):
        if r > 0:
            built.syncs.append(len(kinds))
            layout.append(CAUSAL, r)
            kinds.append(SYNC)
        start = len(kinds)
        layout.append(CAUSAL, r, plan)
        kinds += [TEXT] * plan
        built.plans.append(range(start, len(kinds)))
        round_spans = []
        dense_region = None
        if dense:
            dense_region, next_region = next_region, next_region + 1
        for n in slots:
            if dense:
                region = dense_region
            else:
                region, next_region = next_region, next_region + 1
            s = len(kinds)
            layout.append(region, r, n + 2)
            kinds += [OPEN] + [SLOT] * n + [CLOSE]
            round_spans.append(range(s, len(kinds)))
        built.spans.append(round_spans)
    if trailing:
        built.trailing = len(kinds)
        layout.append(CAUSAL, len(rounds) - 1)
        kinds.append(TEXT)
    assert len(layout) == len(kinds)
    return built


def reference_matrix(kinds: list[str], dense: bool) -> list[list[bool]]:
    """§5.2's walker: start causal; a block sees itself and is hidden from everyone else; a sync
    and every later row see all blocks completed so far. Dense (v3): adjacent blocks merge."""
    n = len(kinds)
    m = [[c <= r for c in range(n)] for r in range(n)]
    done: list[tuple[int, int]] = []
    start = None
    for i, kind in enumerate(kinds):
        if kind == OPEN:
            if dense and i > 0 and kinds[i - 1] == CLOSE:
                continue  # merged into the open block
            start = i
        elif kind == CLOSE:
            if dense and i + 1 < n and kinds[i + 1] == OPEN:
                continue
            end = i
            for r in range(n):
                for c in range(start, end + 1):
                    if start <= r <= end:
                        m[r][c] = True
                    else:
                        m[r][c] = False
            done.append((start, end))
            start = None
        elif kind == SYNC:
            for b0, b1 in done:
                for r in range(i, n):
                    for c in range(b0, b1 + 1):
                        m[r][c] = True
    return m


def full(layout: Layout) -> torch.Tensor:
    n = len(layout)
    return mask_rows(layout, torch.arange(n), n)


def as_tensor(m: list[list[bool]]) -> torch.Tensor:
    return torch.tensor(m, dtype=torch.bool)


def cols(m: torch.Tensor, rows, columns) -> torch.Tensor:
    return m[list(rows)][:, list(columns)]


ROUNDS = [(5, [3, 2, 4]), (3, [2, 3])]


@pytest.fixture(params=[False, True], ids=["sparse", "dense"])
def dense(request) -> bool:
    return request.param


@pytest.fixture()
def case(dense) -> tuple[Built, torch.Tensor]:
    built = build(4, ROUNDS, dense, trailing=True)
    return built, full(built.layout)


# ----------------------------------------------------------------------------- Layout container


def test_layout_append_truncate_tensors():
    layout = Layout()
    layout.append(CAUSAL, 0, 3)
    layout.append(7, 1, 2)
    layout.append(CAUSAL, 2)
    assert len(layout) == 6
    assert layout.region == [-1, -1, -1, 7, 7, -1]
    assert layout.epoch == [0, 0, 0, 1, 1, 2]
    region, epoch = layout.tensors()
    assert region.dtype == torch.long and epoch.dtype == torch.long
    assert region.tolist() == layout.region and epoch.tolist() == layout.epoch
    layout.truncate(4)
    assert len(layout) == 4 and layout.region == [-1, -1, -1, 7] and layout.epoch == [0, 0, 0, 1]


# ----------------------------------------------------------------------------- hand-built two-round layout


def test_prompt_and_plan_are_causal(case):
    built, m = case
    causal_prefix = list(built.prompt) + list(built.plans[0])
    sub = cols(m, causal_prefix, causal_prefix)
    assert torch.equal(sub, torch.tril(torch.ones_like(sub)))
    # No prefix row sees anything after itself.
    for q in causal_prefix:
        assert not m[q, q + 1:].any()


def test_causal_rows_only_see_the_past_everywhere(case):
    built, m = case
    region = torch.tensor(built.layout.region)
    for q in range(len(built)):
        if region[q] == CAUSAL:
            assert not m[q, q + 1:].any(), q


def test_span_rows_see_prefix_and_whole_own_span(case):
    built, m = case
    for r, spans in enumerate(built.spans):
        scaffold_start = spans[0].start
        for span in spans:
            # The whole prefix before the round's scaffold (prompt, plans, earlier spans, syncs).
            assert cols(m, span, range(scaffold_start)).all()
            # Own span, both tags included, in both directions.
            assert cols(m, span, span).all()
            assert m[span.start, span.stop - 1] and m[span.stop - 1, span.start]


def test_sparse_spans_never_see_siblings():
    built = build(4, ROUNDS, dense=False, trailing=True)
    m = full(built.layout)
    for spans in built.spans:
        for a in spans:
            for b in spans:
                if a != b:
                    assert not cols(m, a, b).any(), (a, b)


def test_dense_spans_see_the_whole_round_scaffold():
    built = build(4, ROUNDS, dense=True, trailing=True)
    m = full(built.layout)
    for r, spans in enumerate(built.spans):
        scaffold = range(spans[0].start, spans[-1].stop)
        assert cols(m, scaffold, scaffold).all()
        # ... but not the plan or sync that come after the scaffold
        after = [p for p in range(scaffold.stop, len(built))]
        assert not cols(m, scaffold, after).any()


def test_dense_rounds_are_separate_regions():
    built = build(4, ROUNDS, dense=True, trailing=True)
    m = full(built.layout)
    round1 = range(built.spans[0][0].start, built.spans[0][-1].stop)
    round2 = range(built.spans[1][0].start, built.spans[1][-1].stop)
    assert not cols(m, round1, round2).any()  # earlier round never sees the later one
    assert cols(m, round2, round1).all()  # later round sees the earlier, through the sync


def test_prefix_rows_never_see_the_scaffold(case):
    built, m = case
    for r, spans in enumerate(built.spans):
        scaffold = range(spans[0].start, spans[-1].stop)
        prefix = range(scaffold.start)
        assert not cols(m, prefix, scaffold).any()


def test_sync_and_every_later_token_see_all_earlier_spans(case):
    built, m = case
    sync = built.syncs[0]
    round1 = [p for s in built.spans[0] for p in s]
    assert cols(m, range(sync, len(built)), round1).all()
    assert m[sync, :sync + 1].all()  # the sync sees everything before it, and itself


def test_round2_span_sees_round1_spans(case):
    built, m = case
    round1 = [p for s in built.spans[0] for p in s]
    for span in built.spans[1]:
        assert cols(m, span, round1).all()
        assert cols(m, span, [built.syncs[0]]).all()
        assert cols(m, span, built.plans[1]).all()


def test_round2_plan_sees_everything_before_it(case):
    built, m = case
    for q in built.plans[1]:
        assert m[q, : q + 1].all()


def test_trailing_end_without_sync_does_not_see_its_rounds_spans(case):
    built, m = case
    t = built.trailing
    round2 = [p for s in built.spans[1] for p in s]
    round1 = [p for s in built.spans[0] for p in s]
    assert not m[t, round2].any()
    assert m[t, round1].all()  # joined by the sync
    assert m[t, list(built.plans[1])].all()
    assert m[t, built.syncs[0]]
    assert m[t, t]


def test_hand_layout_matches_reference(case, dense):
    built, m = case
    assert torch.equal(m, as_tensor(reference_matrix(built.kinds, dense)))


def test_single_round_final_answer_matches_reference(dense):
    """The inference shape of a last round: plan, scaffold, nothing after it."""
    built = build(6, [(4, [2, 5, 1, 3])], dense)
    assert torch.equal(full(built.layout), as_tensor(reference_matrix(built.kinds, dense)))


def test_reference_walker_sanity():
    """The reference itself is not trivially equal to a causal or all-True mask."""
    built = build(2, [(2, [1, 1]), (1, [1])], dense=False, trailing=True)
    ref = as_tensor(reference_matrix(built.kinds, dense=False))
    n = len(built)
    assert not torch.equal(ref, torch.tril(torch.ones(n, n, dtype=torch.bool)))
    a, b = built.spans[0]
    assert ref[a.start, a.stop - 1] and not ref[b.start, a.start] and not ref[a.start, b.start]


# ----------------------------------------------------------------------------- random layouts


def random_rounds(rng: random.Random) -> tuple[int, list[tuple[int, list[int]]], bool]:
    prompt = rng.randint(1, 6)
    rounds = [(rng.randint(0, 5), [rng.randint(0, 5) for _ in range(rng.randint(1, 3))])
              for _ in range(rng.randint(1, 4))]
    return prompt, rounds, rng.random() < 0.5


@pytest.mark.parametrize("seed", range(12))
def test_random_layouts_match_reference(seed, dense):
    prompt, rounds, trailing = random_rounds(random.Random(seed))
    built = build(prompt, rounds, dense, trailing)
    m = full(built.layout)
    ref = as_tensor(reference_matrix(built.kinds, dense))
    assert m.shape == (len(built), len(built))
    mismatch = (m != ref).nonzero().tolist()
    assert not mismatch, f"{built.kinds}: first mismatches (q, k) {mismatch[:5]}"


@pytest.mark.parametrize("seed", range(8))
def test_mask_rows_equals_rows_of_full_matrix(seed, dense):
    rng = random.Random(100 + seed)
    prompt, rounds, trailing = random_rounds(rng)
    built = build(prompt, rounds, dense, trailing)
    n = len(built)
    m = full(built.layout)
    for _ in range(5):
        k = rng.randint(1, n)
        positions = rng.sample(range(n), k)  # arbitrary order, no duplicates
        rows = mask_rows(built.layout, torch.tensor(positions), n)
        assert rows.shape == (k, n) and rows.dtype == torch.bool
        assert torch.equal(rows, m[positions])
        # A shorter key length (a cache covering only part of the sequence) is a column prefix.
        key_length = rng.randint(max(positions) + 1, n)
        rows = mask_rows(built.layout, torch.tensor(positions), key_length)
        assert rows.shape == (k, key_length)
        assert torch.equal(rows, m[positions][:, :key_length])


def test_mask_rows_with_repeated_positions():
    built = build(3, ROUNDS, dense=False)
    m = full(built.layout)
    positions = [built.spans[0][1].start, 0, built.spans[0][1].start, len(built) - 1]
    assert torch.equal(mask_rows(built.layout, torch.tensor(positions), len(built)), m[positions])


def test_allowed_on_raw_tensors():
    # Two spans of one round (regions 0, 1) after a 2-token causal prefix; then a sync (epoch 1).
    region = torch.tensor([-1, -1, 0, 0, 1, 1, -1])
    epoch = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    pos = torch.arange(7)
    got = allowed(pos, region, epoch, pos, region, epoch)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(got, expected)


def test_padding_keys_are_seen_by_nobody():
    """A padded batch's filler keys (region PADDING) are invisible to every query, causal, span,
    later epoch or padding itself."""
    q_pos = torch.tensor([5, 6, 7, 8])
    q_region = torch.tensor([CAUSAL, 0, 1, PADDING])
    q_epoch = torch.tensor([0, 0, 3, 0])
    k_pos = torch.arange(4)
    k_region = torch.tensor([CAUSAL, PADDING, 0, PADDING])
    k_epoch = torch.tensor([0, 0, 0, 2])
    mask = allowed(q_pos, q_region, q_epoch, k_pos, k_region, k_epoch)
    assert not mask[:, [1, 3]].any()
    assert mask[:, 0].all()  # the causal key stays visible
