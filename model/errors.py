"""Typed errors of the model layer. Each message says what was wrong and what to change."""


class PlandiffError(Exception):
    """Base of every error plandiff raises on purpose."""


class CheckpointError(PlandiffError):
    """A checkpoint folder is missing a file, has a bad config, or lacks a control tag."""


class PromptTooLongError(PlandiffError):
    """The prompt does not leave room for a single generated token."""


class InvalidPlanError(PlandiffError):
    """A plan given by the caller (forced-plan mode) breaks the plan grammar or a bound."""


class InvalidRequestError(PlandiffError):
    """A generation option or input is out of range."""


class MalformedPlanError(PlandiffError):
    """The model wrote a plan that cannot be used and the request asked for an error.

    `token_ids` holds everything generated so far, so nothing is lost.
    """

    def __init__(self, reason: str, token_ids: list[int]):
        super().__init__(f"malformed plan: {reason}")
        self.reason = reason
        self.token_ids = token_ids
