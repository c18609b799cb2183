"""Typed errors that carry where they belong (file, line, field, step).

User errors are values with a location, never tracebacks: the CLI prints
``str(error)`` and exits with the error's code.  Validation collects every
:class:`Problem` before failing so an operator fixes a file in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_ROLLBACK_INCOMPLETE = 3


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, at a precise place."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class HookError(Exception):
    """Base class of every error the CLI reports without a traceback."""

    exit_code = EXIT_FAILED


class InvalidInput(HookError):
    """Bad workflow, config or arguments: nothing ran, exit 2."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[Problem] | Problem | str, hint: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("<arguments>", None, None, "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"error: {p}" for p in self.problems]
        if len(self.problems) > 1:
            lines.append(f"{len(self.problems)} errors; nothing was run")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class RenderError(HookError):
    """A Jinja2 expression failed at run time; names the step and field."""

    def __init__(
        self, message: str, *, file: str = "", line: int | None = None, step: str = "", field: str = ""
    ):
        self.file, self.line, self.step, self.field = file, line, step, field
        self.detail = message
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        what = f"step {step!r}" if step else ""
        if field:
            what = f"{what} field {field!r}" if what else f"field {field!r}"
        super().__init__(f"{where}{what}: {message}" if what else f"{where}{message}")


class NeedsRuntime(Exception):
    """Raised while rendering in dry-run when a value depends on a step result."""

    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(ref)


class StepFailure(Exception):
    """Raised by a step kind for an expected failure (non-zero exit, SQL error, timeout).

    The interpreter turns it into a ``failed`` outcome; any other exception is
    an ``errored`` outcome (a bug or an environment problem), reported the same
    way but told apart in the journal.
    """

    def __init__(self, message: str, data: dict | None = None, *, timed_out: bool = False):
        self.data = data or {}
        self.timed_out = timed_out
        super().__init__(message)


class Interrupted(BaseException):
    """SIGTERM/SIGINT arrived: stop the current step, roll back, exit non-zero."""
