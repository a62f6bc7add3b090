"""The paged attention kernel (model/paged_attention.py, Triton; every packed forward's attention on
CUDA) against SDPA over gathered keys with the layout as a bias (the CPU path). Here it runs in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET): the same program as on a GPU."""

import pytest
import torch
import torch.nn.functional as F

from plandiff.model.layout import CAUSAL, PADDING, allowed
from plandiff.model.network import Rotary, rotate
from plandiff.model.paged_attention import KernelConfig, paged_attention
from plandiff.model.rotary_store import rotate_and_store

from .conftest import DEVICE
from .test_engine import FORCED, alone, batched


def random_step(seed, count=3, width=5, length=70, heads=8, kv_heads=2, d=16, slots=400):
    """A step's queries and their requests' keys in a pool: random layouts (regions, epochs,
    positions), each request with its own number of keys, padding past them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(count * width, heads, d, generator=g).transpose(0, 1)  # [heads, rows, d], not contiguous
    keys, values = torch.randn(kv_heads, slots, d, generator=g), torch.randn(kv_heads, slots, d, generator=g)
    read = torch.stack([torch.randperm(slots, generator=g)[:length] for _ in range(count)])
    lengths = torch.randint(1, length + 1, (count,), generator=g)
    key_region = torch.randint(CAUSAL, 3, (count, length), generator=g)
    key_region[:, 0] = CAUSAL  # every query sees at least the first key
    key_epoch = torch.randint(0, 3, (count, length), generator=g)
    for i, n in enumerate(lengths.tolist()):
        key_region[i, n:] = PADDING
    query = torch.stack([torch.randint(0, length, (count, width), generator=g),
                         torch.randint(CAUSAL, 3, (count, width), generator=g),
                         torch.randint(0, 3, (count, width), generator=g)])
    step = q, keys, values, read, query, torch.stack([key_region, key_epoch]), lengths
    return tuple(x.to(DEVICE) for x in step)  # PLANDIFF_TEST_DEVICE=cuda: the compiled kernel


def reference(q, keys, values, read, query, key_layout):
    """SDPA over gathered keys with the layout rule as a boolean mask → [count × width, heads × d]."""
    heads, _, d = q.shape
    count, width = query.shape[1:]
    group = heads // keys.shape[0]
    mask = allowed(query[0], query[1], query[2], torch.arange(read.shape[1], device=read.device), key_layout[0],
                   key_layout[1])
    k, v = (x[:, read].transpose(0, 1).repeat_interleave(group, 1) for x in (keys, values))  # [count, heads, L, d]
    queries = q.reshape(heads, count, width, d).transpose(0, 1)
    out = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask[:, None])
    return out.transpose(1, 2).reshape(count * width, heads * d)


@pytest.mark.parametrize("seed", range(4))
def test_the_kernel_is_attention_under_the_layout_rule(seed):
    q, keys, values, read, query, key_layout, lengths = random_step(seed)
    want = reference(q, keys, values, read, query, key_layout)
    got = paged_attention(q, keys, values, q.shape[1], read, query, key_layout, lengths, None)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("config", [KernelConfig(32, 32, 8, 2), KernelConfig(16, 128, 4, 4)])
def test_every_launch_configuration_is_the_same_attention(config):
    """`plandiff bench attention` times launches other than the default: each is the same
    attention (block sizes change only how keys and query rows are tiled), split or not."""
    q, keys, values, read, query, key_layout, lengths = random_step(5, length=150, slots=500)
    want = reference(q, keys, values, read, query, key_layout)
    for splits in (1, 2):
        got = paged_attention(q, keys, values, q.shape[1], read, query, key_layout, lengths, None, splits=splits,
                              config=config)
        assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("splits", [2, 3])
def test_a_request_s_keys_split_into_chunks_give_the_same_attention(splits):
    """A small step splits each request's keys into chunks (one program each) and merges their
    partial softmaxes: the same attention, for requests with fewer keys than chunks too."""
    q, keys, values, read, query, key_layout, lengths = random_step(11, count=2, width=3, length=300, slots=700)
    lengths[1] = 40  # all of it in the first chunk: the others are empty
    key_layout[0, 1, 40:] = PADDING
    want = reference(q, keys, values, read, query, key_layout)
    got = paged_attention(q, keys, values, q.shape[1], read, query, key_layout, lengths, None, splits=splits)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("splits", [None, 2])
def test_packed_queries_land_in_their_rows_and_padding_queries_nowhere(splits):
    """Queries packed (T rows, fewer than the grid's): each grid query writes the row `query_index`
    names; grid rows marked PADDING write nothing (nor their chunks)."""
    q, keys, values, read, query, key_layout, lengths = random_step(7, count=2, width=4, length=200)
    real = [3, 2]  # queries of each request; the rest of its grid row is padding
    index = torch.zeros(2, 4, dtype=torch.long, device=DEVICE)
    index[0, :3], index[1, :2] = torch.tensor([4, 0, 2]), torch.tensor([1, 3])
    query[1, 0, 3] = query[1, 1, 2:] = PADDING
    packed = torch.zeros_like(q[:, :5])
    for b, n in enumerate(real):
        packed[:, index[b, :n]] = q[:, b * 4: b * 4 + n]
    got = paged_attention(packed, keys, values, 5, read, query, key_layout, lengths, index, splits=splits)
    want = reference(q, keys, values, read, query, key_layout)
    for b, n in enumerate(real):
        assert torch.allclose(got[index[b, :n]], want[b * 4: b * 4 + n], atol=1e-5)


def test_rotate_and_store_rotates_q_and_k_and_writes_keys_and_values_to_their_slots():
    """The paged path's one kernel before attention: the eager rotation of q and k, bit for bit in
    fp32; keys and values land in the pool at the tokens' slots, and nowhere else."""
    g = torch.Generator().manual_seed(3)
    tokens, heads, kv_heads, d, slots = 9, 8, 2, 16, 60
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d, generator=g).to(DEVICE)
    cos, sin = Rotary(d, 10000.0).to(DEVICE)(torch.randint(0, 500, (tokens,), generator=g).to(DEVICE), torch.float32)
    pool = torch.full((2, kv_heads, slots, d), 7.0, device=DEVICE)
    write = torch.randperm(slots, generator=g)[:tokens].to(DEVICE)
    q = rotate_and_store(qkv, cos, sin, pool, write, heads, kv_heads)
    split = qkv.unflatten(-1, (-1, d)).transpose(0, 1)  # [heads + 2 kv_heads, T, d]
    rotated = rotate(split[: heads + kv_heads], cos, sin)
    assert q.shape == (heads, tokens, d) and torch.equal(q, rotated[:heads])
    assert torch.equal(pool[0][:, write], rotated[heads:]) and torch.equal(pool[1][:, write], split[heads + kv_heads:])
    untouched = torch.ones(slots, dtype=torch.bool, device=DEVICE)
    untouched[write] = False
    assert (pool[:, :, untouched] == 7.0).all()


