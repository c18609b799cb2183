"""One run at a time per workflow and node, via ``flock`` in ``state_dir/locks``.

Two follow-primary runs for the same node would stop, rewind and restart the
same server at once.  The lock is an advisory ``flock``: the kernel drops it
when a killed run's process dies, so a ``kill -9`` never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable

from engine.errors import HookError


class LockTimeout(HookError):
    pass


class RunLock:
    def __init__(self, state_dir: str, name: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120] or "run"
        self.dir = os.path.join(state_dir, "locks")
        self.path = os.path.join(self.dir, safe + ".lock")
        self._fd: int | None = None

    def acquire(self, timeout: float, on_wait: Callable[[], None] | None = None, poll: float = 0.1) -> float:
        """Take the lock; returns seconds waited; raises LockTimeout."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                if time.monotonic() - start >= timeout:
                    os.close(fd)
                    raise LockTimeout(f"another run holds {self.path}; gave up after {timeout:g}s") from None
                time.sleep(poll)
        # our pid over the last holder's: truncating to zero first would cost 2-8 ms of
        # ext4 journal work on every start, and pids are mostly of the same length
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        if os.fstat(fd).st_size > len(pid):
            os.ftruncate(fd, len(pid))
        self._fd = fd
        return time.monotonic() - start

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
