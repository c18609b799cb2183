"""Path rules shared by the ``template`` and ``file`` kinds.

A destination must be absolute, and an argument from pgpool must not walk
out of the folder the workflow named by smuggling in ``..``: the rendered
path may only contain ``..`` where the workflow text itself wrote one.
"""

from __future__ import annotations

import posixpath

from engine.errors import StepFailure

# Never emptied or removed as a whole, whatever a workflow or argument says.
PROTECTED = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/lib/postgresql",
        "/var/lib/pgsql",
    }
)


def checked_path(raw: str, rendered: str, field: str, allow_dotdot: bool = False) -> str:
    if not rendered or not rendered.strip():
        raise StepFailure(f"{field} is empty")
    if "\n" in rendered or "\0" in rendered:
        raise StepFailure(f"{field} {rendered!r} contains a newline or NUL byte")
    if not rendered.startswith("/"):
        raise StepFailure(f"{field} {rendered!r} is not an absolute path")
    if ".." in rendered.split("/") and ".." not in raw.split("/") and not allow_dotdot:
        raise StepFailure(f"{field} {rendered!r} climbs out with '..' (from a value, not the workflow)")
    return posixpath.normpath(rendered) if not rendered.startswith("//") else posixpath.normpath(rendered[1:])


def guard_tree(path: str) -> None:
    """Refuse to empty or remove a path that is empty, relative, root or a system folder."""
    if not path or not path.startswith("/"):
        raise StepFailure(f"refusing to remove {path!r}: not an absolute path")
    norm = posixpath.normpath(path)
    if norm in PROTECTED or norm.count("/") < 2:
        raise StepFailure(f"refusing to remove the contents of {norm!r}: too close to /")


MODE_SCHEMA = {"type": "string", "pattern": "^0?[0-7]{3,4}$", "description": 'Octal, quoted: "0600".'}


def parse_mode(value: object) -> int | None:
    return None if value is None else int(str(value), 8)


# Where a template or file step acts, and how it may be undone: the same keys for both kinds.
TARGET_PROPERTIES: dict[str, object] = {
    "host": {"type": "string"},
    "mode": MODE_SCHEMA,
    "revert": {"type": "boolean", "description": "Restore the previous content on rollback (default true)."},
    "allow_dotdot": {"type": "boolean"},
}
