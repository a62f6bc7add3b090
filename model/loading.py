"""Reading and writing HF checkpoint folders of Dream and the planned-diffusion fine-tunes.

A folder holds config.json, weights as model.safetensors or shards with model.safetensors.index.json,
and tokenizer files. Our own code builds the network; nothing runs `trust_remote_code`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from .checkpoint_folder import load_tokenizer, read_config
from .config import DreamConfig
from .errors import CheckpointError
from .network import DreamNetwork, skeleton
from .tags import TagProfile, TagVocabulary

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass
class Checkpoint:
    config: DreamConfig
    network: DreamNetwork
    tokenizer: PreTrainedTokenizerBase
    profile: TagProfile
    tags: TagVocabulary


def resolve_dtype(name: str | torch.dtype | None, config: DreamConfig) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    name = name or config.torch_dtype
    if name not in DTYPES:
        raise CheckpointError(f"dtype {name!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / INDEX).exists():
        try:
            files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{folder / INDEX} is not a shard index: {err}") from err
    elif (folder / SINGLE).exists():
        files = [SINGLE]
    else:
        raise CheckpointError(f"{folder} has neither {SINGLE} nor {INDEX}")
    state = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"shard {name} named by {INDEX} is missing from {folder}")
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except Exception as err:  # safetensors raises its own SafetensorError for a damaged file
            raise CheckpointError(f"cannot read {path}: {err}") from err
    return state


def load_checkpoint(
    folder: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load config, weights and tokenizer from an HF checkpoint folder."""
    folder = Path(folder)
    config = read_config(folder)
    dtype = resolve_dtype(dtype, config)
    state = load_state_dict(folder)
    network = skeleton(config)
    expected = set(network.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"weights of {folder} do not match the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    wrong = [f"{k} is {tuple(state[k].shape)}, config.json implies {shapes[k]}"
             for k in sorted(shapes) if tuple(state[k].shape) != shapes[k]]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise CheckpointError(f"weights of {folder} do not match its config.json: {'; '.join(wrong[:3])}{more}")
    network.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    network.to(device=device).eval()
    tokenizer = load_tokenizer(folder)
    profile = TagProfile.from_overrides(config.plandiff_tags)
    tags = TagVocabulary.from_tokenizer(tokenizer, profile)
    top = max(tags.structural | set(tags.digits))
    if top >= config.vocab_size:
        raise CheckpointError(f"tag id {top} is outside the model's vocabulary of {config.vocab_size}")
    return Checkpoint(config, network, tokenizer, profile, tags)


def save_checkpoint(
    folder: str | Path,
    config: DreamConfig,
    network: DreamNetwork,
    tokenizer: PreTrainedTokenizerBase,
    max_shard_size: int | str = "5GB",
) -> None:
    """Write an HF folder that both plandiff and the official code load; shard above max_shard_size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config.save(folder / "config.json")
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                  "pad_token_id": config.pad_token_id, "mask_token_id": config.mask_token_id}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer.save_pretrained(folder)
