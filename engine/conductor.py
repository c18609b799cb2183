"""Decides what runs next; never runs anything.

The conductor holds each step's status and answers one question: which
steps may start now?  Status changes go through :data:`TRANSITIONS`, a table
rather than scattered ``if`` statements, so an impossible transition (a
skipped step that fails) is a bug caught at once, not a silent state.
"""

from __future__ import annotations

from enum import StrEnum

from engine.model import Step, Workflow


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # `when` was false
    FAILED = "failed"  # stops the run
    CONTINUED = "failed-continued"  # failed, but on_error: continue
    RECOVERED = "recovered"  # failed, and its fallback handlers succeeded
    DONE = "done-before"  # succeeded in an earlier run (resume / --from)
    CANCELLED = "cancelled"  # never started because the run stopped


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.SKIPPED, Status.CANCELLED, Status.DONE}),
    # RUNNING -> SKIPPED: `when` is evaluated once the step is picked, and can be false
    Status.RUNNING: frozenset(
        {Status.SUCCEEDED, Status.SKIPPED, Status.FAILED, Status.CONTINUED, Status.RECOVERED}
    ),
    Status.SUCCEEDED: frozenset(),
    Status.SKIPPED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CONTINUED: frozenset(),
    Status.RECOVERED: frozenset(),
    Status.DONE: frozenset(),
    Status.CANCELLED: frozenset(),
}

SATISFIED = frozenset({Status.SUCCEEDED, Status.SKIPPED, Status.CONTINUED, Status.RECOVERED, Status.DONE})


class BadTransition(RuntimeError):
    pass


class Conductor:
    def __init__(self, workflow: Workflow):
        self.steps: list[Step] = list(workflow.steps)
        self.status: dict[str, Status] = {s.id: Status.PENDING for s in self.steps}
        self.stopped: str | None = None

    def set(self, step_id: str, new: Status) -> None:
        old = self.status[step_id]
        if new not in TRANSITIONS[old]:
            raise BadTransition(f"step {step_id}: {old.value} -> {new.value} is not a valid transition")
        self.status[step_id] = new

    def ready(self) -> list[Step]:
        """Pending steps whose needs are all satisfied, in file order."""
        if self.stopped is not None:
            return []
        return [
            s
            for s in self.steps
            if self.status[s.id] is Status.PENDING and all(self.status.get(d) in SATISFIED for d in s.needs)
        ]

    def stop(self, reason: str) -> None:
        """No new step starts; the steps that never started are cancelled."""
        if self.stopped is None:
            self.stopped = reason
        for sid, st in self.status.items():
            if st is Status.PENDING:
                self.status[sid] = Status.CANCELLED

    def blocked(self) -> list[str]:
        """Pending steps that can never run (a need failed or was cancelled)."""
        return [sid for sid, st in self.status.items() if st is Status.PENDING]

    def finished(self) -> bool:
        return not self.ready()
