"""`plandiff batch` settings: where the model runs and the default options of every line (those of
`plandiff generate`, inherited, never declared again), and the batch's own."""

from __future__ import annotations

from pydantic import Field

from ..settings import SETTINGS, GenerateSettings


class BatchSettings(GenerateSettings):
    model_config = SETTINGS

    workers: int | None = Field(None, ge=1, description=(
        "worker actors (executor ray); none = one per GPU of the cluster when the device is cuda, else 1"))
    device: str = Field("auto", description="cpu, cuda, or auto: cuda when there are GPUs (the Ray cluster's), else cpu")
    max_in_flight_per_worker: int = Field(8, ge=1, description=(
        "requests each worker is given at once, which its engine packs into shared forwards (it admits up to "
        "64; on a GPU raise this towards that)"))
    max_prompt_tokens: int | None = Field(None, ge=1, description=(
        "a longer prompt is an error line; none = the model's context less one"))
    item_retries: int = Field(1, ge=0, le=5, description=(
        "times an item is redone after its request lost its workers (beyond the orchestrator's own failover)"))
    fsync: bool = Field(True, description="flush each output line to disk before the next (survives a crash)")
    progress_interval: float = Field(10.0, gt=0, description="seconds between progress log lines when not on a terminal")
