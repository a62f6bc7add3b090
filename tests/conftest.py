"""Shared fixtures: tiny random checkpoints built once per test session (never downloaded)."""

import os

# The paged attention kernel (Triton) runs on CPU tensors in Triton's interpreter, which must be
# chosen before Triton is first imported.
if os.environ.get("PLANDIFF_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from plandiff.model import ModelRuntime
from plandiff.model.random_checkpoint import build_random_checkpoint

torch.set_num_threads(1)  # golden comparisons were made single-threaded
DEVICE = os.environ.get("PLANDIFF_TEST_DEVICE", "cpu")  # "cuda" to run the model tests on a GPU


@pytest.fixture(scope="session")
def compact_folder(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("compact") / "ckpt", "compact", seed=0)


@pytest.fixture(scope="session")
def compact(compact_folder) -> ModelRuntime:
    return ModelRuntime.load(compact_folder, device=DEVICE)


@pytest.fixture(scope="session")
def dream(tmp_path_factory) -> ModelRuntime:
    """The recipe of tests/fixtures/reference_greedy.json: Dream ids and vocabulary, seed 0."""
    folder = build_random_checkpoint(tmp_path_factory.mktemp("dream") / "ckpt", "dream", seed=0, lm_scale=8.0)
    return ModelRuntime.load(folder, device=DEVICE)
