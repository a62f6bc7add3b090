"""plandiff's HTTP server: OpenAI-compatible completions and chat completions (JSON or SSE), the
planned-diffusion knobs and events as extra fields, /v1/models, /health and /metrics; admission,
API key, bounds, cancellation on disconnect, drain on SIGTERM. docs/serving.md describes it.

    from plandiff.orchestrator.server import build_app, serve, BackgroundServer

Importing it loads neither torch nor transformers: they load with the model, in the background.
"""

from .app import build_app
from .serve import BackgroundServer, serve

__all__ = ["BackgroundServer", "build_app", "serve"]
