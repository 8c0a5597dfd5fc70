"""Errors a user can act on. The CLI prints their message (no traceback) and exits with `exit_code`."""


class TrainkiteError(Exception):
    exit_code = 1


class UserInputError(TrainkiteError):
    """Bad parameters, data, model IDs or payloads: the message names the field or value."""

    exit_code = 2


class DataError(UserInputError):
    """The query result cannot be trained on (empty, missing columns, nulls, one class, ...)."""


class ModelNotFound(UserInputError):
    pass


class ModelIdTaken(UserInputError):
    """The model ID is published (or being published) with other files: a model ID is never reused.
    A user error, not a transient one, so Prefect's task retries don't retry it."""


class TrainingDiverged(UserInputError):
    """The training loss (or the weights) stopped being finite numbers, or grew far past a uniform guess's.
    The same params and data diverge again, so it is not retried; nothing is published."""


class IntegrityError(TrainkiteError):
    """An artifact does not match its manifest (tampered, truncated, or no manifest at all)."""
