"""The rotation of a packed step's queries and keys and the KV pool's write, in one kernel (Triton;
packed forwards that read the pool with paged_attention.py use it).

Eager, or compiled by Inductor, the same work takes a rotation kernel, a copy joining keys and
values, the pool's indexed write and the query's transpose: four launches a layer for a few kB in
a small step, and several passes over the heads' rows in a large one. Here one program takes one
token: it reads the token's q, k and v rows of the projection, rotates q and k (fp32, rounded
once, as Inductor's fused rotation does) and writes q to a [tokens, heads, d] buffer and k and v
to the token's pool slot.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _build():
    """The kernel, compiled on first use (on CPU tensors, in Triton's interpreter: the tests)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(qkv_ptr, qkv_row_stride, cos_ptr, sin_ptr, q_ptr, pool_ptr, slots_ptr, pool_slots,
                HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        t = tl.program_id(0)
        h = tl.arange(0, BLOCK_H)  # q heads, then k heads, then v heads
        j = tl.arange(0, HALF)
        in_row = (h < HEADS + 2 * KV_HEADS)[:, None]
        row = qkv_ptr + t * qkv_row_stride + h[:, None] * (2 * HALF) + j[None, :]
        x1 = tl.load(row, mask=in_row, other=0.0).to(tl.float32)
        x2 = tl.load(row + HALF, mask=in_row, other=0.0).to(tl.float32)
        angle = t * (2 * HALF) + j
        c1, c2 = tl.load(cos_ptr + angle).to(tl.float32), tl.load(cos_ptr + angle + HALF).to(tl.float32)
        s1, s2 = tl.load(sin_ptr + angle).to(tl.float32), tl.load(sin_ptr + angle + HALF).to(tl.float32)
        rotated = (h < HEADS + KV_HEADS)[:, None]  # values are not rotated
        y1 = tl.where(rotated, x1 * c1[None, :] - x2 * s1[None, :], x1)
        y2 = tl.where(rotated, x2 * c2[None, :] + x1 * s2[None, :], x2)
        is_q = (h < HEADS)[:, None]
        slot = tl.load(slots_ptr + t)
        # pool [2, kv_heads, slots, d] contiguous: k head i is row i of its first two dims, v head i row kv_heads + i
        q_at = q_ptr + (t * HEADS + h[:, None]) * (2 * HALF) + j[None, :]
        pool_at = pool_ptr + ((h[:, None] - HEADS) * pool_slots + slot) * (2 * HALF) + j[None, :]
        at = tl.where(is_q, q_at, pool_at)
        tl.store(at, y1.to(q_ptr.dtype.element_ty), mask=in_row)
        tl.store(at + HALF, y2.to(q_ptr.dtype.element_ty), mask=in_row)

    return _kernel


def rotate_and_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pool: torch.Tensor,
                     write_slots: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """`qkv` [T, (heads + 2 kv_heads) × d] (a token's q, k, v heads side by side; rows may be
    strided), `cos`, `sin` [T, d]: writes each token's rotated keys and its values into `pool`
    [2, kv_heads, slots, d] (contiguous) at `write_slots` [T], and returns the rotated queries
    [heads, T, d] (a transposed view of a [T, heads, d] buffer: paged_attention takes any strides)."""
    tokens = qkv.shape[0]
    d = pool.shape[-1]
    if not pool.is_contiguous() or qkv.stride(-1) != 1 or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError("rotate_and_store: the pool, cos and sin must be contiguous, and qkv's rows too")
    q = torch.empty(tokens, heads, d, dtype=pool.dtype, device=pool.device)
    _build()[(tokens,)](qkv, qkv.stride(0), cos, sin, q, pool, write_slots, pool.shape[2], HEADS=heads,
                        KV_HEADS=kv_heads, HALF=d // 2, BLOCK_H=1 << (heads + 2 * kv_heads - 1).bit_length(),
                        enable_fp_fusion=False)  # x·cos − y·sin rounded as eager rounds it (fp32 tests)
    return q.transpose(0, 1)
