"""What a step launched ahead of the one in flight takes from it, on the device
(ModelRunner.launch_ahead): the step in flight's decisions become the new step's input ids, and
its denoising rows not committed the new step's logit rows, without the host waiting for them."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import torch

from .generation import Forward
from .step_graphs import FIELDS, GraphShape
from .transfers import host_longs, to_device


@dataclass
class Feed:
    """What a step launched ahead takes, on the device, from the step in flight before it: that
    step's decisions (`decided`: Launched.groups) in the rows of its forwards (`before`). A planning
    request's decided token is its next input id (one a forced plan knows is packed already); a
    denoising request's committed proposals are its slots' ids, and its rows not committed are the
    new step's logit rows, in order."""

    decided: list[tuple[list[int], torch.Tensor]]
    before: list[Forward]

    def apply(self, ids: torch.Tensor, logit_rows: torch.Tensor, starts: list[int], forwards: list[Forward]) -> None:
        """Into a packed step's input ids and logit rows (device views; `starts`: each request's
        first query row)."""
        groups = self.decided
        if not groups:  # every input id is known on the host
            return
        members, decided = groups[0]
        if len(groups) == 1 and decided.dim() == 1 and members == list(range(len(forwards))):
            ids[: len(forwards)] = decided  # one planning token per request, in order (decoding)
            return
        offsets, first = {}, 0
        for members, decided in groups:
            for i in members:
                offsets[i], first = first, first + len(self.before[i].logit_positions)
        # per row, in the requests' order: its decision, the slot it feeds, the row whose logits the
        # new step may need, and its kind (0 a denoising proposal, 1 a planning token, 2 known)
        source, slots, rows, kinds = [], [], [], []
        for i, (start, before, f) in enumerate(zip(starts, self.before, forwards)):
            if not before.segments:  # planning: its one new position
                source.append(offsets.get(i, 0))
                kinds.append(1 if i in offsets else 2)
                slots.append(start)
                rows.append(start)
                continue
            for j, q in enumerate(before.logit_positions):  # the logits at q decide the slot q + 1
                source.append(offsets[i] + j)
                kinds.append(0)
                slots.append(start + bisect_left(f.positions, q + 1))
                rows.append(start + bisect_left(f.positions, q))
        index = to_device(host_longs(source + slots + rows + kinds), ids.device).view(4, -1)
        x0 = torch.cat([d if d.dim() == 1 else d[0] for _, d in groups])[index[0]]
        commit = torch.cat([torch.zeros_like(d) if d.dim() == 1 else d[1] for _, d in groups])[index[0]].bool()
        commit &= index[3] == 0
        ids[index[1]] = torch.where(commit | (index[3] == 1), x0, ids[index[1]])
        kept = sum(len(f.logit_positions) for f in forwards)  # planning rows and masked slots, in order
        logit_rows[:kept] = index[2][torch.sort(commit.to(torch.int32), stable=True).indices[:kept]]

    def apply_to_buffer(self, buffer: torch.Tensor, shape: GraphShape, forwards: list[Forward]) -> None:
        """Into a graph step's integer buffer on the device (step_graphs.pack_padded's layout)."""
        rows = shape.rows
        self.apply(buffer[:rows], buffer[(FIELDS - 1) * rows: FIELDS * rows],
                   [i * shape.width for i in range(len(forwards))], forwards)
