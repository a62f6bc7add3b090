"""A checkpoint folder's config and tokenizer, read without torch (the control plane needs them to
encode prompts and decode answers; the weights are loading.py's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DreamConfig
from .errors import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def read_config(folder: Path) -> DreamConfig:
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} is not a checkpoint folder: config.json is missing")
    try:
        return DreamConfig.from_file(folder / "config.json")
    except (ValueError, TypeError) as err:  # bad JSON, unknown field values
        raise CheckpointError(f"{folder / 'config.json'} is not a usable Dream config: {err}") from err


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """tokenizer.json if present; else vocab.json + merges.txt as a Qwen2 byte-level BPE, which is what
    the released checkpoints' remote-code DreamTokenizer is (reference §1.3)."""
    from transformers import PreTrainedTokenizerFast

    try:
        if (folder / "tokenizer.json").exists():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            from transformers import Qwen2Tokenizer

            tokenizer = Qwen2Tokenizer.from_pretrained(folder)
        else:
            raise CheckpointError(f"{folder} has no tokenizer: neither tokenizer.json nor vocab.json + merges.txt")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the tokenizer of {folder}: {err}") from err
    check_added_tokens(folder, tokenizer)
    return tokenizer


def check_added_tokens(folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """The ids a checkpoint declares for its added tokens must be the ids the tokenizer gives them:
    a library that renumbers them would silently feed the model the wrong tags."""
    settings = folder / "tokenizer_config.json"
    try:
        declared = json.loads(settings.read_text()).get("added_tokens_decoder", {}) if settings.exists() else {}
    except ValueError as err:
        raise CheckpointError(f"{settings} is not valid JSON: {err}") from err
    for token_id, entry in declared.items():
        actual = tokenizer.convert_tokens_to_ids(entry["content"])
        if actual != int(token_id):
            raise CheckpointError(
                f"the tokenizer of {folder} maps {entry['content']!r} to id {actual}, but tokenizer_config.json "
                f"declares id {token_id}"
            )
