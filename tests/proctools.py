"""Helpers shared by the integration and fault tests: processes on this machine and ssh settings.

Importable from any test module: pytest puts ``tests/`` on ``sys.path`` for its conftest.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from typing import Any


def ssh_settings(sshd: Any, **extra: Any) -> dict[str, Any]:
    """The ``ssh:`` config section that reaches the session's sshd with strict host keys."""
    return {
        "user": sshd.user,
        "port": sshd.port,
        "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts),
        "host_key_policy": "strict",
        "connect_timeout": 3,
        **extra,
    }


def unique_sleep() -> str:
    """A ``sleep`` argument unique to one test, so ``pgrep -f`` finds exactly its processes."""
    return f"{600 + uuid.uuid4().int % 100000}.{uuid.uuid4().int % 1000:03d}"


def processes_matching(pattern: str) -> list[str]:
    proc = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if line.strip() and "pgrep" not in line]


def wait_no_process(pattern: str, timeout: float = 5.0) -> list[str]:
    end = time.monotonic() + timeout
    while True:
        left = processes_matching(pattern)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)
