"""Tools for step-kind tests against the real sandbox services.

``kind_runner`` plans and applies one step body exactly as the interpreter
would (same Renderer, same Runtime, one SshPool for the test), so each test
can then look at the state the step left behind with its own tools.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.config import DEFAULTS, Config, _merge
from engine.errors import StepFailure
from engine.render import Renderer
from engine.runtime import Runtime
from engine.steps import KINDS
from engine.steps.base import Action, Outcome


@dataclass
class KindRunner:
    """Plan + apply step bodies with one Runtime; records streamed output lines."""

    config: Config
    rt: Runtime
    log: io.StringIO
    lines: list[tuple[float, str, str]] = field(default_factory=list)

    def renderer(self, **variables: Any) -> Renderer:
        return Renderer({"config": self.config.data, **variables})

    def plan(self, kind: str, body: Any, **variables: Any) -> Action:
        return KINDS[kind].plan(body, self.renderer(**variables))

    def apply(self, kind: str, body: Any, timeout: float | None = 20, **variables: Any) -> Outcome:
        return KINDS[kind].apply(self.plan(kind, body, **variables), self.rt, timeout)

    def run(
        self, kind: str, body: Any, timeout: float | None = 20, **variables: Any
    ) -> tuple[Action, Outcome]:
        """Plan and apply; returns both, for a later ``revert``."""
        action = self.plan(kind, body, **variables)
        return action, KINDS[kind].apply(action, self.rt, timeout)

    def fail(self, kind: str, body: Any, timeout: float | None = 20, **variables: Any) -> StepFailure:
        with pytest.raises(StepFailure) as info:
            self.apply(kind, body, timeout, **variables)
        return info.value

    def revert(self, kind: str, action: Action, outcome: Outcome) -> Outcome:
        result: Outcome = KINDS[kind].revert(action, outcome, self.rt, 20)
        return result


def make_config(**overrides: Any) -> Config:
    return Config(data=_merge(DEFAULTS, overrides), path=None)


def owner_name(path: Path) -> str:
    import pwd

    return pwd.getpwuid(os.lstat(path).st_uid).pw_name
