"""The Dream network (reference §1.1): a Qwen2-style decoder with no built-in causal mask.

RMSNorm in fp32 cast back before the weight, RoPE cos/sin in fp32 cast to the activation dtype,
GQA, bias on q/k/v, untied head; the logits at position i predict the token at i+1. Attention
visibility always comes from the caller (layout.py). Parameter names match the checkpoints'
(``model.layers.{i}.self_attn.q_proj.weight`` …, ``lm_head.weight``).

The KV cache stores keys after RoPE, indexed by absolute position, so a forward may (re)write any
positions (e.g. the live spans of a scaffold) and attend over every cached key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DreamConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
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


class KVCache:
    """Keys (after RoPE) and values of one sequence, per layer, indexed by absolute position.

    Unwritten positions hold zeros (what the reference's cached path leaves in a span it never
    computes).
    """

    def __init__(self, config: DreamConfig, capacity: int, device: torch.device, dtype: torch.dtype):
        shape = (config.num_key_value_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def reserve(self, length: int) -> None:
        """Grow (by doubling) so that positions [0, length) fit."""
        if length <= self.capacity:
            return
        new = max(length, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                grown = t.new_zeros((t.shape[0], new, t.shape[2]))
                grown[:, : t.shape[1]] = t
                store[i] = grown

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


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

    def forward(self, x, cos, sin, positions, bias, keys, values):
        """Tokens [T, hidden] at `positions`: their keys and values go into the cache first."""
        q, k, v = self._project(x, cos, sin)
        keys[:, positions] = k
        values[:, positions] = v
        length = bias.shape[-1]
        return self._attend(q[None], keys[None, :, :length], values[None, :, :length], bias)[0]

    def forward_batch(self, x, cos, sin, bias):
        """Training: whole sequences [B, T, hidden], no cache, differentiable."""
        return self._attend(*self._project(x, cos, sin), bias)

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


class DecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, positions, bias, keys, values):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, bias, keys, values)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_batch(self, x, cos, sin, bias):
        x = x + self.self_attn.forward_batch(self.input_layernorm(x), cos, sin, bias)
        return x + self.mlp(self.post_attention_layernorm(x))


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

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.config, capacity, self.device, self.dtype)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """Run tokens `input_ids` [T] at `positions` [T]; return final hidden states [T, hidden].

        `mask` [T, L] (True = may attend) covers cache positions [0, L); the new keys and values are
        written into `cache` at `positions` first, so a token sees itself and its fellow queries.
        """
        cache.reserve(int(positions.max()) + 1)
        bias = self._bias(mask)[None, None]
        cos, sin = self.rotary(positions, self.dtype)
        x = self.model.embed_tokens(input_ids)
        for layer, keys, values in zip(self.model.layers, cache.keys, cache.values):
            x = layer(x, cos, sin, positions, bias, keys, values)
        return self.model.norm(x)

    def _bias(self, mask: torch.Tensor) -> torch.Tensor:
        """The additive attention bias of a boolean mask (True = may attend)."""
        return torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill(~mask, torch.finfo(self.dtype).min)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward_train(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for whole sequences `input_ids` [B, T] at positions 0…T−1 with
        `mask` [B, T, T] (True = may attend); differentiable, no cache."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        bias = self._bias(mask)[:, None]
        cos, sin = self.rotary(positions, self.dtype)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer.forward_batch(x, cos, sin, bias)
        return self.lm_head(self.model.norm(x))
