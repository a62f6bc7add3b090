"""Tiny random checkpoints, built locally: for tests, and for the CLI until a trained demo model ships.

Two tokenizer layouts, both byte-level BPE without merges (one token per byte, in the GPT-2 byte
order that Qwen2's first 256 ids also use, so digits are ids 15–24 and a space is 220):
- "dream": the control tags and chat tokens sit at the released checkpoints' ids (151643…151672)
  and the vocabulary has Dream's 152064 rows, so the official code can run the same weights;
- "compact": the same tokens right after the bytes (ids 256…265); a vocabulary of 272 rows.

Weights come from one seeded recipe (`random_weights`), so a test can rebuild them bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .config import DreamConfig
from .loading import save_checkpoint
from .network import DreamNetwork, skeleton

Layout = Literal["dream", "compact"]

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PD_TOKENS = ["<|mask|>", "<async>", "</async>", "<promise>-<topic>", "</topic>", "<sync/>", "[PAD]"]
DREAM_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|mask|>": 151666,
             "<async>": 151667, "</async>": 151668, "<promise>-<topic>": 151669, "</topic>": 151670,
             "<sync/>": 151671, "[PAD]": 151672}
# Qwen2's pre-tokenizer: every digit is its own token.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """The 256 byte symbols of byte-level BPE, in id order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def build_tokenizer(layout: Layout = "compact") -> PreTrainedTokenizerFast:
    vocab = {s: i for i, s in enumerate(byte_symbols())}
    names = SPECIAL + PD_TOKENS
    vocab.update(DREAM_IDS if layout == "dream" else {name: 256 + i for i, name in enumerate(names)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    # The released checkpoints register the planned-diffusion tags as ordinary added tokens.
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in PD_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_config(layout: Layout = "compact", **overrides) -> DreamConfig:
    values = dict(
        vocab_size=152064 if layout == "dream" else 272,
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rope_theta=10000.0, torch_dtype="float32",
        mask_token_id=DREAM_IDS["<|mask|>"] if layout == "dream" else 256 + 3,
        pad_token_id=DREAM_IDS["<|endoftext|>"] if layout == "dream" else 256,
        bos_token_id=DREAM_IDS["<|endoftext|>"] if layout == "dream" else 256,
        eos_token_id=DREAM_IDS["<|endoftext|>"] if layout == "dream" else 256,
    )
    values.update(overrides)
    return DreamConfig(**values)


def random_weights(config: DreamConfig, seed: int = 0, lm_scale: float = 8.0, zero_rows_from: int | None = None):
    """The recipe: parameters in sorted-name order, each drawn from one torch.Generator(seed).

    Norm weights are 1; embeddings N(0, 1); biases N(0, 0.1²); other matrices N(0, 1/fan_in);
    lm_head N(0, (lm_scale/√hidden)²) so predictions are peaked (far from ties). lm_head rows from
    `zero_rows_from` on are zero, so tags and the mask are never the greedy choice.
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in skeleton(config).state_dict().items()}
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape)
            continue
        if name.endswith("embed_tokens.weight"):
            std = 1.0
        elif name.endswith(".bias"):
            std = 0.1
        elif name == "lm_head.weight":
            std = lm_scale / math.sqrt(config.hidden_size)
        else:
            std = 1.0 / math.sqrt(shape[1])
        state[name] = torch.randn(shape, generator=generator) * std
    if zero_rows_from is not None:
        state["lm_head.weight"][zero_rows_from:] = 0
    return state


def build_random_checkpoint(
    folder: str | Path,
    layout: Layout = "compact",
    seed: int = 0,
    lm_scale: float = 8.0,
    max_shard_size: int | str = "5GB",
    writes_tags: bool = False,
    **config_overrides,
) -> Path:
    """Write a tiny random checkpoint folder (config, safetensors, tokenizer) and return its path.

    By default its head never prefers a tag (so its planner writes plain text); `writes_tags=True`
    keeps random head rows for the tags too, a planner that writes them, well-formed or not.
    """
    config = tiny_config(layout, **config_overrides)
    tokenizer = build_tokenizer(layout)
    network = DreamNetwork(config)
    zero_from = None if writes_tags else DREAM_IDS["<|endoftext|>"] if layout == "dream" else 256
    network.load_state_dict(random_weights(config, seed, lm_scale, zero_from))
    save_checkpoint(folder, config, network, tokenizer, max_shard_size=max_shard_size)
    return Path(folder)
