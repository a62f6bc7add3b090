"""What the `plandiff` commands share: the model flags and how a command's settings are read."""

from __future__ import annotations

from pathlib import Path

import plandiff.configs
import plandiff.model

from .flags import add_flags, given
from .settings import GenerateSettings, RunSettings, load_settings

# With no --model, the shipped demo model answers, decoded with its preset (configs/demo.yaml).
DEMO_MODEL = Path(plandiff.model.__file__).parent / "demo" / "pd"
DEMO_PRESET = Path(plandiff.configs.__file__).parent / "demo.yaml"


def add_model_arguments(p) -> None:
    p.add_argument("--config", help="YAML preset of settings (see configs/)")
    add_flags(p, RunSettings, skip={"system"})


def settings_from(args, cls: type[RunSettings] = GenerateSettings) -> RunSettings:
    """The settings of a command: its flags over the environment over its preset; with no model,
    the shipped demo model, decoded with its preset unless --config names one."""
    cli = given(args, cls)
    settings = load_settings(cls, args.config, cli)
    if settings.model is None:
        settings = load_settings(cls, args.config or DEMO_PRESET, {**cli, "model": str(DEMO_MODEL)})
    return settings


def torch_device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device))
