"""The typed workflow that validation produces and the interpreter consumes.

Validation works on the raw YAML (so it can point at lines); everything after
it works on these frozen dataclasses, so the runner never re-checks shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "str"  # str | int | bool
    default: Any = None
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Retry:
    attempts: int = 1
    delay: float = 1.0
    backoff: float = 1.0
    max_delay: float | None = None
    until: str | None = None

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...): exponential, capped."""
        wait = self.delay * (self.backoff ** max(attempt - 2, 0))
        if self.max_delay is not None:
            wait = min(wait, self.max_delay)
        return wait


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    body: Any  # the kind's own mapping (or scalar), raw: rendered per attempt
    file: str
    line: int
    description: str = ""
    when: str | bool | None = None
    needs: tuple[str, ...] = ()
    explicit_needs: bool = False
    retry: Retry = field(default_factory=Retry)
    timeout: float | None = None
    on_error: str = "fail"  # fail | continue | fallback
    fallbacks: tuple[str, ...] = ()
    undo: tuple[str, ...] = ()
    guard: bool = False
    handler: bool = False  # lives under `handlers:`: runs only as an undo or fallback

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Workflow:
    name: str
    path: str
    description: str
    params: tuple[Param, ...]
    vars: dict[str, Any]
    steps: tuple[Step, ...]
    handlers: dict[str, Step]
    deadline: float | None = None
    lock: str | None = None
    lock_timeout: float = 0.0
    extra_args: bool = True
    var_lines: dict[str, int] = field(default_factory=dict)
    # what run_started records for resume (resume.fingerprint), kept by the validation cache
    # so that a warm start need not compute it; None: compute it
    digests: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def directory(self) -> str:
        import os

        return os.path.dirname(os.path.abspath(self.path))

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        return self.handlers[step_id]

    def all_steps(self) -> list[Step]:
        return list(self.steps) + list(self.handlers.values())


def _step_from_dict(d: dict[str, Any]) -> Step:
    d = dict(d)
    d["retry"] = Retry(**d["retry"])
    for key in ("needs", "fallbacks", "undo"):
        d[key] = tuple(d[key])
    return Step(**d)


def workflow_to_dict(wf: Workflow) -> dict[str, Any]:
    """Plain data for the validation cache (JSON: nothing executable is ever loaded)."""
    from dataclasses import asdict

    return asdict(wf)


def workflow_from_dict(d: dict[str, Any]) -> Workflow:
    d = dict(d)
    d["params"] = tuple(Param(**p) for p in d["params"])
    d["steps"] = tuple(_step_from_dict(s) for s in d["steps"])
    d["handlers"] = {k: _step_from_dict(s) for k, s in d["handlers"].items()}
    return Workflow(**d)
