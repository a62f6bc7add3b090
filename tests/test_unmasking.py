"""Denoising rules (model/unmasking.py) against reference §3.5 and the Errata.

The schedule examples are §3.5's worked examples; the threshold semantics are those of the
reference's `block_unmask_confidence_threshold` as described in §3.5 (per-step carry, best
candidate always accepted, `steps += 1` per rejection while `i >= steps - 1`, re-evaluated after
each increment).
"""

from __future__ import annotations

import math

import pytest
import torch

from plandiff.model import InvalidRequestError

from plandiff.model.unmasking import (
    EPS, Sampling, ThresholdSchedule, commit_count, commit_mask, diffusion_steps, filter_logits, greedy_token, next_token,
    propose, propose_from_top_k, step_ratios, timesteps,
)

NO_FILTER = Sampling(temperature=0.0, top_p=None, top_k=None)


def simulate(blocks: tuple[int, ...], ratio: float) -> tuple[int, int, list[list[int]]]:
    """Drive the pd_* schedule: (scheduled steps, passes run, per-block commits per step).

    `m` is re-evaluated every step; the loop stops early when no masks remain (§3.5 step 8)."""
    steps = diffusion_steps(max(blocks), ratio)
    ratios = step_ratios(timesteps(steps))
    remaining = list(blocks)
    commits: list[list[int]] = [[] for _ in blocks]
    passes = 0
    for step in range(steps):
        if not any(remaining):
            break
        passes += 1
        for b, m in enumerate(remaining):
            if m == 0:
                continue
            k = commit_count(m, step, steps, ratios)
            assert 1 <= k <= m
            commits[b].append(k)
            remaining[b] -= k
    assert remaining == [0] * len(blocks), "every mask is committed by the last scheduled step"
    return steps, passes, commits


# ----------------------------------------------------------------------------- step count and timesteps


@pytest.mark.parametrize(
    "longest, ratio, expected",
    [(30, 1.0, 30), (30, 0.5, 15), (40, 0.25, 10), (7, 0.5, 3), (10, 0.29, 2), (1, 0.5, 1), (1, 1.0, 1),
     (3, 0.1, 1), (0, 1.0, 1), (0, 0.5, 1)],
)
def test_diffusion_steps(longest, ratio, expected):
    assert diffusion_steps(longest, ratio) == expected


def test_diffusion_steps_never_zero():
    for longest in range(0, 12):
        for ratio in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0):
            steps = diffusion_steps(longest, ratio)
            assert steps >= 1
            assert steps == max(1, int(longest * ratio))


@pytest.mark.parametrize("steps", [1, 2, 10, 15, 30, 257])
def test_timesteps_equal_linspace_fp32(steps):
    t = timesteps(steps)
    assert t.dtype == torch.float32
    assert t.shape == (steps + 1,)
    assert torch.equal(t, torch.linspace(1, 1e-3, steps + 1))
    assert t[0].item() == 1.0
    assert t[-1].item() == torch.tensor(1e-3, dtype=torch.float32).item()
    assert EPS == 1e-3


# ----------------------------------------------------------------------------- commit counts (§3.5 examples)


def test_ratio_one_commits_one_per_block_per_step():
    steps, passes, commits = simulate((30, 20, 10), 1.0)
    assert steps == 30 and passes == 30
    assert commits == [[1] * 30, [1] * 20, [1] * 10]


def test_ratio_half_on_30_block():
    steps, passes, commits = simulate((30,), 0.5)
    assert steps == 15 and passes == 15
    assert commits == [[1] + [2] * 13 + [3]]
    assert sum(commits[0]) == 30


def test_ratio_quarter_on_40_and_10_blocks():
    steps, passes, commits = simulate((40, 10), 0.25)
    assert steps == 10 and passes == 10
    assert commits[0] == [3] + [4] * 8 + [5]
    assert sum(commits[0]) == 40
    # The small block: at least one per step, done exactly at the last step.
    assert commits[1] == [1] * 10


def test_smaller_blocks_finish_early_at_half_ratio():
    steps, passes, commits = simulate((30, 20, 10), 0.5)
    assert steps == 15 and passes == 15
    assert [sum(c) for c in commits] == [30, 20, 10]
    assert len(commits[2]) == 10  # 1 per step, finishes before the round ends
    assert all(k >= 1 for c in commits for k in c)


