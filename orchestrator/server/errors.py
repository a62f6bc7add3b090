"""OpenAI-style error answers: `{"error": {"message", "type", "param", "code"}}`, and the mapping of
plandiff's typed errors onto them. Nothing here ever puts a traceback in a body."""

from __future__ import annotations

from plandiff.model.errors import InvalidPlanError, InvalidRequestError, MalformedPlanError, PromptTooLongError

from ..executors import WorkerLost

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "service_unavailable_error"}


class APIError(Exception):
    """An answer other than success: status, message, the field it is about (`param`) and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def from_exception(err: BaseException, prompt_field: str = "prompt") -> APIError:
    """The answer for an error raised while a request was validated or run. `prompt_field` is the
    body's name for the prompt (prompt or messages): errors about prompt ids name it."""
    if isinstance(err, APIError):
        return err
    cause = getattr(err, "cause", None)  # an error raised in a Ray actor: its message holds a traceback
    if isinstance(cause, BaseException) and any(c.__name__ == "RayTaskError" for c in type(err).__mro__):
        err = cause
    if isinstance(err, PromptTooLongError):
        return APIError(400, str(err), prompt_field, "prompt_too_long")
    if isinstance(err, InvalidRequestError):
        field = err.field
        if field in ("prompt", "prompt_ids"):
            field = prompt_field
        return APIError(400, str(err), field, "invalid_value")
    if isinstance(err, InvalidPlanError):
        return APIError(400, f"invalid plan: {err}", "plan", "invalid_plan")
    if isinstance(err, MalformedPlanError):
        return APIError(422, f"{err} (on_malformed_plan is 'raise')", "on_malformed_plan", "malformed_plan")
    if isinstance(err, WorkerLost):
        return APIError(503, "the worker running this request was lost and no other could finish it; retry",
                        None, "worker_lost")
    return APIError(500, "internal error while generating; the server log has the details", None, "internal_error")
