"""The client's typed errors. An answer other than success is a `PlandiffAPIError` carrying the
server's status, type, param (the field it is about) and code; a 4xx about a field is also an
`InvalidRequestError`, so code that catches bad options locally catches them remotely too."""

from __future__ import annotations

from plandiff.model.errors import InvalidRequestError, PlandiffError


class PlandiffClientError(PlandiffError):
    """Base of every error the client raises."""


class PlandiffAPIError(PlandiffClientError):
    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None, request_id: str | None = None, retry_after: float | None = None):
        Exception.__init__(self, f"{status} {type or 'error'}: {message}" + (f" (param: {param})" if param else ""))
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.field = param
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequestError(PlandiffAPIError, InvalidRequestError):
    """400, 404, 413, 422: the request itself is wrong; `param` names the field."""


class AuthenticationError(PlandiffAPIError):
    """401: a missing or wrong API key."""


class RateLimitError(PlandiffAPIError):
    """429: the server is at its admission bound (retried with backoff before this is raised)."""


class ServiceUnavailableError(PlandiffAPIError):
    """503: the server is starting or draining, or lost a worker (retried before this is raised)."""


class InternalServerError(PlandiffAPIError):
    """Another 5xx."""


class APIConnectionError(PlandiffClientError):
    """The server could not be reached (retried before this is raised), or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


def error_for(status: int, body: object, request_id: str | None = None,
              retry_after: float | None = None) -> PlandiffAPIError:
    """The typed error of an HTTP answer, from its OpenAI-style body ({"error": {message, type, param, code}})."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body)[:500] if body else f"HTTP {status}"}
    cls = (AuthenticationError if status == 401 else RateLimitError if status == 429
           else ServiceUnavailableError if status == 503 else InternalServerError if status >= 500
           else BadRequestError)
    return cls(status, str(error.get("message")), error.get("type"), error.get("param"), error.get("code"),
               request_id, retry_after)
