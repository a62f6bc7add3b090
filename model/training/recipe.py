"""The demo recipe: synthetic task → tokenizer → annotated examples → a trained checkpoint folder."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Iterator

import torch
from transformers import PreTrainedTokenizerFast

from ..codec import TextCodec
from ..config import DreamConfig
from ..errors import InvalidRequestError
from ..checkpoint_folder import load_tokenizer
from ..loading import Checkpoint, load_checkpoint
from ..tags import TagProfile, TagVocabulary
from .objective import Packed, Sequence, concat, pack
from .synthetic import DEFAULT_MIX, SHARD, Example, ar_completion, completion, draw_shard, make_split
from .tokenizer import train_tokenizer
from .rows import Rows
from .trainer import Pair, TrainConfig, default_device, encode, train


@dataclass
class DataConfig:
    train: int = 20000  # examples
    validation: int = 500
    seed: int = 0
    vocab_size: int = 2048
    tokenizer: str | None = None  # reuse this tokenizer folder (so a twin shares the vocabulary)
    # Build the tokenizer from the first N training examples only (deterministic, so a rebuild
    # agrees), and stream the training examples while the model trains; unset: from all of them,
    # drawn before training starts.
    tokenizer_examples: int | None = None
    join: str = "span"  # rounds after <sync/> as spans, or "text": plain AR text (PD annotation only)
    # Training examples of the stream to pass over first: a model adapted from another run's
    # checkpoint at step k skips k × batch and trains on the examples that run trained on next.
    skip: int = 0

    def __post_init__(self) -> None:
        if self.join not in ("span", "text"):
            raise InvalidRequestError(f"data.join must be span or text, not {self.join!r}")
        if self.tokenizer_examples is not None and (self.tokenizer or self.tokenizer_examples < 1):
            raise InvalidRequestError("data.tokenizer_examples builds a tokenizer from that many examples (at least "
                                      "one); it cannot go with data.tokenizer, which reuses one")


def build_tokenizer(examples: list[Example], vocab_size: int) -> PreTrainedTokenizerFast:
    """A tokenizer trained on `examples` (deterministic: the same examples give the same vocabulary)."""
    texts = [e.prompt for e in examples] + [ar_completion(e) for e in examples]
    texts += [topic for e in examples for r in e.rounds for topic, _ in r.spans]
    return train_tokenizer(texts, vocab_size)


def pairs(examples: list[Example], config: TrainConfig, tokenizer, join: str = "span") -> list[Pair]:
    if config.mode == "planned":
        return [Pair(e.prompt, completion(e, tokenizer, join=join)) for e in examples]
    return [Pair(e.prompt, ar_completion(e)) for e in examples]


def run(config: TrainConfig, data: DataConfig, output: str | Path, device: str | None = None, log=None) -> dict:
    start = _start(config, data)
    # A tokenizer named by the recipe is loaded first: a wrong folder fails before minutes of drawing.
    named = start.tokenizer if start else load_tokenizer(Path(data.tokenizer)) if data.tokenizer else None
    if data.skip and named is None and not data.tokenizer_examples:
        raise InvalidRequestError("data.skip continues the examples of another run: it needs that run's tokenizer "
                                  "(init, data.tokenizer, or data.tokenizer_examples as that run had them)")
    device = device or default_device()
    # Drawing and encoding examples is pure Python: spread over the cores (one per chunk of work),
    # at a lower priority than this process, which launches the training's kernels. One torch
    # thread per worker: a forked child must not enter the OpenMP pool that the parent may have
    # used (loading `init` does), or its first large tensor operation hangs.
    pool = ProcessPoolExecutor(_workers(), mp_context=multiprocessing.get_context("fork"), initializer=_worker_setup)
    try:
        streamed = named is not None or bool(data.tokenizer_examples)  # training examples come while it trains
        if named is not None:
            tokenizer = named
        elif data.tokenizer_examples:  # the first N distinct examples of the stream's shards
            tokenizer = build_tokenizer(make_split("train", data.tokenizer_examples, data.seed, pool=pool),
                                        data.vocab_size)
        else:
            # The tokenizer is trained on every training example, so they are drawn first.
            examples = make_split("train", data.train, data.seed, pool=pool)
            tokenizer = build_tokenizer(examples, data.vocab_size)
        tokenizer.save_pretrained(output)  # first, so that a twin may start from it while this one trains
        tags = TagVocabulary.from_tokenizer(tokenizer)
        encoding = (repeat(config), repeat(tokenizer), repeat(data.join))
        validation = make_split("validation", data.validation, data.seed)
        validation_data = concat([_unpack(a) for a in pool.map(_encode_and_pack, _chunks(validation), *encoding)],
                                 tags.pad)
        # The training rows come as the workers finish them, in order, while the model trains.
        if streamed:
            skipped, chunks = training_chunks(pool, data, config, tokenizer)
        else:
            skipped, chunks = 0, map(_unpack, pool.map(_encode_and_pack, _chunks(examples), *encoding))
        rows = Rows(chunks, tags.pad, device, skip=skipped, keep=config.steps * config.batch_size > data.train,
                    group=config.group_by_length)
        if start:
            network, initial = start.config, start.network.state_dict()  # loaded in float32
        else:
            vocab = max(tokenizer.get_vocab().values()) + 1
            network, initial = DreamConfig(**{
                "vocab_size": -(-vocab // 64) * 64, "mask_token_id": tags.mask, "pad_token_id": tags.pad,
                "bos_token_id": tags.end[-1], "eos_token_id": tags.end[-1], "max_position_embeddings": 1024,
                "rope_theta": 10000.0, "disable_block_sparsity": config.dense, **config.network,
            }), None
        return train(config, network, tokenizer, tags, rows, validation_data, output, device, log, initial,
                     record={"data": asdict(data)})
    finally:
        pool.shutdown(cancel_futures=True)  # a run stopped early does not wait for the rest of its data


def training_chunks(pool: Executor, data: DataConfig, config: TrainConfig, tokenizer) -> tuple[int, Iterator[Packed]]:
    """The training examples drawn and encoded shard by shard in `pool`, in order, from the one
    holding example `data.skip`; and how many rows of the first chunk come before it."""
    first, skipped = divmod(data.skip, SHARD)
    total = skipped + data.train
    sizes = [min(SHARD, total - k * SHARD) for k in range(-(-total // SHARD))]
    arrays = pool.map(_draw_and_pack, repeat(data.seed), range(first, first + len(sizes)), sizes,
                      repeat(config), repeat(tokenizer), repeat(data.join))
    return skipped, map(_unpack, arrays)


def _worker_setup() -> None:
    torch.set_num_threads(1)
    os.nice(10)


def _workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _chunks(examples: list[Example], size: int = 5000) -> list[list[Example]]:
    return [examples[i:i + size] for i in range(0, len(examples), size)]


def encode_examples(examples: list[Example], config: TrainConfig, tokenizer, join: str) -> list[Sequence]:
    tags = TagVocabulary.from_tokenizer(tokenizer)
    codec = TextCodec(tokenizer, TagProfile(), tags)
    return encode(pairs(examples, config, tokenizer, join), tokenizer, tags, config, codec.encode_prompts)


def _encode_and_pack(examples: list[Example], config: TrainConfig, tokenizer, join: str) -> tuple:
    """A chunk encoded and packed in a worker, returned as numpy arrays (a plain copy to send back)."""
    packed = pack(encode_examples(examples, config, tokenizer, join), TagVocabulary.from_tokenizer(tokenizer).pad)
    return tuple(t.numpy() for t in packed.columns())


def _draw_and_pack(seed: int, index: int, size: int, config: TrainConfig, tokenizer, join: str) -> tuple:
    """Shard `index` of the training split (its first `size` examples), encoded and packed."""
    return _encode_and_pack(draw_shard("train", size, seed, DEFAULT_MIX, index), config, tokenizer, join)


def _unpack(arrays: tuple) -> Packed:
    return Packed(*map(torch.from_numpy, arrays))


def _start(config: TrainConfig, data: DataConfig) -> Checkpoint | None:
    """The checkpoint `config.init` names, checked against the recipe: training from it keeps its
    network and tokenizer (the optimizer and the schedule start afresh). Its mode may differ: the
    shipped PD model starts from its AR twin."""
    if not config.init:
        return None
    start = load_checkpoint(config.init, dtype="float32")
    problems = [f"network.{k}={v} (the checkpoint has {getattr(start.config, k, None)})"
                for k, v in config.network.items() if getattr(start.config, k, None) != v]
    if config.dense != start.config.disable_block_sparsity:
        problems.append(f"dense={config.dense} (the checkpoint has {start.config.disable_block_sparsity})")
    if data.tokenizer or data.tokenizer_examples:
        problems.append("data.tokenizer or data.tokenizer_examples (the checkpoint's own tokenizer is used)")
    if problems:
        raise InvalidRequestError(f"init {config.init}: the recipe disagrees with the checkpoint: {'; '.join(problems)}")
    return start
