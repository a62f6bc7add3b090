"""The Dream network (reference §1.1): a Qwen2-style decoder with no built-in causal mask.

RMSNorm in fp32 cast back before the weight, RoPE cos/sin in fp32 cast to the activation dtype,
GQA, bias on q/k/v, untied head; the logits at position i predict the token at i+1. Attention
visibility always comes from the caller (layout.py). Parameter names match the checkpoints'
(``model.layers.{i}.self_attn.q_proj.weight`` …, ``lm_head.weight``).

The KV memory (kv_pool.py) stores keys after RoPE, per sequence indexed by absolute position, so a
forward may (re)write any positions (e.g. the live spans of a scaffold) and attend over every cached
key; a forward packs the tokens of many sequences (`forward_packed`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .config import DreamConfig
from .layout import allowed
from .paged_attention import available as paged_attention_available
from .paged_attention import paged_attention
from .rotary_store import rotate_and_store


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 statistics, cast back before the weight (reference §1.1); fused: one kernel, not seven."""
    return weight * F.rms_norm(x, x.shape[-1:], eps=eps)


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention bias of a boolean mask (True = may attend): 0, or dtype min."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        # computed on the CPU whatever the default device (on meta, as in `skeleton`, arithmetic runs
        # as reference ops whose first call imports the compiler); the network's .to() moves it
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta ** exponents), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved RoPE on [heads, T, head_dim] with cos/sin [T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class PackedBatch:
    """The device tensors of one packed forward of B sequences (T tokens in all), their queries
    laid out in a grid [B, Tmax] (padding rows: region PADDING)."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T] RoPE positions
    write_slots: torch.Tensor  # [T] pool slot of each token's key and value
    read_slots: torch.Tensor  # [B, Lmax] pool slots of each sequence's keys (padded)
    query_layout: torch.Tensor  # [3, B, Tmax] position, region, epoch of each query of the grid
    key_layout: torch.Tensor  # [2, B, Lmax] region, epoch of each key (PADDING past a sequence's keys)
    key_lengths: torch.Tensor  # [B] keys of each sequence
    query_index: torch.Tensor | None  # [B, Tmax] packed row of each grid query; None: rows are B × Tmax already
    packed_rows: torch.Tensor | None  # [T] row of each packed token in the flattened [B × Tmax]; None as above
    bias: torch.Tensor | None = None  # [B, 1, group × Tmax, Lmax] additive attention bias (SDPA); None: the
    # paged kernel reads the layouts itself (forward_packed sets it)


class Attention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def forward_batch(self, x, cos, sin, bias):
        """Training: whole sequences [B, T, hidden], no cache, differentiable."""
        return self._attend(*self._project(x, cos, sin), bias)

    def attend_packed(self, q, kv, batch: PackedBatch, pool):
        """Tokens of many sequences packed (q [heads, T, d], kv [2, kv_heads, T, d]); their keys and
        values are written into the layer's `pool` [2, kv_heads, slots, d] first. Attention runs
        padded per sequence ([B, ·, Tmax, Lmax]: the batch dimension is the request term of the layout
        rule), the layout as `batch.bias`, then the rows are packed again: [T, heads × d], before o_proj."""
        pool[:, :, batch.write_slots] = kv
        k, v = pool[0][:, batch.read_slots], pool[1][:, batch.read_slots]  # [kv_heads, B, Lmax, d]
        if batch.query_index is None:  # rows already padded per sequence (T = B × Tmax): nothing to gather
            q = q.unflatten(1, (batch.read_slots.shape[0], -1)).transpose(0, 1)
        else:
            q = q[:, batch.query_index].transpose(0, 1)  # [B, heads, Tmax, d]
        count, _, t_max, d = q.shape
        # GQA without copying keys per query head: the query heads of one key head are stacked
        # as extra query rows ([B, kv_heads, group × Tmax, d]); the bias was repeated to match.
        q = q.reshape(count, self.kv_heads, -1, d)
        out = F.scaled_dot_product_attention(q, k.transpose(0, 1), v.transpose(0, 1), attn_mask=batch.bias)
        out = out.reshape(count, self.heads, t_max, d).transpose(1, 2).flatten(-2)
        return out.flatten(0, 1) if batch.query_index is None else out.flatten(0, 1)[batch.packed_rows]

    def attend_paged(self, qkv, cos, sin, batch: PackedBatch, pool):
        """The same from the projection's output `qkv` [T, (heads + 2 kv_heads) × d]: the rotation
        and the pool's write in one kernel (rotary_store.py), then the pool read in place
        (paged_attention.py)."""
        q = rotate_and_store(qkv, cos, sin, pool, batch.write_slots, self.heads, self.kv_heads)
        return paged_attention(q, pool[0], pool[1], q.shape[1], batch.read_slots, batch.query_layout,
                               batch.key_layout, batch.key_lengths, batch.query_index)

    def _project(self, x, cos, sin):
        """x [..., T, hidden] → q [..., heads, T, d] and k, v [..., kv_heads, T, d], q and k rotated."""
        def heads(projection, count):
            return projection(x).unflatten(-1, (count, self.head_dim)).transpose(-3, -2)

        q, k = heads(self.q_proj, self.heads), heads(self.k_proj, self.kv_heads)
        return rotate(q, cos, sin), rotate(k, cos, sin), heads(self.v_proj, self.kv_heads)

    def _attend(self, q, k, v, bias):
        """q [B, heads, T, d] over k, v [B, kv_heads, L, d] (GQA) → [B, T, hidden]."""
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


class MLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def fused(module: nn.Module, name: str, linears: tuple[nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several linears over the same input, their rows concatenated,
    kept on `module` as `name`. The linears' parameters become views into it, so the memory is
    not doubled and a later in-place change (loading, training) is seen by both; built again when
    a parameter was replaced since (`.to()`)."""
    cached = module.__dict__.get(name)
    if cached is None or cached[0].data_ptr() != linears[0].weight.data_ptr():
        with torch.no_grad():
            cached = tuple(None if getattr(linears[0], kind) is None else join([getattr(lin, kind) for lin in linears])
                           for kind in ("weight", "bias"))
        module.__dict__[name] = cached
    return cached


def join(params: list[nn.Parameter]) -> torch.Tensor:
    joined = torch.cat(params)
    start = 0
    for param in params:
        param.data = joined[start:start + param.shape[0]]
        start += param.shape[0]
    return joined


class DecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward_batch(self, x, cos, sin, bias):
        x = x + self.self_attn.forward_batch(self.input_layernorm(x), cos, sin, bias)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_packed(self, x, cos, sin, batch, pool, segments):
        """Packed tokens [T, hidden] (Attention.attend_packed, attend_paged when `batch.bias` is None).
        The parts around attention are `segments` (pre_attention, post_attention, projection: eager,
        or compiled by DreamNetwork.compile_packed)."""
        attn, mlp = self.self_attn, self.mlp
        qkv_weight, qkv_bias = fused(attn, "_qkv", (attn.q_proj, attn.k_proj, attn.v_proj))
        gate_up, _ = fused(mlp, "_gate_up", (mlp.gate_proj, mlp.up_proj))
        norm = self.input_layernorm
        if batch.bias is None:
            qkv = segments[2](x, norm.weight, qkv_weight, qkv_bias, norm.eps)
            out = attn.attend_paged(qkv, cos, sin, batch, pool)
        else:
            q, kv = segments[0](x, norm.weight, qkv_weight, qkv_bias, cos, sin, norm.eps, attn.heads, attn.kv_heads,
                                attn.head_dim)
            out = attn.attend_packed(q, kv, batch, pool)
        return segments[1](x, out, attn.o_proj.weight, self.post_attention_layernorm.weight, gate_up,
                           mlp.down_proj.weight, self.post_attention_layernorm.eps)


def pre_attention(x, norm_weight, qkv_weight, qkv_bias, cos, sin, eps: float, heads: int, kv_heads: int,
                  head_dim: int):
    """Packed x [T, hidden] → q [heads, T, d], kv [2, kv_heads, T, d] (keys, values): the input norm,
    one matmul for q, k and v, one rotation for q and k, keys and values side by side for the pool's
    one write (the SDPA path; the paged path takes `projection` and rotates and stores in one kernel)."""
    qkv = projection(x, norm_weight, qkv_weight, qkv_bias, eps).unflatten(-1, (-1, head_dim)).transpose(0, 1)
    rotated = rotate(qkv[: heads + kv_heads], cos, sin)
    return rotated[:heads], torch.cat((rotated[heads:], qkv[heads + kv_heads:])).unflatten(0, (2, kv_heads))


def projection(x, norm_weight, qkv_weight, qkv_bias, eps: float):
    """Packed x [T, hidden] → q, k and v side by side [T, (heads + 2 kv_heads) × d]: the input norm
    and one matmul (the paged path rotates and stores them in one kernel, rotary_store.py)."""
    return F.linear(rms_norm(x, norm_weight, eps), qkv_weight, qkv_bias)


def post_attention(x, attended, o_weight, norm_weight, gate_up_weight, down_weight, eps: float):
    """The residual stream after attention: o_proj, residual, norm, the MLP (gate and up in one
    matmul), residual."""
    x = x + F.linear(attended, o_weight)
    h = rms_norm(x, norm_weight, eps)
    gate, up = F.linear(h, gate_up_weight).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, down_weight)


