"""The training loop: AdamW, warmup then cosine decay, bf16 autocast on GPU, fp32 on CPU,
validation loss, progress, and an HF checkpoint folder that the runtime loads."""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedTokenizerBase

from ..config import DreamConfig
from ..loading import save_checkpoint
from ..network import DreamNetwork
from ..tags import TagVocabulary
from .objective import (Mode, Packed, Sequence, autoregressive_sequence, diffusion_sequence, loss, make_batch,
                        planned_sequence)
from .rows import Rows


@dataclass
class TrainConfig:
    mode: Mode = "planned"
    dense: bool = False
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 200
    diffusion_length: int = 160  # answer tokens of a diffusion-only sequence (padded)
    init: str | None = None  # start from this checkpoint folder (weights, network, tokenizer; any mode)
    compile: bool = False  # torch.compile the forward pass and the loss (`plandiff bench train-step` times it)
    network: dict = field(default_factory=dict)  # DreamConfig fields (hidden_size, num_hidden_layers, …)
    snapshots: list[int] = field(default_factory=list)  # also write the weights at these steps (output/step-N)
    group_by_length: int = 1  # batches whose rows are sorted by length together (rows.py); 1: as they come


@dataclass
class Pair:
    """One training example as text: the user prompt and the annotated answer."""

    prompt: str
    answer: str  # planned-diffusion annotation (mode "planned") or plain text (the twins)


def encode(pairs: list[Pair], tokenizer: PreTrainedTokenizerBase, tags: TagVocabulary, config: TrainConfig,
           encode_prompts: Callable[[list[str]], list[list[int]]]) -> list[Sequence]:
    end = tags.end[0]
    sequences = []
    answers = tokenizer.backend_tokenizer.encode_batch([p.answer for p in pairs], add_special_tokens=False)
    for prompt, encoded in zip(encode_prompts([p.prompt for p in pairs]), answers):
        answer = encoded.ids
        if config.mode == "planned":
            sequences.append(planned_sequence(prompt, answer, end, tags, dense=config.dense))
        elif config.mode == "autoregressive":
            sequences.append(autoregressive_sequence(prompt, answer, end))
        else:
            sequences.append(diffusion_sequence(prompt, answer, end, tags.pad, config.diffusion_length))
    return sequences


