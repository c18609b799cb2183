"""Run things as the ``postgres`` OS user, manage ownership, and wait for conditions.

PostgreSQL and pgpool refuse to run as root, and the hooks pgpool starts run as pgpool's
user, so the sandbox runs every PostgreSQL/pgpool process as ``postgres`` through
``runuser``, from cwd ``/`` (``runuser`` keeps the caller's cwd, which may be unreadable
for ``postgres``, e.g. a checkout under ``/root``).  The environment is passed explicitly
through ``env`` so that nothing of root's environment (a pyenv ``PATH`` under ``/root``,
``PYTHONPATH`` ...) leaks into the processes under test.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

POSTGRES_USER = "postgres"
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"

# set in pgpool's environment; every pgpool child and hook inherits it, which is how
# stragglers are found (pgpool children rewrite their argv, follow children setsid)
PGPOOL_MARKER_ENV = "PGPOOL_HOOK_SANDBOX_PGPOOL"

T = TypeVar("T")


class SandboxError(RuntimeError):
    """A sandbox component could not be built, started or queried."""


def postgres_ids() -> tuple[int, int]:
    """Return (uid, gid) of the ``postgres`` OS user (created by the postgresql package)."""
    try:
        entry = pwd.getpwnam(POSTGRES_USER)
    except KeyError as exc:
        raise SandboxError("OS user 'postgres' does not exist (install postgresql-15)") from exc
    return entry.pw_uid, entry.pw_gid


def postgres_home() -> str:
    return pwd.getpwnam(POSTGRES_USER).pw_dir


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    if not is_root():
        raise SandboxError("the sandbox must be built as root (it runs sshd and uses runuser)")


def base_env(bin_dir: Path = PG_BIN_DIR, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal, predictable environment for processes run as ``postgres``."""
    env = {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "HOME": postgres_home(),
        "USER": POSTGRES_USER,
        "LOGNAME": POSTGRES_USER,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def as_postgres_argv(args: Sequence[str | os.PathLike[str]], env: Mapping[str, str]) -> list[str]:
    """argv that runs ``args`` as ``postgres`` with exactly ``env`` (no inheritance)."""
    cmd = [str(a) for a in args]
    envargs = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]
    if os.geteuid() == postgres_ids()[0]:
        return [*envargs, *cmd]
    return ["runuser", "-u", POSTGRES_USER, "--", *envargs, *cmd]


def run_as_postgres(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command as ``postgres`` from ``/``; capture stdout/stderr as text.

    With ``check`` a non-zero exit raises SandboxError carrying the command's output, so a
    failing initdb/pg_ctl explains itself in the test report.
    """
    argv = as_postgres_argv(args, env if env is not None else base_env())
    proc = subprocess.run(
        argv,
        cwd="/",
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SandboxError(
            f"command failed (rc={proc.returncode}): {' '.join(str(a) for a in args)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def popen_as_postgres(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    output: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running process as ``postgres`` in its own session (own process group).

    The new session keeps the process out of pytest's process group (Ctrl-C goes to the
    test runner, whose fixtures then stop it cleanly) and lets ``python -m sandbox up``
    leave it running after the CLI exits.
    """
    argv = as_postgres_argv(args, env if env is not None else base_env())
    return subprocess.Popen(
        argv,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )


def chown_postgres(path: Path, *, recursive: bool = False) -> None:
    uid, gid = postgres_ids()
    os.chown(path, uid, gid)
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)


def make_postgres_dir(path: Path, mode: int = 0o755) -> Path:
    """Create ``path`` (and parents) and make the leaf owned by ``postgres``."""
    path.mkdir(parents=True, exist_ok=True)
    if is_root():
        chown_postgres(path)
    path.chmod(mode)
    return path


def write_file(path: Path, text: str, mode: int = 0o644, *, postgres_owned: bool = True) -> Path:
    """Write a text file with the given mode, owned by ``postgres`` unless told otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if postgres_owned and is_root():
        chown_postgres(path)
    return path


def check_traversable(path: Path) -> None:
    """Fail early if ``postgres`` cannot reach ``path`` (e.g. a directory under ``/root``).

    Otherwise the failure shows up much later as a puzzling "Permission denied" from
    initdb, or as a hook that pgpool runs and silently ignores.
    """
    uid, gid = postgres_ids()
    path = path.resolve()
    for parent in [*reversed(path.parents), path]:
        if not parent.exists():
            break
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise SandboxError(
                f"{parent} is not traversable by the postgres user; put the sandbox under /tmp "
                f"or another directory postgres can reach"
            )


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie.

    A ``kill -9``ed postmaster can linger as a zombie for seconds when PID 1 reaps slowly;
    ``kill(pid, 0)`` would still succeed then, so read the state from /proc.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), used to kill a postmaster's whole tree."""
    result = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            result.append(int(entry.name))
    return result


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30,
    interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Exceptions raised by the predicate count as "not yet" (a node that is restarting
    refuses connections); the last one is chained to the TimeoutError for diagnosis.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}{detail}") from last_exc
        time.sleep(interval)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 20) -> None:
    wait_until(lambda: port_open(host, port), timeout, message=f"{host}:{port} to accept connections")


def processes_referencing(path: Path) -> list[int]:
    """PIDs (not ours, not zombies) started for a sandbox directory ``path``.

    Used to find what a crashed test session left running: every sandbox process names
    its directory either in argv (postmaster ``-D``, sshd ``-f``) or in the pgpool marker
    variable (pgpool and everything it forks).  Other environment variables are not
    looked at (a shell whose PWD is in there is not ours).  Postmaster children are not
    listed; they exit by themselves when their postmaster dies.
    """
    needle = str(path).encode()
    marker = f"{PGPOOL_MARKER_ENV}=".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        marked = any(e.startswith(marker) and needle in e for e in environ)
        if (needle in cmdline or marked) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
