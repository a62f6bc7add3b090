"""Typed errors of the model layer. Each message says what was wrong and what to change."""


class PlandiffError(Exception):
    """Base of every error plandiff raises on purpose."""


class CheckpointError(PlandiffError):
    """A checkpoint folder is missing a file, has a bad config, or lacks a control tag."""


class InvalidPlanError(PlandiffError):
    """A plan given by the caller (forced-plan mode) breaks the plan grammar or a bound."""


class InvalidRequestError(PlandiffError, ValueError):
    """A generation option or input is out of range. `field` names it (dotted for nested ones)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class PromptTooLongError(InvalidRequestError):
    """The prompt does not leave room for a single generated token (or exceeds a server's bound)."""

    def __init__(self, message: str, field: str | None = "prompt"):
        super().__init__(message, field)


class MalformedPlanError(PlandiffError):
    """The model wrote a plan that cannot be used and the request asked for an error.

    `token_ids` holds everything generated so far, so nothing is lost.
    """

    def __init__(self, reason: str, token_ids: list[int]):
        super().__init__(f"malformed plan: {reason}")
        self.reason = reason
        self.token_ids = token_ids