def test_ratio_above_one_behaves_like_one():
    steps, passes, commits = simulate((30,), 2.0)
    assert steps == 60
    assert passes == 30  # early exit: no masks remain
    assert commits == [[1] * 30]


def test_first_step_floor_is_from_epsilon():
    """§3.5: at ratio 0.5 step 0 gives floor(30 × (1 − t1/t0)) = floor(1.998) = 1."""
    times = timesteps(15)
    assert 1.99 < 30 * (1 - times[1] / times[0]).item() < 2.0
    assert commit_count(30, 0, 15, step_ratios(times)) == 1


def test_commit_count_bounds():
    ratios = step_ratios(timesteps(10))
    assert commit_count(7, 9, 10, ratios) == 7  # last scheduled step commits everything left
    assert commit_count(1, 0, 10, ratios) == 1  # at least one
    assert commit_count(3, 0, 10, ratios) == 1  # int(3 × ~0.1) = 0 → 1
    for m in range(1, 50):
        for step in range(10):
            assert 1 <= commit_count(m, step, 10, ratios) <= m


def test_commit_count_last_step_only_when_step_is_last():
    times = timesteps(4)
    assert commit_count(100, 3, 4, step_ratios(times)) == 100
    assert commit_count(100, 2, 4, step_ratios(times)) == int(100 * (1 - times[3] / times[2]).item())
    assert commit_count(100, 2, 4, step_ratios(times)) < 100


def test_commit_count_is_the_references_fp32_tensor_product():
    """The count is taken in Python from the round's ratios; it must equal the reference's
    int(masked × (1 − t[i+1] / t[i])) on fp32 tensors for every count, step and schedule."""
    for steps in (2, 3, 7, 10, 15, 30, 64, 128, 256):
        times = timesteps(steps)
        ratios = step_ratios(times)
        for step in range(steps - 1):
            ratio = 1 - times[step + 1] / times[step]
            for m in range(1, 300):
                assert commit_count(m, step, steps, ratios) == min(max(1, int(m * ratio)), m), (steps, step, m)


def test_commit_mask_ranks_within_each_span():
    """Many spans' rows at once: the k best of each span commit (ties in row order), adaptive's
    `hi` adds every row at or above it, threshold's `lo` rejects candidates after the best."""
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3, 0.8, 0.2, 0.95, 0.4])
    rows, inf = torch.tensor([3, 2, 4]), float("inf")
    commit = commit_mask(scores, rows, torch.tensor([1, 1, 2]), torch.full((3,), -inf), torch.full((3,), inf))
    assert commit.tolist() == [False, True, False, True, False, True, False, True, False]
    ties = commit_mask(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([3]), torch.tensor([2]),
                       torch.tensor([-inf]), torch.tensor([inf]))
    assert ties.tolist() == [True, True, False]
    adaptive = commit_mask(scores, rows, torch.tensor([1, 1, 1]), torch.full((3,), -inf), torch.full((3,), 0.5))
    assert adaptive.tolist() == [False, True, True, True, False, True, False, True, False]
    threshold = commit_mask(scores, rows, torch.tensor([3, 2, 3]), torch.full((3,), 0.85), torch.full((3,), inf))
    assert threshold.tolist() == [False, True, False, True, False, False, False, True, False]
    # against a per-span torch.topk on random scores without ties
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        rows = torch.randint(1, 12, (6,), generator=g)
        scores = torch.rand(int(rows.sum()), generator=g)
        k = torch.stack([torch.randint(0, int(n) + 1, (1,), generator=g)[0] for n in rows])
        got = commit_mask(scores, rows, k, torch.full((6,), -inf), torch.full((6,), inf))
        want = torch.zeros_like(got)
        start = 0
        for n, kk in zip(rows.tolist(), k.tolist()):
            want[start + torch.topk(scores[start:start + n], kk).indices] = True
            start += n
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------- threshold schedule


def reference_threshold_steps(steps: int, step: int, rejections: int) -> int:
    """§3.5: each rejection does `steps += 1` if i >= steps - 1, re-checking after every increment."""
    for _ in range(rejections):
        if step >= steps - 1:
            steps += 1
    return steps


