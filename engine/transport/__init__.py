"""How step kinds reach the world: this host (``local``) or a node over SSH/SFTP (``ssh``).

Both sides offer the same two things: run a command with a timeout while
streaming its output, and a small filesystem (read, atomic write, remove,
list) so ``template`` and ``file`` steps work the same locally and remotely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class CommandResult:
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False
    duration: float = 0.0
    lines: list[str] = field(default_factory=list)


class FileSystem(Protocol):
    """Just enough of a filesystem for template and file steps."""

    def read(self, path: str) -> bytes | None: ...

    def write_atomic(self, path: str, data: bytes, mode: int | None) -> None: ...

    def remove(self, path: str) -> bool: ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def remove_tree(self, path: str) -> None: ...

    def mkdir(self, path: str, mode: int) -> None: ...

    def chmod(self, path: str, mode: int) -> None: ...

    def stat_mode(self, path: str) -> int | None: ...