EAGER = (pre_attention, post_attention, projection)


class DecoderStack(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamNetwork(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        # packed forwards' attention: "paged" (paged_attention.py: a Triton kernel reading the pool
        # in place; on the CPU only in Triton's interpreter), "sdpa" (keys gathered from the pool,
        # the layout as a bias), "auto": paged on CUDA where Triton is installed, else sdpa
        self.attention: Literal["auto", "paged", "sdpa"] = "auto"

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.no_grad()
    def forward_packed(self, batch: PackedBatch, pool) -> torch.Tensor:
        """One forward of many sequences' tokens (`batch`), their keys and values kept in `pool`
        (kv_pool.KVPool); the final hidden states [T, hidden] in packed order."""
        cos, sin = self.rotary(batch.positions, self.dtype)
        paged = self.attention == "paged" or self.attention == "auto" and paged_attention_available(self.device)
        if not paged:  # SDPA over gathered keys, the layout as a bias
            group = self.config.num_attention_heads // self.config.num_key_value_heads
            query, key = batch.query_layout, batch.key_layout
            mask = allowed(query[0], query[1], query[2], torch.arange(key.shape[2], device=key.device), key[0], key[1])
            bias = attention_bias(mask, self.dtype)[:, None]
            batch = replace(batch, bias=bias.repeat(1, 1, group, 1))  # rows (query head in group, query)
        x = self.model.embed_tokens(batch.input_ids)
        segments = self.__dict__.get("_segments", EAGER)
        for layer, layer_pool in zip(self.model.layers, pool.layers):
            x = layer.forward_packed(x, cos, sin, batch, layer_pool, segments)
        return self.model.norm(x)

    def compile_packed(self) -> None:
        """Packed forwards run the parts around attention compiled (torch.compile), fusing their
        elementwise kernels; attention and the KV pool stay eager. For CUDA, where a small step is
        bound by its kernel count; the first steps pay the compilation. Shapes are dynamic only
        where they vary (automatic dynamic shapes): after the second token count, one compilation
        per part serves every layer and step shape (one-token steps get their own), while the
        weights' sizes and the head counts stay constants. `dynamic=True` made those symbolic too,
        and every element's index then took divisions by runtime values (the rotation's kernel
        on the development CPU: 14-17 ms → 7-11 ms at 511 tokens, docs/performance.md)."""
        self.__dict__["_segments"] = tuple(torch.compile(part) for part in EAGER)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward_train(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for whole sequences `input_ids` [B, T] at positions 0…T−1 with
        `mask` [B, T, T] (True = may attend); differentiable, no cache."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        bias = attention_bias(mask, self.dtype)[:, None]
        cos, sin = self.rotary(positions, self.dtype)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer.forward_batch(x, cos, sin, bias)
        return self.lm_head(self.model.norm(x))


class _NoInit(TorchFunctionMode):
    """torch.nn.init's functions return their tensor untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def skeleton(config: DreamConfig) -> DreamNetwork:
    """The network with its parameters on the meta device, not initialised: its shapes, or a frame
    to load weights into. (On meta, torch's initialisers run as reference ops, whose first call
    imports the compiler: 2–3 s of a `plandiff generate` on the development machine.)"""
    with torch.device("meta"), _NoInit():
        return DreamNetwork(config)