def accept(sched: ThresholdSchedule, span: int, scores: torch.Tensor, step: int) -> torch.Tensor:
    """The threshold order's acceptance of a span's candidates as a step runs it: commit_mask with
    the candidates' count and lo = τ (RequestState.commit_rule), then the rejections carried
    (RequestState._denoise_step)."""
    k = len(scores)
    accepted = commit_mask(scores, torch.tensor([k]), torch.tensor([k]), torch.tensor([sched.threshold]),
                           torch.tensor([float("inf")]))
    sched.reject(span, int((~accepted).sum()), step)
    return accepted


def test_best_candidate_always_accepted():
    sched = ThresholdSchedule(steps=5, threshold=0.9, carry=[0])
    accepted = accept(sched, 0, torch.tensor([0.2, 0.1, 0.05]), step=0)
    assert accepted.tolist() == [True, False, False]
    assert sched.carry == [2]


def test_accepts_at_or_above_threshold():
    sched = ThresholdSchedule(steps=5, threshold=0.5, carry=[0, 0])
    accepted = accept(sched, 1, torch.tensor([0.9, 0.5, 0.49, 0.7, float("-inf")]), step=1)
    assert accepted.tolist() == [True, True, False, True, False]
    assert sched.carry == [0, 2]
    assert sched.steps == 5  # not the last step: no extension


def test_carry_is_the_number_of_rejections_of_the_last_step():
    sched = ThresholdSchedule(steps=10, threshold=0.9, carry=[0])
    accept(sched, 0, torch.tensor([0.95, 0.1, 0.2]), step=0)
    assert sched.carry == [2]
    accept(sched, 0, torch.tensor([0.95, 0.3, 0.2, 0.1]), step=1)
    assert sched.carry == [3]
    accept(sched, 0, torch.tensor([0.95, 0.99]), step=2)
    assert sched.carry == [0]


def test_carry_feeds_candidates():
    sched = ThresholdSchedule(steps=10, threshold=0.9, carry=[0, 0])
    assert sched.candidates(0, masked=20, step=0, span_length=22) == 2
    accept(sched, 0, torch.tensor([0.95, 0.1]), step=0)  # one rejection
    assert sched.candidates(0, masked=19, step=1, span_length=22) == 19 // 9 + 1
    assert sched.candidates(1, masked=19, step=1, span_length=22) == 19 // 9  # other span unaffected


def test_candidates_base_and_clamps():
    sched = ThresholdSchedule(steps=5, threshold=0.9, carry=[0])
    assert sched.candidates(0, masked=20, step=0, span_length=22) == 4
    assert sched.candidates(0, masked=3, step=4, span_length=22) == 3
    assert sched.candidates(0, masked=3, step=3, span_length=22) == 1  # 3 // 2
    assert sched.candidates(0, masked=1, step=0, span_length=22) == 1  # floor at 1
    sched.steps = 8  # extended: past the original steps the base is 0 → 1
    assert sched.candidates(0, masked=9, step=5, span_length=22) == 1
    sched.carry[0] = 3
    assert sched.candidates(0, masked=9, step=5, span_length=22) == 4
    sched.carry[0] = 10
    assert sched.candidates(0, masked=5, step=1, span_length=7) == 7  # clamped to the span length
    sched.carry[0] = 0
    assert sched.candidates(0, masked=20, step=0, span_length=3) == 3


def test_rejection_before_last_step_does_not_extend():
    sched = ThresholdSchedule(steps=5, threshold=0.9, carry=[0])
    accept(sched, 0, torch.tensor([0.95, 0.1, 0.1, 0.1]), step=3)
    assert sched.steps == 5
    assert sched.initial_steps == 5


def test_rejections_on_last_step_extend_by_one():
    sched = ThresholdSchedule(steps=5, threshold=0.9, carry=[0])
    accept(sched, 0, torch.tensor([0.95, 0.1, 0.1, 0.1]), step=4)
    # First rejection: 4 >= 4 → steps 6; then 4 >= 5 is false: exactly one extension.
    assert sched.steps == 6 == reference_threshold_steps(5, 4, 3)
    assert sched.carry == [3]
    assert sched.initial_steps == 5


