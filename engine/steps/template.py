"""``template``: render Jinja2 to a file, locally or over SFTP, atomically.

Written through a temporary file and a rename so a crash never leaves a torn
``myrecovery.conf``; reports ``changed`` only when the bytes differ; on
rollback it puts back exactly what was there before (or removes the file it
created).
"""

from __future__ import annotations

import os
from typing import Any

from engine.render import Renderer
from engine.steps.base import Action, Outcome
from engine.steps.paths import TARGET_PROPERTIES, checked_path, parse_mode


class TemplateKind:
    name = "template"
    schema: dict[str, Any] = {
        "description": "Render a Jinja2 template to a file (local, or on `host` over SFTP).",
        "type": "object",
        "required": ["dest"],
        "additionalProperties": False,
        "properties": {
            "src": {"type": "string", "description": "Template file, relative to the workflow's folder."},
            "content": {"type": "string", "description": "Inline template text."},
            "dest": {"type": "string", "minLength": 1},
            **TARGET_PROPERTIES,
        },
    }

    def check(self, body: Any, workflow_dir: str) -> list[tuple[tuple[Any, ...], str]]:
        if ("src" in body) == ("content" in body):
            return [((), "give exactly one of `src` (a template file) or `content` (inline text)")]
        return []

    def template_sources(self, body: Any, workflow_dir: str) -> list[tuple[tuple[Any, ...], str | None, str]]:
        if "src" not in body:
            return []
        path = os.path.join(workflow_dir, body["src"])
        try:
            with open(path, encoding="utf-8") as fh:
                return [(("src",), fh.read(), path)]
        except OSError:
            return [(("src",), None, path)]

    def plan(self, body: Any, r: Renderer) -> Action:
        dest = checked_path(
            body["dest"], r.text(body["dest"], "dest"), "dest", bool(body.get("allow_dotdot"))
        )
        content = r.template_file(body["src"]) if "src" in body else r.text(body["content"], "content")
        host = r.text(body.get("host"), "host") if body.get("host") else None
        target = host or "local"
        text = [f"--- {target}:{dest}" + (f" (mode {body['mode']})" if body.get("mode") else "")]
        text += content.splitlines()
        return Action(
            kind=self.name,
            target=target,
            summary=f"write {dest}",
            details={
                "dest": dest,
                "host": host,
                "content": content,
                "mode": parse_mode(body.get("mode")),
                "revert": body.get("revert", True),
            },
            text=text,
        )

    def diff(self, action: Action, rt: Any) -> list[str]:
        """Unified diff against what is there now (read-only)."""
        import difflib  # only dry-run --diff shows one: not worth a millisecond of every start

        old = rt.fs(action.details["host"]).read(action.details["dest"])
        old_text = old.decode("utf-8", "replace") if old is not None else ""
        return list(
            difflib.unified_diff(
                old_text.splitlines(), action.details["content"].splitlines(), "current", "new", lineterm=""
            )
        )

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        d = action.details
        fs = rt.fs(d["host"])
        new = d["content"].encode("utf-8")
        old = fs.read(d["dest"])
        old_mode = fs.stat_mode(d["dest"]) if old is not None else None
        mode_ok = d["mode"] is None or old_mode == d["mode"]
        if old == new and mode_ok:
            return Outcome(ok=True, data={"changed": False, "dest": d["dest"]}, message="unchanged")
        fs.write_atomic(d["dest"], new, d["mode"])
        outcome = Outcome(
            ok=True,
            data={"changed": True, "dest": d["dest"], "created": old is None},
            message="created" if old is None else "updated",
            changed=True,
        )
        # the previous content and mode: a revert puts back both
        outcome.undo_state = (old, old_mode) if old is not None else None
        return outcome

    def revert(self, action: Action, outcome: Outcome, rt: Any, timeout: float | None) -> Outcome:
        d = action.details
        fs = rt.fs(d["host"])
        previous = outcome.undo_state
        if previous is None:
            fs.remove(d["dest"])
            return Outcome(ok=True, message=f"removed {d['dest']} (it did not exist before)")
        content, mode = previous if isinstance(previous, tuple) else (previous, None)
        fs.write_atomic(d["dest"], content, mode)
        return Outcome(ok=True, message=f"restored the previous content of {d['dest']}")


KIND = TemplateKind()
