"""plandiff.model: the planned-diffusion network, tags, plan grammar, layout, unmasking and generation.

Pure torch + transformers; knows nothing of Ray, HTTP or requests.
"""

from .errors import (
    CheckpointError, InvalidPlanError, InvalidRequestError, MalformedPlanError, PlandiffError, PromptTooLongError,
)
from .options import GenerationOptions
from .result import GenerationResult
from .runtime import ModelRuntime
from .unmasking import Sampling

__all__ = [
    "CheckpointError", "GenerationOptions", "GenerationResult", "InvalidPlanError", "InvalidRequestError",
    "MalformedPlanError", "ModelRuntime", "PlandiffError", "PromptTooLongError", "Sampling",
]