def test_second_span_on_same_step_sees_extended_steps():
    sched = ThresholdSchedule(steps=5, threshold=0.9, carry=[0, 0])
    accept(sched, 0, torch.tensor([0.95, 0.1]), step=4)
    assert sched.steps == 6
    accept(sched, 1, torch.tensor([0.95, 0.1]), step=4)
    assert sched.steps == 6  # 4 < 5 now
    accept(sched, 1, torch.tensor([0.95, 0.1, 0.2]), step=5)
    assert sched.steps == 7


def test_no_rejection_on_last_step_does_not_extend():
    sched = ThresholdSchedule(steps=5, threshold=0.9, carry=[0])
    accept(sched, 0, torch.tensor([0.95, 0.92]), step=4)
    assert sched.steps == 5 and sched.carry == [0]


@pytest.mark.parametrize("steps, step, rejections", [(5, 4, 1), (5, 4, 5), (5, 7, 4), (3, 9, 2), (6, 2, 3)])
def test_extension_matches_reference_semantics(steps, step, rejections):
    sched = ThresholdSchedule(steps=steps, threshold=0.9, carry=[0])
    scores = torch.tensor([0.95] + [0.1] * rejections)
    accept(sched, 0, scores, step=step)
    assert sched.steps == reference_threshold_steps(steps, step, rejections)
    assert sched.carry == [rejections]


def drive_threshold(length: int, ratio: float, score: float, threshold: float) -> tuple[list[int], int]:
    """One span, constant candidate score: commits per pass and the schedule's final step count."""
    steps = diffusion_steps(length, ratio)
    sched = ThresholdSchedule(steps, threshold, [0])
    masked, step, commits = length, 0, []
    while step < sched.steps and masked:
        k = sched.candidates(0, masked, step, length + 2)
        scores = torch.tensor([score] * min(k, masked) + [float("-inf")] * (k - min(k, masked)))
        accepted = accept(sched, 0, scores, step)
        commits.append(int(accepted.sum()))
        masked -= commits[-1]
        step += 1
    assert masked == 0
    return commits, sched.steps


def test_threshold_all_confident_follows_base_schedule():
    commits, steps = drive_threshold(20, 0.5, score=0.99, threshold=0.9)
    assert commits == [2] * 10
    assert steps == 10


def test_threshold_never_confident_commits_one_per_step_and_extends():
    commits, steps = drive_threshold(20, 0.5, score=0.1, threshold=0.9)
    assert commits == [1] * 20  # only the best candidate each step
    # Extended one step per pass from the original last step (9) on; on pass 19 the carried -inf
    # picks are rejected too and extend once more, but no mask remains, so the round stops at 20.
    assert steps == 21


def test_threshold_at_ratio_one_is_commit_best():
    """Errata 4: at steps_ratio 1.0, k stays 1 and the threshold is never consulted."""
    commits, steps = drive_threshold(12, 1.0, score=0.0, threshold=0.9)
    assert commits == [1] * 12 and steps == 12


# ----------------------------------------------------------------------------- Sampling validation


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.2), dict(top_k=0), dict(top_k=-3)],
)
def test_sampling_rejects_bad_values(kwargs):
    with pytest.raises(InvalidRequestError) as err:
        Sampling(**kwargs)
    assert err.value.field == next(iter(kwargs))


def test_sampling_defaults_and_valid_edges():
    s = Sampling()
    assert (s.temperature, s.top_p, s.top_k) == (0.0, None, 50)
    Sampling(temperature=0.0, top_p=1.0, top_k=1)
    Sampling(temperature=2.0, top_p=1e-6, top_k=None)


# ----------------------------------------------------------------------------- filter_logits


def kept(logits: torch.Tensor) -> list[int]:
    low = torch.finfo(logits.dtype).min
    return (logits > low).nonzero().flatten().tolist()


def test_top_k_keeps_ties_at_kth_value():
    logits = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 0.0])
    out = filter_logits(logits, Sampling(top_k=2))
    assert kept(out) == [0, 1, 2, 3]
    assert out[4] == torch.finfo(torch.float32).min
    assert torch.equal(out[:4], logits[:4])


def test_top_k_plain_and_larger_than_vocab():
    logits = torch.tensor([0.1, 0.4, 0.3, 0.2])
    assert kept(filter_logits(logits, Sampling(top_k=2))) == [1, 2]
    assert kept(filter_logits(logits, Sampling(top_k=1))) == [1]
    assert torch.equal(filter_logits(logits, Sampling(top_k=100)), logits)
    assert torch.equal(filter_logits(logits, NO_FILTER), logits)