def train(
    config: TrainConfig,
    network_config: DreamConfig,
    tokenizer: PreTrainedTokenizerBase,
    tags: TagVocabulary,
    train_data: Packed | Rows,
    validation_data: Packed,
    output: str | Path,
    device: str | None = None,
    log: Callable[[dict], None] | None = None,
    initial: dict[str, torch.Tensor] | None = None,
    record: dict | None = None,
) -> dict:
    """Train a network from scratch, or from the weights `initial`, and save to `output` the weights
    of the evaluation with the lowest validation loss; return that evaluation's metrics (and the
    last evaluation's under "last" when they differ)."""
    device = device or default_device()
    if device.startswith("cuda"):
        # The CPU only launches kernels: many threads only contend (measured: a 16-core host spent
        # 7 cores spinning).
        torch.set_num_threads(min(4, torch.get_num_threads()))
    torch.manual_seed(config.seed)
    # The data lives on the device and batches are drawn there, so the GPU never waits on Python;
    # the rows of a batch are picked on the CPU, where their lengths are known without a sync.
    rows = train_data if isinstance(train_data, Rows) else Rows([train_data], tags.pad, device,
                                                                group=config.group_by_length)
    validation_data = validation_data.to(device)
    picker = torch.Generator().manual_seed(config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)
    network = DreamNetwork(network_config)
    if initial is not None:
        network.load_state_dict(initial)
    network = network.to(device)
    optimizer = make_optimizer(network, config, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    autocast = autocast_for(device)
    step_loss = loss_function(config.compile)
    progress = _progress(config.steps)
    log = log or (lambda record: None)
    # Stored in bf16 (half the bytes), loaded in fp32 by default: bf16 matmuls are slow on most CPUs.
    network_config.torch_dtype = "float32"
    saved = DreamNetwork(network_config).to(torch.bfloat16)  # the CPU copy each checkpoint is written from
    record = {"config": asdict(config), **(record or {})}
    started = time.perf_counter()
    validating = 0.0  # seconds spent on validation and checkpoints, left out of the step time
    metrics: dict = {}
    best: dict | None = None  # the metrics of the evaluation with the lowest validation loss
    for step in range(1, config.steps + 1):
        network.train()
        data, index, length = rows.batch(config.batch_size, picker)
        batch = make_batch(data, index, tags.mask, generator, length)
        stats = optimize(network, optimizer, step_loss, batch, autocast)
        schedule.step()
        progress(step, stats["loss"])
        if step in config.snapshots:  # a starting point for another run (a PD model adapted at this step)
            saved.load_state_dict(network.state_dict())
            save_checkpoint(Path(output, f"step-{step}"), network_config, saved, tokenizer)
        if step % config.eval_every == 0 or step == config.steps:
            before = time.perf_counter()
            validation_loss = _validate(network, validation_data, tags, config, autocast)
            validating += time.perf_counter() - before
            before = time.perf_counter()
            elapsed = before - started
            metrics = {"step": step, "train_loss": float(stats["loss"]), "validation_loss": validation_loss,
                       "seconds": round(elapsed, 1), "seconds_per_step": round((elapsed - validating) / step, 4),
                       "rows": rows.rows, "data_wait_seconds": round(rows.waited, 1)}
            log(metrics)
            # The weights kept are those of the lowest validation loss: a model that starts to
            # overfit is not shipped past its best point. Written now, so a run stopped early
            # leaves its best so far, marked as such by "steps_done".
            if best is None or validation_loss < best["validation_loss"]:
                best = metrics
                saved.load_state_dict(network.state_dict())
                save_checkpoint(output, network_config, saved, tokenizer)
            _summary(output, record, best, metrics, step)
            validating += time.perf_counter() - before
    return best if best is metrics else best | {"last": metrics}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_optimizer(network: torch.nn.Module, config: TrainConfig, device: str) -> torch.optim.Optimizer:
    """AdamW, no weight decay on vectors (norms, biases); one fused kernel on CUDA."""
    decay = [p for p in network.parameters() if p.ndim >= 2]
    rest = [p for p in network.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.learning_rate,
                             fused=device.startswith("cuda"))


def loss_function(compiled: bool) -> Callable:
    """`loss`, or `loss` under torch.compile: the demo network is small enough that a step is
    bound by kernel launches, which compiling fuses. Sequence lengths vary per batch, so the
    lengths are compiled as dynamic (one graph, not one per length)."""
    return torch.compile(loss, dynamic=True) if compiled else loss


def optimize(network, optimizer, step_loss: Callable, batch, autocast) -> dict[str, torch.Tensor]:
    """One optimizer step on `batch` (gradients clipped to norm 1); the loss terms as 0-d tensors."""
    with autocast:
        value, stats = step_loss(network, batch)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    optimizer.step()
    return stats


def autocast_for(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def _summary(output: str | Path, record: dict, best: dict, last: dict, step: int) -> None:
    """training.json: what made the saved weights (training and data settings), their metrics, the
    last evaluation's when it is not the best, and how many steps have run."""
    metrics = best if best is last else best | {"last": last}
    summary = {**record, "metrics": metrics, "steps_done": step}
    Path(output, "training.json").write_text(json.dumps(summary, indent=2))


@torch.no_grad()
def _validate(network, data: Packed, tags, config, autocast) -> float:
    network.eval()
    device = data.tokens.device
    generator = torch.Generator(device).manual_seed(12345)  # the same noise every evaluation
    values = []
    for start in range(0, len(data), config.batch_size):
        index = torch.arange(start, min(start + config.batch_size, len(data)), device=device)
        batch = make_batch(data, index, tags.mask, generator)
        with autocast:
            values.append(loss(network, batch)[1]["loss"])
    return float(sum(values) / max(1, len(values)))


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress(total: int) -> Callable[[int, torch.Tensor], None]:
    """A tqdm bar on a terminal; elsewhere a line every 10 % (tqdm frames are unreadable in logs)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc="training", unit="step")

        def update(step: int, value: torch.Tensor) -> None:
            bar.update(1)
            if step % 50 == 0 or step == total:  # reading the loss waits for the device
                bar.set_postfix(loss=f"{float(value):.3f}")
            if step == total:
                bar.close()

        return update

    every = max(1, total // 10)

    def report(step: int, value: torch.Tensor) -> None:
        if step % every == 0 or step == total:
            print(json.dumps({"event": "training_progress", "step": step, "of": total, "loss": round(float(value), 4)}),
                  file=sys.stderr, flush=True)

    return report
