"""The Dream network's configuration, read from and written to a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DreamConfig:
    """Shape and numerics of a Dream (Qwen2-style) network.

    Defaults are those of Dream-v0-Instruct-7B and the planned-diffusion fine-tunes. Keys of
    config.json that are not fields here are kept in `extra` and written back unchanged.
    """

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643
    disable_block_sparsity: bool = False
    torch_dtype: str = "bfloat16"
    # Tag strings that differ from the released checkpoints' profile (see tags.py).
    plandiff_tags: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (Dream uses 'silu')")
        if self.rope_scaling not in (None, {}) and self.rope_scaling.get("rope_type", "default") != "default":
            raise ValueError(f"rope_scaling {self.rope_scaling!r} is not supported; only default RoPE")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DreamConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_file(cls, path: str | Path) -> DreamConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if data["plandiff_tags"] is None:
            del data["plandiff_tags"]
        # Keys the official loader reads although its config class does not declare them.
        derived = {
            "model_type": "Dream",
            "architectures": ["DreamModel"],
            "sliding_window": self.max_position_embeddings,
            "use_sliding_window": False,
            "max_window_layers": self.num_hidden_layers,
            "use_cache": True,
        }
        return {**self.extra, **derived, **data}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
