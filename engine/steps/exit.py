"""``exit``: end the run on purpose, e.g. "no node left, nothing to do"."""

from __future__ import annotations

from typing import Any

from engine.render import Renderer
from engine.steps.base import Action, Outcome


class ExitKind:
    name = "exit"
    changes_state = False  # dry-run does not count it as a change
    ends_run = True  # so it cannot serve as a handler: it would not end the run there
    schema: dict[str, Any] = {
        "description": "End the run here with an exit code and a message.",
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 255},
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer", "minimum": 0, "maximum": 255},
                    "message": {"type": "string"},
                    "rollback": {"type": "boolean", "description": "Run the undos of finished steps first."},
                },
            },
        ],
    }

    def plan(self, body: Any, r: Renderer) -> Action:
        spec = body if isinstance(body, dict) else {"code": body}
        code = int(spec.get("code", 0))
        message = r.text(spec.get("message", ""), "exit.message")
        return Action(
            kind=self.name,
            target="local",
            summary=f"exit {code}" + (f": {message}" if message else ""),
            details={"code": code, "message": message, "rollback": bool(spec.get("rollback", False))},
            stop={"code": code, "message": message, "rollback": bool(spec.get("rollback", False))},
        )

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        return Outcome(ok=True, data={"code": action.details["code"]}, message=action.details["message"])


KIND = ExitKind()
