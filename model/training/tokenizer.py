"""A small byte-level BPE tokenizer for the demo model, trained on its own data.

Built like the tiny random checkpoints' tokenizer (random_checkpoint.py) and like Qwen2's: NFC, the
Qwen2 pre-tokenizer regex (every digit its own token, so span lengths are single digit tokens),
byte-level BPE and decoder, ChatML template. The chat tokens and the planned-diffusion tags take ids
0–9, in the order of random_checkpoint.SPECIAL + PD_TOKENS: the chat tokens as special tokens, the
tags as ordinary atomic added tokens, as in the released checkpoints. Tag strings in the training
texts are cut out before training, so no merge learns pieces of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..random_checkpoint import CHATML, PD_TOKENS, SPECIAL, SPLIT

_TAGS = re.compile("|".join(re.escape(t) for t in SPECIAL + PD_TOKENS))


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for piece in _TAGS.split(text):
            if piece:
                yield piece


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train on `texts`; the vocabulary (tags and the 256 bytes included) has at most vocab_size ids."""
    names = SPECIAL + PD_TOKENS
    if vocab_size < 256 + len(names):
        raise ValueError(f"vocab_size must be at least {256 + len(names)} (bytes and tags)")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=names,  # ids 0..9, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_pieces(texts), trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    # The released checkpoints register the planned-diffusion tags as ordinary added tokens.
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in PD_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast
