"""The errors kbd shows to people: a message, a hint, and a short code. Every KbdError
subclass lives here, so the codes a user can meet are in one place."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path


class KbdError(Exception):
    """An error meant for a person: what went wrong, where, and what to do."""

    code = "error"

    def __init__(self, message: str, hint: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class CheckpointError(KbdError):
    """A CLaRa checkpoint or base model that kbd refuses to load."""

    code = "checkpoint"


class InputError(KbdError):
    """A passage, question or argument that the model cannot take."""

    code = "input"


class CapabilityError(KbdError):
    """The loaded checkpoint cannot do what was asked (e.g. rank without a query reasoner)."""

    code = "capability"


class ConfigError(KbdError):
    code = "config"


class StoreError(KbdError):
    code = "store"


class MemoryFileError(KbdError):
    code = "memory-file"


class ParseError(KbdError):
    """A file kbd cannot read; the message starts with its path, the code says why."""

    code = "parse"

    def __init__(self, path: Path, problem: str, code: str, hint: str | None = None):
        super().__init__(f"{path}: {problem}", hint, code)


class IngestFailure(KbdError):
    """A file kbd cannot ingest now; recorded with its stage and code."""

    def __init__(self, stage: str, code: str, message: str):
        super().__init__(message, code=code)
        self.stage = stage


class TextModelError(KbdError):
    code = "text-model"


class ModelUnavailable(KbdError):
    code = "no-model"

    def __init__(self, message: str, hint: str | None = None, engine: str = "clara"):
        super().__init__(message, hint)
        self.engine = engine  # the engine that could not answer: recorded with the failure


class AlreadyRunning(KbdError):
    code = "already-running"


class ApiError(KbdError):
    """An error with an HTTP status, shown to the client as the error envelope."""

    def __init__(self, status: int, message: str, hint: str | None = None,
                 code: str | None = None):
        super().__init__(message, hint, code or HTTPStatus(status).phrase.lower()
                         .replace(" ", "-"))
        self.status = status


class DaemonNotRunning(KbdError):
    code = "not-running"


class DaemonError(KbdError):
    """An error the daemon replied with, carried through to the CLI."""

    def __init__(self, status: int, message: str, hint: str | None, code: str | None):
        super().__init__(message, hint, code)
        self.status = status


class DeliveryError(KbdError):
    code = "delivery"


class QuestionsError(KbdError):
    code = "questions"