def test_the_engine_gives_the_same_answers_with_the_kernel(compact):
    """Every kind of request of test_engine, alone with SDPA and batched (joining, one aborted)
    with the kernel: the same greedy tokens, events and forwards."""
    cases = [FORCED[i] for i in (0, 2, 3, 4, 5, 6, 7)]
    cases = [(p, plan, o.replace(max_new_tokens=min(o.max_new_tokens, 40))) for p, plan, o in cases]
    solo = [alone(compact, *case) for case in cases]
    compact.network.attention = "paged"
    try:
        states, events, _ = batched(compact, cases, join_at={2: 3}, abort_at=4)
    finally:
        compact.network.attention = "auto"
    for i, state in states.items():
        assert state.tokens == solo[i].tokens and events[i] == solo[i].events, cases[i]


def test_bench_attention_times_the_attention_of_its_cases(capsys):
    """`plandiff bench attention`'s inputs (a causal prefix, then four sparse spans whose slots are
    the queries; one-token queries causal) are attention under the layout rule; on a device other
    than CUDA the command says it needs one."""
    from plandiff.orchestrator import cli
    from plandiff.orchestrator.bench_attention import case_inputs

    for requests, queries, keys in ((2, 8, 40), (3, 1, 30)):
        q, pool_k, pool_v, rows, read, query, key_layout, lengths, _ = case_inputs(requests, queries, keys, DEVICE)
        q, pool_k, pool_v = q.float(), pool_k.float(), pool_v.float()
        got = paged_attention(q, pool_k, pool_v, rows, read, query, key_layout, lengths, None)
        assert (got - reference(q, pool_k, pool_v, read, query, key_layout)).abs().max() < 1e-5
    assert cli.main(["bench", "attention", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
