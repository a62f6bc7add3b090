"""Who may attend to whom in a planned-diffusion sequence (reference §3.4, §5.2).

The layout is three integers per token instead of an N×N matrix:

- ``position``: the absolute index (also the RoPE position);
- ``region``:   -1 for causal tokens (prompt, plan, sync, autoregressive text); otherwise the id of
  the bidirectional region the token belongs to: one span (sparse), or all spans of a round (dense);
- ``epoch``:    how many ``<sync/>`` tokens precede the token (a span's tags count as its round).

Rule: query q may attend to key k iff
  (k and q are in the same region)  or  (k.position <= q.position and (k is causal or k.epoch < q.epoch)),
and k is not padding (region ``PADDING``: the filler of a batch of many sequences, seen by nobody).

So the prompt and the plan are causal; a span sees the prefix and itself but not its siblings; nothing
before a ``<sync/>`` sees a span of that round, and everything from the ``<sync/>`` on sees them all.
A forward only materializes the rows it computes (queries × keys). When many requests share a
forward (model_runner.py), the request term is the batch dimension: each request's queries attend
over its own keys only, then by this rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CAUSAL = -1
PADDING = -2  # region of padding keys in a padded batch


@dataclass
class Layout:
    """Layout metadata of one sequence, grown as tokens are appended. Change it through its
    methods: they keep `keys()`, its tensor form, in step."""

    region: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    # [2, capacity] long: region and epoch of positions [0, _synced) as a tensor, grown by doubling
    _mirror: torch.Tensor = field(default_factory=lambda: torch.empty(2, 0, dtype=torch.long), repr=False)
    _synced: int = field(default=0, repr=False)
    # counts the changes to positions already laid out (truncate, set_region): a copy of the keys'
    # layout made at another generation is stale before its end too
    generation: int = field(default=0, repr=False)

    def __len__(self) -> int:
        return len(self.region)

    def append(self, region: int, epoch: int, count: int = 1) -> None:
        self.region.extend([region] * count)
        self.epoch.extend([epoch] * count)

    def retract(self, length: int) -> None:
        """Take back appends past `length` whose keys will be appended again unchanged (a step
        ahead's reserved place, RequestState.reserved): copies of the keys stay valid, so unlike
        `truncate` this is no new generation."""
        del self.region[length:]
        del self.epoch[length:]
        self._synced = min(self._synced, length)

    def truncate(self, length: int) -> None:
        self.retract(length)
        self.generation += 1  # positions a key copy may hold can be laid out anew

    def set_region(self, region: int) -> None:
        """Every position into one region."""
        self.region[:] = [region] * len(self.region)
        self._synced = 0
        self.generation += 1

    def keys(self, length: int) -> torch.Tensor:
        """[2, length] long (host): region and epoch of positions [0, length); a view, valid until
        the next change. Only what changed since the last call is converted (a step packs every
        request's keys: converting whole lists each step cost milliseconds at 64 requests)."""
        if length > self._mirror.shape[1]:
            grown = torch.empty(2, max(length, 2 * self._mirror.shape[1], 64), dtype=torch.long)
            grown[:, : self._synced] = self._mirror[:, : self._synced]
            self._mirror = grown
        if length > self._synced:
            self._mirror[:, self._synced:length] = torch.tensor(
                [self.region[self._synced:length], self.epoch[self._synced:length]], dtype=torch.long)
            self._synced = length
        return self._mirror[:, :length]

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.region, dtype=torch.long, device=device),
            torch.tensor(self.epoch, dtype=torch.long, device=device),
        )


def allowed(
    q_pos: torch.Tensor,
    q_region: torch.Tensor,
    q_epoch: torch.Tensor,
    k_pos: torch.Tensor,
    k_region: torch.Tensor,
    k_epoch: torch.Tensor,
) -> torch.Tensor:
    """Boolean [..., Tq, Tk]: True where query i may attend to key j. Inputs are long tensors of
    shape [T] or, for a batch of sequences, [B, T] (positions may stay [T])."""
    same_region = (q_region[..., :, None] == k_region[..., None, :]) & (k_region[..., None, :] != CAUSAL)
    earlier = k_pos[..., None, :] <= q_pos[..., :, None]
    visible = (k_region[..., None, :] == CAUSAL) | (k_epoch[..., None, :] < q_epoch[..., :, None])
    return (same_region | (earlier & visible)) & (k_region[..., None, :] != PADDING)


def mask_rows(layout: Layout, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
    """Boolean [len(query_positions), key_length] for queries at the given positions of `layout`."""
    region, epoch = layout.tensors(query_positions.device)
    keys = torch.arange(key_length, device=query_positions.device)
    return allowed(
        query_positions, region[query_positions], epoch[query_positions],
        keys, region[:key_length], epoch[:key_length],
    )
