"""``local``: run a program on the hook's own host (pcp_attach_node, pg_isready, psql -V).

A list is an argument vector and needs no quoting at all; a string is run by
``/bin/sh`` only with ``shell: true``, and then every ``{{ }}`` in it is
shell-quoted unless marked ``| trusted``.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from engine.errors import StepFailure
from engine.render import Renderer
from engine.steps.base import Action, Outcome

JINJA_BLOCK = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.S)

COMMAND_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": ["string", "number"]}},
    ],
    "description": "An argument list, or a string (shell: true, or any string for ssh).",
}


def command_result_data(rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    return {
        "rc": rc,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": stdout.splitlines(),
        "ok": rc == 0,
    }


def command_outcome(res: Any, ok_codes: list[int], timeout: float | None, on_timeout: str) -> Outcome:
    """The outcome of a finished command, local or remote: ok, or a StepFailure saying why."""
    data = command_result_data(res.rc, res.stdout, res.stderr)
    if res.timed_out:
        raise StepFailure(f"timed out after {timeout or 0:g}s; {on_timeout}", data, timed_out=True)
    if res.rc not in ok_codes:
        data["ok"] = False
        last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
        raise StepFailure(f"exit status {res.rc}" + (f": {last[0]}" if last[0] else ""), data)
    data["ok"] = True  # an accepted non-zero status (ok_codes) is still a success
    return Outcome(ok=True, data=data, message=f"exit status {res.rc}")


class LocalKind:
    name = "local"
    schema: dict[str, Any] = {
        "description": "Run a program on the hook's host.",
        "anyOf": [
            COMMAND_SCHEMA,
            {
                "type": "object",
                "required": ["command"],
                "additionalProperties": False,
                "properties": {
                    "command": COMMAND_SCHEMA,
                    "shell": {"type": "boolean"},
                    "env": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                    "cwd": {"type": "string"},
                    "ok_codes": {"type": "array", "items": {"type": "integer"}},
                    "stdin": {"type": "string"},
                },
            },
        ],
    }

    def check(self, body: Any, workflow_dir: str) -> list[tuple[tuple[Any, ...], str]]:
        spec = body if isinstance(body, dict) else {"command": body}
        if isinstance(spec["command"], list) and spec.get("shell"):
            return [(("shell",), "shell: true needs a string command (a list is run without a shell)")]
        if isinstance(spec["command"], str) and not spec.get("shell"):
            words = JINJA_BLOCK.sub("", spec["command"])  # `{{ x | trusted }}` is not a shell pipe
            where = ("command",) if isinstance(body, dict) else ()
            if any(c in words for c in "|;&$`<>*"):
                return [
                    (
                        where,
                        "a string command with shell syntax needs `shell: true` (or give an argument list)",
                    )
                ]
            try:
                shlex.split(JINJA_BLOCK.sub("x", spec["command"]))
            except ValueError as exc:
                return [(where, f"cannot split the command into words: {exc}")]
        return []

    def plan(self, body: Any, r: Renderer) -> Action:
        spec = body if isinstance(body, dict) else {"command": body}
        raw = spec["command"]
        shell = bool(spec.get("shell")) and not isinstance(raw, list)  # Popen would run only raw[0]
        command: list[str] | str
        if isinstance(raw, list):
            command = r.argv([str(x) for x in raw])
            shown = shlex.join(command)
        elif shell:
            command = r.shell(raw)
            shown = command
        else:
            # a plain string without shell: render with every value shell-quoted, then split into words,
            # so each value stays exactly one word (or part of one) whatever it contains
            rendered = r.shell(raw)
            try:
                command = shlex.split(rendered)
            except ValueError as exc:  # e.g. a `| trusted` value with a lone quote
                raise StepFailure(f"cannot split {rendered!r} into words: {exc}") from None
            shown = shlex.join(command)
        env = {str(k): r.text(str(v), f"env.{k}") for k, v in (spec.get("env") or {}).items()}
        details = {
            "command": command,
            "shell": shell,
            "env": env,
            "cwd": r.text(spec["cwd"], "cwd") if spec.get("cwd") else None,
            "ok_codes": list(spec.get("ok_codes") or [0]),
            "stdin": r.text(spec["stdin"], "stdin") if spec.get("stdin") is not None else None,
        }
        text = [f"$ {shown}"]
        text += [f"  env {k}={v}" for k, v in env.items()]
        return Action(kind=self.name, target="local", summary=shown, details=details, text=text)

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        from engine.transport import local

        d = action.details
        try:
            res = local.run(
                d["command"],
                shell=d["shell"],
                env=d["env"] or None,
                cwd=d["cwd"],
                timeout=timeout,
                on_line=rt.stream,
                stdin=d["stdin"].encode() if d["stdin"] is not None else None,
            )
        except FileNotFoundError as exc:
            raise StepFailure(f"program not found: {exc.filename}", {"rc": 127, "ok": False}) from None
        except PermissionError as exc:
            raise StepFailure(
                f"cannot execute {exc.filename}: permission denied", {"rc": 126, "ok": False}
            ) from None
        return command_outcome(res, d["ok_codes"], timeout, "process group stopped")


KIND = LocalKind()
