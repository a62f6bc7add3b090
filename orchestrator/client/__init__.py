"""plandiff.client: an async Python client (httpx) of a plandiff server.

    from plandiff.client import PlandiffClient

    async with PlandiffClient("http://127.0.0.1:8000") as client:
        answer = await client.generate("…", order="adaptive", threshold=0.99)

Torch-free: it needs httpx and pydantic (and plandiff's option and event declarations).
"""

from plandiff.orchestrator.events import (DoneEvent, Event, PlanTokenEvent, SpanDoneEvent, SpanProgressEvent,
                                          SpanPromisedEvent, SpanRetriedEvent, SyncEvent, TextEvent, Usage)

from .client import Completion, EventStream, OtherEvent, PlandiffClient
from .errors import (APIConnectionError, APITimeoutError, AuthenticationError, BadRequestError,
                     InternalServerError, PlandiffAPIError, PlandiffClientError, RateLimitError,
                     ServiceUnavailableError)

__all__ = [
    "APIConnectionError", "APITimeoutError", "AuthenticationError", "BadRequestError", "Completion", "DoneEvent",
    "Event", "EventStream", "InternalServerError", "OtherEvent", "PlanTokenEvent", "PlandiffAPIError",
    "PlandiffClient", "PlandiffClientError", "RateLimitError", "ServiceUnavailableError", "SpanDoneEvent",
    "SpanProgressEvent", "SpanPromisedEvent", "SpanRetriedEvent", "SyncEvent", "TextEvent", "Usage",
]
