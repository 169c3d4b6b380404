"""The one error type for user mistakes: the CLI prints it on one line and exits with code 2."""


class UserError(Exception):
    """A mistake the user can fix: `message` says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message, hint)
        self.message = message
        self.hint = hint
        # Under torchrun: the one rank that raised it, which alone prints it; None where every rank has it.
        self.rank: int | None = None

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def line(self) -> str:
        """What the CLI prints after `error: `: the message, prefixed with the rank that alone raised it."""
        return str(self) if self.rank is None else f"rank {self.rank}: {self}"


class VerificationError(UserError):
    """An exported artefact does not match its PyTorch model within the tolerance: it was not kept. Its message is
    the verdict and, where there is one, what explains it (an int8 graph's worst layers); the record keeps the
    verdict."""

    def __init__(self, message: str, hint: str, path: str, backend: str, failed: str, detail: str = ""):
        super().__init__(f"{message}; {detail}" if detail else message, hint)
        self.verdict = message
        self.path, self.backend, self.failed = path, backend, failed  # the artefact, where, which tolerance


def first_line(error: BaseException) -> str:
    """An exception's first line, or its type's name when it has no message (for one-line errors)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
