"""plandiff.model: the planned-diffusion network, tags, plan grammar, layout, unmasking and generation.

Pure torch + transformers; knows nothing of Ray, HTTP or requests. The names below load on first
use, so that the control plane can import the options, errors and events without torch.
"""

from importlib import import_module

_WHERE = {
    "CheckpointError": "errors", "InvalidPlanError": "errors", "InvalidRequestError": "errors",
    "MalformedPlanError": "errors", "PlandiffError": "errors", "PromptTooLongError": "errors",
    "GenerationOptions": "options", "Sampling": "options",
    "GenerationResult": "result", "ModelRuntime": "runtime",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
