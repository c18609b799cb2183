"""What a step kind may use while applying an action.

One :class:`Runtime` per run.  It owns the SSH connection pool (one
connection per host, reused by every step of the run) and hands out the
right filesystem for a target, so kinds never manage connections themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Config
    from engine.log import Logger
    from engine.transport import FileSystem
    from engine.transport.local import LocalFS

LOCAL_NAMES = frozenset({"", "local", "localhost-local"})


def is_local(host: Any) -> bool:
    return host is None or str(host) in LOCAL_NAMES


class Runtime:
    def __init__(self, config: Config, logger: Logger):
        self.config = config
        self.log = logger
        self._pool: Any = None
        self._local_fs: LocalFS | None = None

    @property
    def ssh_pool(self) -> Any:
        if self._pool is None:
            from engine.transport.ssh import SshPool  # paramiko only when a run needs it

            self._pool = SshPool(self.config, self.log)
        return self._pool

    def fs(self, host: Any) -> FileSystem:
        if is_local(host):
            if self._local_fs is None:
                # subprocess, threading and selectors cost ~5 ms to import: a run without
                # a local file or command (an exit, a guard over SQL) does not pay for them
                from engine.transport.local import LocalFS

                self._local_fs = LocalFS()
            return self._local_fs
        return self.ssh_pool.fs(str(host))

    def stream(self, stream: str, line: str) -> None:
        self.log.output(stream, line)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
