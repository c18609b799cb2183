"""``ssh``: a command on a node, through one reused paramiko connection per host.

A string command is rendered with every ``{{ }}`` shell-quoted (``| trusted``
opts out); a list is joined with each element quoted.  Output streams to the
log line by line, and a command that outlives its timeout is killed on the
remote side, not just abandoned.
"""

from __future__ import annotations

import shlex
from typing import Any

from engine.render import Renderer
from engine.steps.base import Action, Outcome
from engine.steps.local import COMMAND_SCHEMA, command_outcome


class SshKind:
    name = "ssh"
    schema: dict[str, Any] = {
        "description": "Run a command on a node over SSH.",
        "type": "object",
        "required": ["host", "command"],
        "additionalProperties": False,
        "properties": {
            "host": {"type": "string"},
            "command": COMMAND_SCHEMA,
            "user": {"type": "string"},
            "port": {"type": ["string", "integer"]},
            "env": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
            "ok_codes": {"type": "array", "items": {"type": "integer"}},
        },
    }

    def plan(self, body: Any, r: Renderer) -> Action:
        host = r.text(body["host"], "host")
        raw = body["command"]
        command = shlex.join(r.argv([str(x) for x in raw])) if isinstance(raw, list) else r.shell(raw)
        env = {str(k): r.text(str(v), f"env.{k}") for k, v in (body.get("env") or {}).items()}
        if env:
            command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + command
        user = r.text(body["user"], "user") if body.get("user") else None
        port = r.text(str(body["port"]), "port") if body.get("port") else None
        shown = f"{user + '@' if user else ''}{host}{':' + port if port else ''}"
        return Action(
            kind=self.name,
            target=host,
            summary=f"{shown}: {command}",
            details={
                "host": host,
                "command": command,
                "user": user,
                "port": port,
                "ok_codes": list(body.get("ok_codes") or [0]),
            },
            text=[
                f"{shown}$ {line}" if i == 0 else f"  {line}" for i, line in enumerate(command.splitlines())
            ],
        )

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        d = action.details
        res = rt.ssh_pool.run(
            d["host"], d["command"], timeout=timeout, user=d["user"], port=d["port"], on_line=rt.stream
        )
        return command_outcome(res, d["ok_codes"], timeout, "remote command killed")


KIND = SshKind()
