"""`plandiff bench train-step`: how long one optimizer step of a checkpoint's network takes on real
batches of the synthetic task, eager and under torch.compile.

Each variant starts from the checkpoint's weights, runs `warmup` steps (compiling happens there and
is timed apart) and then `steps` timed steps on the same batches, with the device synchronized
around the timed stretch. The batches are drawn as training draws them (rows.py: grouped by length
unless `group` is 1); tokens/s counts the rows' tokens, not their padding. The loss after the
timed steps is reported too: the variants compute the same thing, so the losses should agree to
bf16 noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..loading import load_checkpoint
from ..network import DreamNetwork
from ..tags import TagVocabulary
from .objective import make_batch, pack
from .recipe import encode_examples
from .rows import Rows
from .synthetic import make_split
from .trainer import TrainConfig, autocast_for, loss_function, make_optimizer, optimize


@dataclass
class StepTiming:
    variant: str
    ms_per_step: float
    warmup_s: float  # the first steps, compiling included
    tokens_per_s: float
    final_loss: float
    padding: float  # share of the timed batches' positions that are padding
    lengths: int  # distinct batch lengths among the timed steps (each a new shape for kernels and graphs)


def time_steps(model: str, mode: str, batch_size: int, steps: int, warmup: int, device: str,
               variants: list[str], group: int = 1, say: Callable[[str], None] = lambda message: None
               ) -> list[StepTiming]:
    """Each variant's timing; `say` is told what runs as it starts (a CPU step of batch 256 takes
    seconds, a compilation a minute or more)."""
    checkpoint = load_checkpoint(model, dtype="float32")
    tokenizer = checkpoint.tokenizer
    tags = TagVocabulary.from_tokenizer(tokenizer)
    config = TrainConfig(mode=mode, batch_size=batch_size, dense=checkpoint.config.disable_block_sparsity)
    examples = make_split("train", min(4096, 16 * batch_size), 0)
    data = pack(encode_examples(examples, config, tokenizer, join="text"), tags.pad, device)
    rows, picker = Rows([data], tags.pad, device, group=group), torch.Generator().manual_seed(0)
    batches = [rows.batch(batch_size, picker) for _ in range(warmup + steps)]
    tokens = sum(int(data.lengths[index].sum()) for data, index, _ in batches[warmup:])
    positions = sum(len(index) * length for _, index, length in batches[warmup:])
    lengths = len({length for _, _, length in batches[warmup:]})
    results = []
    for variant in variants:
        network = DreamNetwork(checkpoint.config)
        network.load_state_dict(checkpoint.network.state_dict())
        network = network.to(device).train()
        optimizer = make_optimizer(network, config, device)
        step_loss = loss_function(variant == "compiled")
        autocast = autocast_for(device)
        generator = torch.Generator(device).manual_seed(0)
        compiling = " (compiling)" if variant == "compiled" else ""
        say(f"{variant}: warming up, {warmup} step{'s' * (warmup > 1)}{compiling}")
        started = time.perf_counter()
        for at, (data, index, length) in enumerate(batches):
            if at == warmup:
                _sync(device)
                timed = time.perf_counter()
                warmup_s = timed - started
                say(f"{variant}: {steps} timed steps after {warmup_s:.1f} s of warm-up")
            batch = make_batch(data, index, tags.mask, generator, length)
            stats = optimize(network, optimizer, step_loss, batch, autocast)
        _sync(device)
        seconds = time.perf_counter() - timed
        results.append(StepTiming(variant, 1e3 * seconds / steps, warmup_s, tokens / seconds, float(stats["loss"]),
                                  1 - tokens / positions, lengths))
    return results


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