def test_top_k_is_per_row():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    out = filter_logits(logits, Sampling(top_k=1))
    assert kept(out[0]) == [2] and kept(out[1]) == [0]


def test_top_p_always_keeps_the_most_probable():
    logits = torch.tensor([0.0, 10.0, 0.0])
    out = filter_logits(logits, Sampling(top_p=1e-4, top_k=None))
    assert kept(out) == [1]
    # even when the top token alone is far above top_p
    out = filter_logits(torch.tensor([1.0, 1.0, 5.0]), Sampling(top_p=0.01, top_k=None))
    assert kept(out) == [2]


def test_top_p_cutoff_and_order_independence():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log()
    # cumsum 0.5, 0.8, 1.0: > 0.6 removes [F, T, T], shifted → keep the first two
    assert kept(filter_logits(logits, Sampling(top_p=0.6, top_k=None))) == [0, 1]
    assert kept(filter_logits(logits, Sampling(top_p=0.4, top_k=None))) == [0]
    assert kept(filter_logits(logits, Sampling(top_p=0.9, top_k=None))) == [0, 1, 2]
    perm = torch.tensor([2, 0, 1])
    out = filter_logits(logits[perm], Sampling(top_p=0.6, top_k=None))
    assert kept(out) == [1, 2]  # the positions of 0.5 and 0.3 after permutation


def test_top_p_one_is_a_no_op():
    logits = torch.randn(3, 17, generator=torch.Generator().manual_seed(0))
    assert torch.equal(filter_logits(logits, Sampling(top_p=1.0, top_k=None)), logits)


def test_temperature_divides():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.equal(filter_logits(logits, Sampling(temperature=2.0, top_k=None)), logits / 2.0)
    assert torch.equal(filter_logits(logits, Sampling(temperature=0.5, top_k=None)), logits / 0.5)
    assert torch.equal(filter_logits(logits, Sampling(temperature=0.0, top_k=None)), logits)


def test_temperature_is_applied_before_top_p():
    logits = torch.tensor([2.0, 1.0, 0.0])
    # T=1: p ≈ .665, .245, .090 → only the top survives top_p 0.6
    assert kept(filter_logits(logits, Sampling(temperature=1.0, top_p=0.6, top_k=None))) == [0]
    # T=10: p ≈ .367, .332, .301 → cumsum .367, .699 → two survive
    assert kept(filter_logits(logits, Sampling(temperature=10.0, top_p=0.6, top_k=None))) == [0, 1]


def test_top_p_then_top_k():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert kept(filter_logits(logits, Sampling(top_p=0.99, top_k=2))) == [0, 1]
    assert kept(filter_logits(logits, Sampling(top_p=0.5, top_k=3))) == [0]


def test_filter_stays_in_dtype_with_dtype_min():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.bfloat16)
    out = filter_logits(logits, Sampling(top_k=2))
    assert out.dtype == torch.bfloat16
    assert out[3] == torch.finfo(torch.bfloat16).min and out[2] == torch.finfo(torch.bfloat16).min


# ----------------------------------------------------------------------------- propose / next_token


@pytest.fixture()
def logits() -> torch.Tensor:
    return torch.randn(6, 80, generator=torch.Generator().manual_seed(1)) * 3


def test_propose_greedy_x0_is_argmax(logits):
    for order in ("entropy", "confidence", "margin", "threshold"):
        x0, scores = propose(logits, NO_FILTER, order, None)
        assert torch.equal(x0, logits.argmax(-1))
        assert scores.shape == (6,)


def test_propose_confidence_is_max_probability(logits):
    p = torch.softmax(logits, -1)
    for order in ("confidence", "threshold"):
        _, scores = propose(logits, NO_FILTER, order, None)
        assert torch.allclose(scores, p.max(-1).values)


def test_propose_entropy_score(logits):
    p = torch.softmax(logits, -1)
    expected = torch.tensor([sum(float(pi) * math.log(float(pi) + 1e-10) for pi in row) for row in p])
    _, scores = propose(logits, NO_FILTER, "entropy", None)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert (scores <= 0).all()


def test_propose_entropy_orders_peaked_before_flat():
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    _, scores = propose(logits, NO_FILTER, "entropy", None)
    assert scores[0] > scores[1]
    assert torch.isclose(scores[1], torch.tensor(-math.log(4.0)), atol=1e-5)


