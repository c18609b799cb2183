"""Run a hook the way pgpool does, and time it.

pgpool (and the PostgreSQL server, for the recovery scripts) runs a hook with
``system()``: ``/bin/sh -c COMMAND`` as its own OS user, with its own environment.  The
benchmark does the same from root by switching to ``postgres`` in the child (no
``runuser``/PAM in between, so nothing but the hook is on the clock).
"""

from __future__ import annotations

import os
import pwd
import resource
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOOK_USER = "postgres"


@dataclass
class Timed:
    seconds: float
    rc: int
    log: Path | None
    cpu: float = 0.0  # user + system CPU seconds of the hook and every child it waited for


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def run_hook(
    command: str,
    *,
    env: Mapping[str, str],
    cwd: str = "/",
    log: Path | None = None,
    timeout: float = 600,
    user: str = HOOK_USER,
) -> Timed:
    """``/bin/sh -c command`` as ``user``; output to ``log`` (or discarded); wall time."""
    uid, gid = _ids(user)
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=uid if os.geteuid() == 0 else None,
            group=gid if os.geteuid() == 0 else None,
            extra_groups=[] if os.geteuid() == 0 else None,
            timeout=timeout,
            check=False,
        )
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    if log is not None and os.geteuid() == 0:
        os.chown(log, uid, gid)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(seconds, proc.returncode, log, cpu)


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
