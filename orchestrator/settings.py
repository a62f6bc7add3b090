"""Generation settings at the boundary: pydantic-validated, from YAML presets, environment and CLI.

Precedence: CLI flags > environment (PLANDIFF_…) > YAML preset (--config) > defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from plandiff.model import GenerationOptions, InvalidRequestError, Sampling


class GenerateSettings(BaseSettings):
    """Everything `plandiff generate` can be told; field names are the YAML keys."""

    model_config = SettingsConfigDict(env_prefix="PLANDIFF_", extra="forbid")

    model: str | None = Field(None, description="checkpoint folder; none = the shipped demo model")
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1)
    address: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device: str = "cpu"
    system: str | None = "You are a helpful assistant."
    mode: Literal["planned", "autoregressive", "diffusion"] = "planned"
    max_new_tokens: int = Field(512, ge=1)
    steps_ratio: float = Field(1.0, gt=0, le=1)
    order: Literal["entropy", "confidence", "margin", "threshold", "adaptive"] = "entropy"
    threshold: float | None = Field(None, gt=0, le=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(50, ge=1)
    dense: bool | None = None
    length_scale: float | None = Field(None, gt=0)
    max_span_length: int = Field(256, ge=1)
    kv_refresh: Literal["exact", "reference"] = "exact"
    on_malformed_plan: Literal["autoregressive", "raise"] = "autoregressive"
    on_overflow: Literal["accept", "retry"] = "accept"
    max_overflow_retries: int = Field(1, ge=0)
    constrained: bool = True
    max_plan_tokens: int = Field(256, ge=1)
    max_spans: int = Field(16, ge=1)
    max_rounds: int = Field(8, ge=1)
    seed: int | None = None

    def options(self) -> GenerationOptions:
        return GenerationOptions(
            mode=self.mode, max_new_tokens=self.max_new_tokens, steps_ratio=self.steps_ratio, order=self.order,
            threshold=self.threshold,
            sampling=Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k),
            dense=self.dense, length_scale=self.length_scale, max_span_length=self.max_span_length,
            kv_refresh=self.kv_refresh, on_malformed_plan=self.on_malformed_plan, on_overflow=self.on_overflow,
            max_overflow_retries=self.max_overflow_retries, constrained=self.constrained,
            max_plan_tokens=self.max_plan_tokens, max_spans=self.max_spans, max_rounds=self.max_rounds,
            seed=self.seed,
        )


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InvalidRequestError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise InvalidRequestError(f"{path} must hold a mapping of settings, not {type(values).__name__}")
    return values


def problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def load_settings(preset: str | Path | None, cli: dict[str, Any]) -> GenerateSettings:
    """Merge a YAML preset, the environment and CLI values (None = not given on the CLI)."""
    values = read_yaml(preset) if preset is not None else {}
    try:
        values.update(GenerateSettings().model_dump(exclude_unset=True))  # what the environment sets
        values.update({k: v for k, v in cli.items() if v is not None})
        return GenerateSettings.model_validate(values)
    except ValidationError as err:
        raise InvalidRequestError(f"invalid settings: {problems(err)}") from err


class TrainSettings(BaseModel):
    """`plandiff train --config FILE`: a YAML of these fields (see configs/train/*.yaml)."""

    model_config = {"extra": "forbid"}

    output: str
    mode: Literal["planned", "autoregressive", "diffusion"] = "planned"
    dense: bool = False
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0
    eval_every: int = Field(200, ge=1)
    init: str | None = None
    compile: bool = False
    device: str | None = None
    network: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)


def load_train_settings(path: str | Path, overrides: dict[str, Any]) -> TrainSettings:
    values = read_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainSettings.model_validate(values)
    except ValidationError as err:
        raise InvalidRequestError(f"invalid training settings in {path}: {problems(err)}") from err
