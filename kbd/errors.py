"""The errors kbd shows to people: a message, a hint, and a short code."""


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
