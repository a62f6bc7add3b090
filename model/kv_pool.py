"""KV memory shared by many sequences: per layer, one tensor of keys (after RoPE) and values,
[2, kv_heads, slots, head_dim] (a step writes both with one kernel), handed out in blocks of
`BLOCK` positions.

A sequence reserves, when it is admitted, the blocks for its longest possible length
(`RequestState.max_length`), so a running sequence never runs out of memory and nothing is ever
preempted; a sequence that does not fit waits until others free theirs (the engine's admission).
Blocks are zeroed when handed out: an unwritten position must read as zeros (the reference's cached
path leaves zeros in a span it never computes, e.g. one of zero slots).

On a GPU the pool is sized once from free memory; on the CPU it starts small and doubles up to
`max_slots` (tests build many small models, and a full-size CPU pool per model would cost GBs).
"""

from __future__ import annotations

import torch

from .config import DreamConfig

BLOCK = 16


class KVPool:
    def __init__(self, config: DreamConfig, device: torch.device, dtype: torch.dtype, max_slots: int,
                 initial_slots: int | None = None):
        self.config = config
        self.device, self.dtype = torch.device(device), dtype
        self.max_blocks = max(1, max_slots // BLOCK)
        blocks = self.max_blocks if initial_slots is None else min(self.max_blocks, max(1, -(-initial_slots // BLOCK)))
        shape = (2, config.num_key_value_heads, blocks * BLOCK, config.head_dim)
        self.layers = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.free_blocks = list(range(blocks - 1, -1, -1))  # popped from the end: low blocks first

    @classmethod
    def for_network(cls, network, max_bytes: int | None = None, memory_fraction: float = 0.6,
                    device_share: float = 1.0) -> KVPool:
        """A pool for `network`: on CUDA `memory_fraction` of the free device memory (the rest is left
        to activations and logits), allocated now; elsewhere up to `max_bytes` (default 1 GiB), grown
        on demand. `device_share` < 1: engines share the GPU (Ray's fractional GPUs), so the pool is
        taken from at most that share of the device's memory; the first engine to start would
        otherwise leave the next too little for its activations (measured: out of memory at 2 × 0.5)."""
        config, device = network.config, network.device
        per_slot = bytes_per_position(config, network.dtype)
        if device.type == "cuda" and max_bytes is None:
            free, total = torch.cuda.mem_get_info(device)
            free = min(free, int(total * device_share))
            return cls(config, device, network.dtype, int(free * memory_fraction) // per_slot)
        limit = max_bytes if max_bytes is not None else 1 << 30
        return cls(config, device, network.dtype, limit // per_slot, initial_slots=4096)

    @property
    def blocks(self) -> int:
        return self.layers[0].shape[2] // BLOCK

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers)

    def can_hold(self, positions: int) -> bool:
        need = blocks_for(positions)
        return need <= len(self.free_blocks) + self.max_blocks - self.blocks

    def allocate(self, positions: int) -> list[int] | None:
        """Blocks for positions [0, positions), zeroed; None when the pool cannot hold them now."""
        need = blocks_for(positions)
        if need > len(self.free_blocks):
            if not self.can_hold(positions):
                return None
            self._grow(need - len(self.free_blocks))
        blocks = [self.free_blocks.pop() for _ in range(need)]
        self.zero(blocks)
        return blocks

    def free(self, blocks: list[int]) -> None:
        self.free_blocks.extend(reversed(blocks))

    def zero(self, blocks: list[int]) -> None:
        slots = slot_map(blocks).to(self.device)
        for t in self.layers:
            t[:, :, slots] = 0

    def _grow(self, at_least: int) -> None:
        old = self.blocks
        new = min(self.max_blocks, max(old + at_least, 2 * old))
        for i, t in enumerate(self.layers):
            grown = t.new_zeros((2, t.shape[1], new * BLOCK, t.shape[3]))
            grown[:, :, : t.shape[2]] = t
            self.layers[i] = grown
        self.free_blocks[:0] = range(new - 1, old - 1, -1)


def blocks_for(positions: int) -> int:
    return -(-positions // BLOCK)


def bytes_per_position(config: DreamConfig, dtype: torch.dtype) -> int:
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize


def slot_map(blocks: list[int]) -> torch.Tensor:
    """The pool slot of each position [0, len(blocks) × BLOCK) of a sequence holding `blocks`."""
    base = torch.tensor(blocks, dtype=torch.long) * BLOCK
    return (base[:, None] + torch.arange(BLOCK)).flatten()