def test_propose_margin_is_top1_minus_top2(logits):
    p = torch.softmax(logits, -1)
    top = p.sort(-1, descending=True).values
    _, scores = propose(logits, NO_FILTER, "margin", None)
    assert torch.allclose(scores, top[:, 0] - top[:, 1])
    assert (scores >= 0).all()


def test_propose_probabilities_are_after_top_k(logits):
    """The default reference profile (top_k 50) changes the scores, not the argmax (Errata 1)."""
    x0_f, conf_f = propose(logits, Sampling(), "confidence", None)
    x0_n, conf_n = propose(logits, NO_FILTER, "confidence", None)
    assert torch.equal(x0_f, x0_n)
    assert (conf_f > conf_n).all()  # mass of the removed 30 tokens is redistributed
    kth = logits.topk(50, -1).values[:, -1:]
    expected = torch.softmax(logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min), -1).max(-1).values
    assert torch.allclose(conf_f, expected)


def tied_logits(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Rows with many equal values (in half-steps), so the k-th value is often tied beyond the k."""
    return (torch.randn(64, 200, generator=torch.Generator().manual_seed(seed)) * 4).round().div(2).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_proposals_from_the_top_k_equal_the_full_vocabulary_s(dtype, k):
    """CUDA's shortcut (the k best logits and the count of ties at the k-th) against the reference's
    passes over the whole row: the same proposals, the scores up to the softmax sum's order."""
    logits = tied_logits(dtype)
    logits[3] = 0  # one row all ties
    sampling = Sampling(top_k=k)
    for order in ("entropy", "confidence", "margin"):
        x0, scores = propose(logits, sampling, order, None)
        x0_k, scores_k = propose_from_top_k(logits, k, order)
        assert torch.equal(x0_k, x0)
        assert scores_k.dtype == scores.dtype
        tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 8e-3, "atol": 1e-5}
        torch.testing.assert_close(scores_k, scores, **tolerance)


@pytest.mark.parametrize("top_k", [None, 1, 3, 50])
def test_a_greedy_token_is_the_argmax_of_the_filtered_logits_with_banned_ids(top_k):
    """`greedy_token` skips the filter's passes; with as many banned ids as k above the best allowed
    one, the reference's row is all dtype min and its argmax is id 0."""
    logits = tied_logits(torch.bfloat16, seed=1)
    low = torch.finfo(logits.dtype).min
    for banned_ids in ([], [5], list(range(0, 200, 3)), logits[0].topk(60).indices.tolist()):
        banned = torch.zeros(200, dtype=torch.bool)
        banned[banned_ids] = True
        expected = filter_logits(logits, Sampling(top_k=top_k)).masked_fill(banned, low).argmax(-1)
        assert torch.equal(greedy_token(logits, banned, top_k), expected)


def test_propose_sampled_is_seeded_and_consistent(logits):
    s = Sampling(temperature=1.0, top_k=None)
    x0a, ca = propose(logits, s, "confidence", torch.Generator().manual_seed(7))
    x0b, cb = propose(logits, s, "confidence", torch.Generator().manual_seed(7))
    assert torch.equal(x0a, x0b) and torch.equal(ca, cb)
    p = torch.softmax(logits, -1)
    assert torch.allclose(ca, p.gather(-1, x0a[:, None]).squeeze(-1))
    # top_k 1 leaves only the argmax to sample
    x0, conf = propose(logits, Sampling(temperature=1.0, top_k=1), "confidence", torch.Generator().manual_seed(0))
    assert torch.equal(x0, logits.argmax(-1))
    assert torch.allclose(conf, torch.ones(6))


def test_next_token():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert next_token(logits, Sampling(), None) == 1
    s = Sampling(temperature=1.0, top_k=1)
    assert next_token(filter_logits(logits, s), s, torch.Generator().manual_seed(3)) == 1
    s = Sampling(temperature=1.0, top_k=None)
    draws = {next_token(logits, s, torch.Generator().manual_seed(i)) for i in range(40)}
    assert draws <= {0, 1, 2, 3} and len(draws) > 1
    assert next_token(logits, s, torch.Generator().manual_seed(5)) == next_token(
        logits, s, torch.Generator().manual_seed(5))
