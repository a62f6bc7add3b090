"""Attention that reads the KV pool in place (Triton; packed forwards on CUDA use it): no
gathered copy of each request's keys and values, and no materialized bias. The layout rule
(layout.allowed) is evaluated per block of keys from the requests' layout metadata, with an online
softmax (fp32) over the keys of the query's own request only: the request term of the rule is the
program's request.

One program takes one request, one KV head and a block of its query rows (each query position
times the query heads of that KV head, so a one-token step fills a block with the group's 7 heads
instead of 7 padded blocks). Every row's result depends on its own request's keys alone, visited in
the same order whatever else shares the step: batching changes nothing.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from .layout import CAUSAL, PADDING

BLOCK_N = 64  # keys per iteration


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
                HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, INDEXED: tl.constexpr, IEEE: tl.constexpr, _CAUSAL: tl.constexpr,
                _PADDING: tl.constexpr):
        group: tl.constexpr = HEADS // KV_HEADS
        b = tl.program_id(0) // KV_HEADS
        h = tl.program_id(0) % KV_HEADS
        r = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # (query position t, head g) of this KV head
        t = r // group
        head = h * group + r % group
        in_grid = t < width
        grid_row = b * width + t  # the query's row in the requests' padded grid
        count = tl.num_programs(0) // KV_HEADS
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
        for start in range(0, keys, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            key_in = n < keys
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
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a padding row sees nothing: zeros
        tl.store(out_ptr + (row[:, None] * HEADS + head[:, None]) * D + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=live[:, None])

    return _kernel


def paged_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: int, read_slots: torch.Tensor,
                    query_layout: torch.Tensor, key_layout: torch.Tensor, key_lengths: torch.Tensor,
                    query_index: torch.Tensor | None) -> torch.Tensor:
    """Attention of `q` [heads, T, d] (any strides, d contiguous) over the pool's `keys`, `values`
    [kv_heads, slots, d] → [rows, heads × d]. The requests' grid of query rows, [count, width]:
    `query_layout` [3, count, width] (position, region, epoch; region PADDING for padding rows),
    `query_index` [count, width] the packed row of each (None: the grid is the packed order, rows =
    count × width). Their keys: `read_slots` and `key_layout` [2, count, length] (region, epoch),
    the first `key_lengths[i]` positions of each."""
    heads, _, d = q.shape
    kv_heads, pool_slots, _ = keys.shape
    count, width = query_layout.shape[1:]
    group = heads // kv_heads
    block_m = 16 if width * group <= 16 else 64
    out = torch.zeros(rows, heads, d, dtype=q.dtype, device=q.device)
    grid = (count * kv_heads, -(-width * group // block_m))
    _build()[grid](q, q.stride(0), q.stride(1), keys, values, out, read_slots, key_layout[0], key_layout[1],
                  key_lengths, query_layout, query_index if query_index is not None else query_layout,
                  d ** -0.5, width, read_slots.shape[1], pool_slots, HEADS=heads, KV_HEADS=kv_heads, D=d,
                  BLOCK_M=block_m, BLOCK_N=BLOCK_N, INDEXED=query_index is not None,
                  IEEE=q.dtype == torch.float32, _CAUSAL=CAUSAL, _PADDING=PADDING)
    return out.view(rows, heads * d)

