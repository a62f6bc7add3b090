"""Settings at the boundary: pydantic-validated, from YAML presets, environment and CLI.

The generation knobs are `GenerationOptions`' fields (model/options.py), inherited here, never
declared again. Precedence: CLI flags > environment (PLANDIFF_…) > YAML preset (--config) > defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from plandiff.model.codec import DEFAULT_SYSTEM
from plandiff.model.errors import InvalidRequestError
from plandiff.model.options import GenerationOptions, invalid

# "none" in the environment unsets an optional field, as `--top-k none` does on the command line.
SETTINGS = SettingsConfigDict(env_prefix="PLANDIFF_", extra="forbid", strict=False, frozen=False, env_parse_none_str="none")


class RunSettings(BaseSettings):
    """Where and how the model runs: shared by generate, serve, batch and the benches."""

    model_config = SETTINGS

    model: str | None = Field(None, description="checkpoint folder; none = the shipped demo model")
    executor: Literal["local", "ray"] = Field("local", description=(
        "local: the worker in this process (starting Ray costs seconds); ray: worker actors"))
    workers: int = Field(1, ge=1, description="worker actors (executor ray)")
    address: str | None = Field(None, description="an existing Ray cluster (executor ray); none = a local one")
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description=(
        "the share of a GPU each worker actor takes (executor ray, device cuda): 0.5 puts two engines on one GPU"))
    ray_host: str | None = Field(None, description=(
        "the address a local Ray cluster advertises and listens on (executor ray, no address); none = 127.0.0.1 only"))
    failover_wait: float = Field(60.0, gt=0, description=(
        "seconds a request waits for a lost worker actor (or another) to answer again (executor ray)"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device: str = "cpu"
    system: str | None = Field(DEFAULT_SYSTEM, description="the system message of chat prompts")


class GenerateSettings(RunSettings, GenerationOptions):
    """Everything `plandiff generate` can be told; field names are the YAML keys."""

    model_config = SETTINGS

    def options(self) -> GenerationOptions:
        return GenerationOptions(**self.model_dump(include=set(GenerationOptions.model_fields)))


class ServeSettings(GenerateSettings):
    """`plandiff serve`: where the model runs (RunSettings), the requests' default options (the
    GenerationOptions fields: a request's body overrides them) and the server's own bounds."""

    model_config = SETTINGS

    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 exposes the server to the network)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    api_key: str | None = Field(None, min_length=1, description=(
        "require 'Authorization: Bearer KEY' on /v1/* (better from the environment: PLANDIFF_API_KEY); none = open"))
    served_model_name: str | None = Field(None, min_length=1, description=(
        "the model id in /v1/models and responses; none = the checkpoint folder's name"))
    max_body_bytes: int = Field(1 << 20, ge=1024, description="a larger request body is refused (413)")
    max_prompt_tokens: int | None = Field(None, ge=1, description=(
        "a longer prompt is refused (400); none = the model's context less one"))
    max_tokens_limit: int | None = Field(None, ge=1, description=(
        "the largest max_tokens a request may ask (400 beyond); none = the model's context"))
    max_running_requests: int = Field(64, ge=1, description="requests generating at once; more wait in a queue")
    max_waiting_requests: int = Field(256, ge=0, description="requests queued beyond those; more are refused (429)")
    retry_after: int = Field(1, ge=1, description="seconds in the Retry-After of a 429 or 503 answer")
    drain_timeout: float = Field(30.0, ge=0, description=(
        "on SIGTERM, seconds in-flight requests get to finish (new ones get 503) before the server stops"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InvalidRequestError(f"config file {path} does not exist", field="config")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise InvalidRequestError(f"{path} must hold a mapping of settings, not {type(values).__name__}",
                                  field="config")
    return values


def load_settings(cls: type[BaseSettings], preset: str | Path | None, cli: dict[str, Any]):
    """Merge a YAML preset, the environment and CLI values into `cls`."""
    values = read_yaml(preset) if preset is not None else {}
    try:
        # What the environment sets, as raw text: validated once with the rest, not alone (alone,
        # PLANDIFF_ORDER=adaptive was refused for want of the threshold that --threshold gives).
        values.update(EnvSettingsSource(cls)())
        values.update(cli)
        return cls.model_validate(values)
    except ValidationError as err:
        # A Validated model's own __init__ runs inside model_validate: its InvalidRequestError (which
        # names the field) comes back wrapped in a ValidationError without a location.
        inner = [e.get("ctx", {}).get("error") for e in err.errors()]
        if len(inner) == 1 and isinstance(inner[0], InvalidRequestError):
            raise inner[0] from None
        raise invalid(err) from None
    except SettingsError as err:  # e.g. an environment value that is not the JSON a field needs
        raise InvalidRequestError(f"invalid settings: {err}") from None


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
    snapshots: list[int] = Field(default_factory=list, description="steps whose weights are also written to output/step-N")
    group_by_length: int = Field(1, ge=1, description="batches whose rows are sorted by length together, so a "
                                 "batch pads little (1: the stream's order; docs/training.md says what it gains)")
    device: str | None = None
    network: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)


def load_train_settings(path: str | Path, overrides: dict[str, Any]) -> TrainSettings:
    values = read_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainSettings.model_validate(values)
    except ValidationError as err:
        raise invalid(err) from None
