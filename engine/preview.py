"""Dry-run helpers: read-only diffs of ``file`` steps, and the closing line.

``--dry-run --diff`` shows, for a file that already exists, the unified diff
the step would apply.  ``template`` brings its own ``diff``; ``file`` steps get
theirs here, computed with the same line editing the real run uses and only
ever *reading* the file (locally, or over SFTP).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from engine.steps.base import Action

MAX_LISTED = 8  # entries named for `state: empty`


def _unified(path: str, old: str, new: str) -> list[str]:
    return list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"{path} (now)", f"{path} (after)", lineterm=""
        )
    )


def file_diff(action: Action, rt: Any) -> list[str] | None:
    """Diff lines ([] when nothing would change), or None when a diff does not apply."""
    from engine.steps.file import FileKind

    d = action.details
    fs = rt.fs(d["host"])
    path, state = d["path"], d["state"]
    if state in ("line", "line_absent", "absent"):
        raw = fs.read(path)
        if raw is None:
            if state == "line":
                return [
                    f"(no such file: {'it would be created' if d.get('create') else 'the step would fail'})"
                ]
            return []
        old = raw.decode("utf-8", "replace")
        if state == "absent":
            return _unified(path, old, "") if old else ["(an empty file would be removed)"]
        if state == "line":
            new = FileKind.edit_lines(old, d["line"], d["regexp"])
        else:
            pattern = re.compile(d["regexp"])
            kept = [ln for ln in old.splitlines() if not pattern.search(ln)]
            new = "\n".join(kept) + "\n" if kept else ""
        return [] if new == old else _unified(path, old, new)
    if state in ("present", "touch"):
        return [] if fs.exists(path) else ["(it would be created, empty)"]
    if state == "empty":
        if not fs.exists(path):
            return ["(the folder would be created)"]
        entries = sorted(fs.listdir(path)) if fs.is_dir(path) else None
        if entries is None:
            return ["(not a folder: the step would fail)"]
        if not entries:
            return []
        shown = ", ".join(entries[:MAX_LISTED]) + (", …" if len(entries) > MAX_LISTED else "")
        return [f"(would remove {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown})"]
    return None


def colour_diff(line: str, c: dict[str, str]) -> str:
    """A diff line in green (added) or red (removed); ``c`` is the dry-run's colour table."""
    if line.startswith(("+++", "---")):
        return f"{c['bold']}{line}{c['reset']}"
    if line.startswith("+"):
        return f"{c['green']}{line}{c['reset']}"
    if line.startswith("-"):
        return f"{c['red']}{line}{c['reset']}"
    if line.startswith("@@"):
        return f"{c['cyan']}{line}{c['reset']}"
    return line


DIFFS: dict[str, Callable[[Action, Any], list[str] | None]] = {"file": file_diff}


def summary(steps: list[tuple[str, str | None, bool]], ended: bool) -> str:
    """The last line: how many steps would run, of which kind where; ``steps`` is (kind, target, unchanged)."""
    groups: dict[tuple[str, str | None], int] = {}
    unchanged = 0
    for kind, target, same in steps:
        if same:
            unchanged += 1
            continue
        groups[(kind, target)] = groups.get((kind, target), 0) + 1
    parts = [
        f"{count} {kind} "
        + (
            "(target known at run time)"
            if target is None
            else "on this host"
            if target == "local"
            else f"on {target}"
        )
        for (kind, target), count in groups.items()
    ]
    line = f"would run {len(steps)} step(s)" + (" and then exit early" if ended else "")
    if parts:
        line += ": " + ", ".join(parts)
    if unchanged:
        line += f"; {unchanged} file step(s) would change nothing"
    return line + "; nothing was changed"
