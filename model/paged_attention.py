"""Attention that reads the KV pool in place (Triton; packed forwards on CUDA use it): no
gathered copy of each request's keys and values, and no materialized bias. The layout rule
(layout.allowed) is evaluated per block of keys from the requests' layout metadata, with an online
softmax (fp32) over the keys of the query's own request only: the request term of the rule is the
program's request.

One program takes one request, one KV head and a block of its query rows (each query position
times the query heads of that KV head, so a one-token step fills a block with the group's 7 heads
instead of 7 padded blocks). Every row's result depends on its own request's keys alone. A step
too small to fill the device (one request: four programs for a 28-layer 7B model's four KV heads)
also splits each request's keys into chunks, one program each, and a second kernel merges the
chunks' partial softmaxes; a step's rows then sum their keys in another order than unsplit, so on
CUDA a request's bf16 logits may differ in their last bits depending on what shares its step, as a
GEMM's do with its row count (the CPU path, which the equality tests run, is exact).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import NamedTuple

import torch

from .layout import CAUSAL, PADDING


class KernelConfig(NamedTuple):
    """A launch of the kernel: query rows and keys per program iteration, warps, pipeline stages
    (`plandiff bench attention` times them on a device)."""

    block_m: int
    block_n: int = 64
    warps: int = 4
    stages: int = 3


def default_config(width: int, group: int) -> KernelConfig:
    """The launch for a step whose requests have `width` query positions of `group` heads each per
    KV head: small blocks for one-token steps (their rows are one position's heads)."""
    return KernelConfig(16 if width * group <= 16 else 64)


def available(device: torch.device) -> bool:
    """Whether `attention="auto"` uses the kernel on `device`: CUDA, with Triton installed."""
    return device.type == "cuda" and _triton_installed()


@functools.cache
def _triton_installed() -> bool:  # asked every forward: looked up once
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _build():
    """The kernel, compiled on first use (Triton is imported only here: the CPU path never needs
    it; on CPU tensors it runs in Triton's interpreter when TRITON_INTERPRET=1, as in the tests)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(q_ptr, q_head_stride, q_row_stride, k_ptr, v_ptr, out_ptr, slots_ptr, key_region_ptr,
                key_epoch_ptr, key_lengths_ptr, query_ptr, query_index_ptr, scale, width, length, pool_slots,
                part_ptr, stat_ptr, chunk, rows,
                HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, INDEXED: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr,
                _CAUSAL: tl.constexpr, _PADDING: tl.constexpr):
        group: tl.constexpr = HEADS // KV_HEADS
        b = tl.program_id(1) // KV_HEADS
        h = tl.program_id(1) % KV_HEADS
        r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (query position t, head g) of this KV head
        t = r // group
        head = h * group + r % group
        in_grid = t < width
        grid_row = b * width + t  # the query's row in the requests' padded grid
        count = tl.num_programs(1) // KV_HEADS
        q_pos = tl.load(query_ptr + grid_row, mask=in_grid, other=0)
        q_region = tl.load(query_ptr + count * width + grid_row, mask=in_grid, other=_PADDING)
        q_epoch = tl.load(query_ptr + 2 * count * width + grid_row, mask=in_grid, other=0)
        if INDEXED:  # queries are packed: the grid says where each real one is; padding rows are skipped
            row = tl.load(query_index_ptr + grid_row, mask=in_grid, other=0)
            live = in_grid & (q_region != _PADDING)
        else:
            row = grid_row
            live = in_grid
        d = tl.arange(0, D)
        q = tl.load(q_ptr + head[:, None] * q_head_stride + row[:, None] * q_row_stride + d[None, :],
                    mask=live[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        keys = tl.load(key_lengths_ptr + b)
        first = tl.program_id(2) * chunk  # this program's keys: [first, first + chunk) (unsplit: all)
        last = tl.minimum(first + chunk, keys)
        for start in range(first, last, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            key_in = n < last
            slot = tl.load(slots_ptr + b * length + n, mask=key_in, other=0)
            k_region = tl.load(key_region_ptr + b * length + n, mask=key_in, other=_PADDING)
            k_epoch = tl.load(key_epoch_ptr + b * length + n, mask=key_in, other=0)
            at = (h * pool_slots + slot[:, None]) * D + d[None, :]
            k = tl.load(k_ptr + at, mask=key_in[:, None], other=0.0)
            v = tl.load(v_ptr + at, mask=key_in[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            same = (q_region[:, None] == k_region[None, :]) & (k_region[None, :] != _CAUSAL)
            earlier = (n[None, :] <= q_pos[:, None]) & (
                (k_region[None, :] == _CAUSAL) | (k_epoch[None, :] < q_epoch[:, None]))
            allowed = (same | earlier) & (k_region[None, :] != _PADDING)
            s = tl.where(allowed, s * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if SPLIT:  # this chunk's unnormalized sum, its running max and total, for _merge
            at = (tl.program_id(2) * rows + row) * HEADS + head
            tl.store(part_ptr + at[:, None] * D + d[None, :], acc, mask=live[:, None])
            tl.store(stat_ptr + 2 * at, m_i, mask=live)
            tl.store(stat_ptr + 2 * at + 1, l_i, mask=live)
        else:
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a padding row sees nothing: zeros
            tl.store(out_ptr + (row[:, None] * HEADS + head[:, None]) * D + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=live[:, None])

    @triton.jit
    def _merge(part_ptr, stat_ptr, out_ptr, splits, cells, D: tl.constexpr):
        """One (row, head): its chunks' partial softmaxes merged, chunk by chunk in order."""
        cell = tl.program_id(0)
        d = tl.arange(0, D)
        top = tl.load(stat_ptr + 2 * cell)
        for s in range(1, splits):
            top = tl.maximum(top, tl.load(stat_ptr + 2 * (s * cells + cell)))
        top = tl.where(top == float("-inf"), 0.0, top)
        total = tl.zeros([1], tl.float32)
        acc = tl.zeros([D], tl.float32)
        for s in range(0, splits):
            at = s * cells + cell
            weight = tl.exp(tl.load(stat_ptr + 2 * at) - top)
            total += tl.load(stat_ptr + 2 * at + 1) * weight
            acc += tl.load(part_ptr + at * D + d) * weight
        out = acc / tl.where(total > 0, total, 1.0)
        tl.store(out_ptr + cell * D + d, out.to(out_ptr.dtype.element_ty))

    return _kernel, _merge


@functools.cache
def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (the interpreter's CPU: an H100's count)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def key_splits(programs: int, length: int, device: torch.device, block_n: int = 64) -> int:
    """Chunks of each request's keys (one program each) for a step of `programs` programs over up
    to `length` keys: enough to fill the device, at least two key blocks a chunk."""
    if programs >= _processors(device):
        return 1
    return max(1, min(-(-length // (2 * block_n)), -(-_processors(device) // programs)))


def paged_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: int, read_slots: torch.Tensor,
                    query_layout: torch.Tensor, key_layout: torch.Tensor, key_lengths: torch.Tensor,
                    query_index: torch.Tensor | None, splits: int | None = None,
                    config: KernelConfig | None = None) -> torch.Tensor:
    """Attention of `q` [heads, T, d] (any strides, d contiguous) over the pool's `keys`, `values`
    [kv_heads, slots, d] → [rows, heads × d]. The requests' grid of query rows, [count, width]:
    `query_layout` [3, count, width] (position, region, epoch; region PADDING for padding rows),
    `query_index` [count, width] the packed row of each (None: the grid is the packed order, rows =
    count × width). Their keys: `read_slots` and `key_layout` [2, count, length] (region, epoch),
    the first `key_lengths[i]` positions of each. `splits`: chunks of keys per request (None: by
    the step's size, key_splits). `config`: the launch (None: default_config)."""
    heads, _, d = q.shape
    kv_heads, pool_slots, _ = keys.shape
    count, width = query_layout.shape[1:]
    group = heads // kv_heads
    config = config or default_config(width, group)
    length = read_slots.shape[1]
    # the blocks of one request and KV head are neighbours in launch order (the first axis is the
    # fastest), so its keys and values, read by each of them, come from L2 after the first
    grid = (-(-width * group // config.block_m), count * kv_heads)
    splits = splits or key_splits(grid[0] * grid[1], length, q.device, config.block_n)
    chunk = -(-length // (splits * config.block_n)) * config.block_n
    splits = -(-length // chunk)
    kernel, merge = _build()
    out = torch.empty(rows, heads, d, dtype=q.dtype, device=q.device)  # every row is written (padding: zeros)
    part = torch.empty(splits, rows, heads, d, dtype=torch.float32, device=q.device) if splits > 1 else out
    stat = torch.empty(splits, rows, heads, 2, dtype=torch.float32, device=q.device) if splits > 1 else out
    kernel[grid + (splits,)](
        q, q.stride(0), q.stride(1), keys, values, out, read_slots, key_layout[0], key_layout[1], key_lengths,
        query_layout, query_index if query_index is not None else query_layout, d ** -0.5, width, length, pool_slots,
        part, stat, chunk, rows, HEADS=heads, KV_HEADS=kv_heads, D=d, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, INDEXED=query_index is not None, IEEE=q.dtype == torch.float32, SPLIT=splits > 1,
        _CAUSAL=CAUSAL, _PADDING=PADDING, num_warps=config.warps, num_stages=config.stages)
    if splits > 1:
        merge[(rows * heads,)](part, stat, out, splits, rows * heads, D=d)
    return out.view(rows, heads * d)
