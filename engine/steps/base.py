"""The one small interface every step kind implements.

Following pyinfra, a kind's ``plan`` is a pure function from rendered values
to an :class:`Action` — the exact SQL, command line or file content it would
produce.  Dry-run prints actions, the real run applies the same actions, and
table-driven tests check ``plan`` without any server.  ``apply`` does the one
thing the action says and reports an :class:`Outcome` value; an expected
failure is raised as :class:`~engine.errors.StepFailure` (failed), anything
else is an error (errored).  ``revert`` is an optional built-in compensation
(a template restores the content it replaced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.render import Renderer
    from engine.runtime import Runtime


@dataclass
class Action:
    """What a step would do, fully rendered; printable and applicable."""

    kind: str
    target: str  # "local", a host name, or a PostgreSQL server "host:port/db"
    summary: str  # one line for logs
    details: dict[str, Any] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)  # extra lines for dry-run (SQL, file content)
    # set by a kind whose action ends the run on purpose: {"code", "message", "rollback"}
    stop: dict[str, Any] | None = None


@dataclass
class Outcome:
    """Result of one attempt.  ``data`` becomes ``steps.<id>`` for later steps."""

    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    changed: bool = False
    errored: bool = False
    timed_out: bool = False
    undo_state: Any = None  # what a built-in revert needs; never journaled (may hold file content)


class StepKind(Protocol):
    name: str
    schema: dict[str, Any]

    def plan(self, body: Any, r: Renderer) -> Action: ...

    def apply(self, action: Action, rt: Runtime, timeout: float | None) -> Outcome: ...
