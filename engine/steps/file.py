"""``file``: the small file edits the classic scripts do with touch, sed and rm.

States: ``present`` and ``touch`` (e.g. ``standby.signal``), ``absent``,
``line`` (exactly one line matching ``regexp``: replace the first match, drop
the others, or append — e.g. one ``include_if_exists`` line, ``port = 5433``),
``line_absent`` (drop every line matching ``regexp``, e.g. a ``primary_conninfo``
that pg_rewind copied into ``postgresql.auto.conf``),
and ``empty`` (remove a directory's contents, refusing empty, relative, ``/``
and system paths).  Local, or on ``host`` over SFTP.
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import StepFailure
from engine.render import Renderer
from engine.steps.base import Action, Outcome
from engine.steps.paths import TARGET_PROPERTIES, checked_path, guard_tree, parse_mode

STATES = ("present", "touch", "absent", "line", "line_absent", "empty")


class FileKind:
    name = "file"
    schema: dict[str, Any] = {
        "description": "Make a file or folder be in a state (local, or on `host` over SFTP).",
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "state": {"enum": list(STATES)},
            "line": {"type": "string", "description": "With state: line, the line that must be there once."},
            "regexp": {"type": "string", "description": "With state: line, lines to replace (Python regex)."},
            "create": {"type": "boolean", "description": "With state: line, create the file when missing."},
            **TARGET_PROPERTIES,
        },
    }

    def check(self, body: Any, workflow_dir: str) -> list[tuple[tuple[Any, ...], str]]:
        state = body.get("state", "present")
        out: list[tuple[tuple[Any, ...], str]] = []
        if state == "line" and "line" not in body:
            out.append(((), "state: line needs `line`"))
        if state == "line_absent" and ("regexp" not in body or "line" in body):
            out.append(((), "state: line_absent needs `regexp` (and no `line`)"))
        if state not in ("line", "line_absent") and ("line" in body or "regexp" in body):
            out.append(((), "`line` and `regexp` only apply to state: line or line_absent"))
        if "regexp" in body:
            try:
                re.compile(body["regexp"])
            except re.error as exc:
                out.append((("regexp",), f"invalid regular expression: {exc}"))
        return out

    def plan(self, body: Any, r: Renderer) -> Action:
        state = body.get("state", "present")
        path = checked_path(
            body["path"], r.text(body["path"], "path"), "path", bool(body.get("allow_dotdot"))
        )
        host = r.text(body.get("host"), "host") if body.get("host") else None
        target = host or "local"
        details: dict[str, Any] = {
            "path": path,
            "host": host,
            "state": state,
            "mode": parse_mode(body.get("mode")),
            "revert": body.get("revert", True),
        }
        if state == "line":
            details["line"] = r.text(body["line"], "line")
            details["regexp"] = r.text(body["regexp"], "regexp") if body.get("regexp") else None
            details["create"] = body.get("create", False)
            summary = f"ensure line {details['line']!r} in {path}"
            text = [
                f"{target}:{path}: exactly one line {details['line']!r}"
                + (f" (replacing lines matching /{details['regexp']}/)" if details["regexp"] else "")
            ]
        elif state == "line_absent":
            details["regexp"] = r.text(body["regexp"], "regexp")
            summary = f"remove lines matching /{details['regexp']}/ from {path}"
            text = [f"{target}:{path}: no line matching /{details['regexp']}/"]
        elif state == "empty":
            guard_tree(path)
            summary = f"remove everything inside {path}"
            text = [f"{target}:{path}/*: remove (the folder itself stays)"]
        else:
            summary = {
                "present": f"ensure {path} exists",
                "touch": f"touch {path}",
                "absent": f"remove {path}",
            }[state]
            text = [f"{target}:{path}: {state}"]
        return Action(kind=self.name, target=target, summary=summary, details=details, text=text)

    @staticmethod
    def edit_lines(content: str, line: str, regexp: str | None) -> str:
        """Pure: the content with exactly one ``line`` where lines matched ``regexp``."""
        pattern = re.compile(regexp) if regexp else None
        lines = content.splitlines()
        out: list[str] = []
        placed = False
        for existing in lines:
            matches = bool(pattern.search(existing)) if pattern else existing == line
            if matches or existing == line:
                if not placed:
                    out.append(line)
                    placed = True
                continue
            out.append(existing)
        if not placed:
            out.append(line)
        return "\n".join(out) + "\n"

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        d = action.details
        fs = rt.fs(d["host"])
        path, state = d["path"], d["state"]
        if state in ("present", "touch"):
            if fs.exists(path):
                old_mode = fs.stat_mode(path)
                if d["mode"] is not None and old_mode != d["mode"]:
                    fs.chmod(path, d["mode"])
                    out = Outcome(ok=True, data={"changed": True}, changed=True, message="mode changed")
                    out.undo_state = ("mode", old_mode)
                    return out
                return Outcome(ok=True, data={"changed": False}, message="already there")
            fs.write_atomic(path, b"", d["mode"] if d["mode"] is not None else 0o600)
            out = Outcome(ok=True, data={"changed": True}, changed=True, message="created")
            out.undo_state = ("absent",)
            return out
        if state == "absent":
            if fs.is_dir(path):
                raise StepFailure(f"{path} is a folder; use state: empty for its contents")
            old = fs.read(path)
            if old is None:
                return Outcome(ok=True, data={"changed": False}, message="already absent")
            old_mode = fs.stat_mode(path)
            fs.remove(path)
            out = Outcome(ok=True, data={"changed": True}, changed=True, message="removed")
            out.undo_state = ("content", old, old_mode)
            return out
        if state == "line":
            old = fs.read(path)
            if old is None and not d["create"]:
                raise StepFailure(f"{path} does not exist (set create: true to create it)")
            text = old.decode("utf-8", "replace") if old is not None else ""
            new = self.edit_lines(text, d["line"], d["regexp"])
            if old is not None and new == text:
                return Outcome(ok=True, data={"changed": False}, message="line already there")
            old_mode = fs.stat_mode(path) if old is not None else None
            fs.write_atomic(path, new.encode("utf-8"), d["mode"])
            out = Outcome(ok=True, data={"changed": True}, changed=True, message="line set")
            out.undo_state = ("content", old, old_mode) if old is not None else ("absent",)
            return out
        if state == "line_absent":
            old = fs.read(path)
            if old is None:
                return Outcome(ok=True, data={"changed": False, "removed": 0}, message="no such file")
            text = old.decode("utf-8", "replace")
            pattern = re.compile(d["regexp"])
            kept = [ln for ln in text.splitlines() if not pattern.search(ln)]
            removed = len(text.splitlines()) - len(kept)
            if not removed:
                return Outcome(ok=True, data={"changed": False, "removed": 0}, message="no matching line")
            old_mode = fs.stat_mode(path)
            fs.write_atomic(path, ("\n".join(kept) + "\n" if kept else "").encode("utf-8"), d["mode"])
            out = Outcome(
                ok=True,
                data={"changed": True, "removed": removed},
                changed=True,
                message=f"removed {removed} line(s)",
            )
            out.undo_state = ("content", old, old_mode)
            return out
        # empty
        guard_tree(path)
        if not fs.exists(path):
            fs.mkdir(path, d["mode"] if d["mode"] is not None else 0o700)
            return Outcome(
                ok=True, data={"changed": True, "removed": 0}, changed=True, message="created empty"
            )
        if not fs.is_dir(path):
            raise StepFailure(f"{path} is not a folder")
        entries = fs.listdir(path)
        bulk = getattr(fs, "remove_contents", None)
        if bulk is not None and entries:
            bulk(path, timeout)  # one remote command instead of a round trip per file
        else:
            for name in entries:
                fs.remove_tree(f"{path.rstrip('/')}/{name}")
        return Outcome(
            ok=True,
            data={"changed": bool(entries), "removed": len(entries)},
            changed=bool(entries),
            message=f"removed {len(entries)} entries",
        )

    def revert(self, action: Action, outcome: Outcome, rt: Any, timeout: float | None) -> Outcome:
        d = action.details
        state = outcome.undo_state
        if not state or not d.get("revert", True):
            return Outcome(ok=True, message="nothing to restore")
        fs = rt.fs(d["host"])
        if state[0] == "absent":
            fs.remove(d["path"])
            return Outcome(ok=True, message=f"removed {d['path']} again")
        if state[0] == "mode":
            fs.chmod(d["path"], state[1])
            return Outcome(ok=True, message=f"restored the mode of {d['path']}")
        # the previous content, with the previous mode (a removed 0600 file must not come back 0644)
        fs.write_atomic(d["path"], state[1], state[2] if len(state) > 2 else None)
        return Outcome(ok=True, message=f"restored {d['path']}")


KIND = FileKind()
