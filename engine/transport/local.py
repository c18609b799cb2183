"""Commands and files on the hook's own host.

Processes start in their own session so a timeout (or SIGTERM to the runner)
can stop the whole process group — a ``pg_basebackup`` and anything it forked
— rather than leaving orphans behind pgpool's back.  Being out of the runner's
group, they would outlive a runner killed with SIGKILL; a small reaper process
stops them then (see :class:`_Reaper`).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from engine.transport import CommandResult

KILL_GRACE = 2.0


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# Reads "+PGID" / "-PGID" lines from the runner; when its stdin closes (the runner exited or was
# killed) it stops the groups still registered, TERM then KILL.  After a normal run there are none.
_REAPER = """\
import os, signal, sys, time
groups = set()
for line in sys.stdin:
    (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    if groups and sig == signal.SIGTERM:
        time.sleep(2)
"""


class _Reaper:
    """One per runner process, started with the first local command, in its own session."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def tell(cls, line: str) -> None:
        try:
            if cls.proc is None or cls.proc.poll() is not None:
                cls.proc = subprocess.Popen(
                    [sys.executable, "-c", _REAPER],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # not reached by signals to the runner's group
                )
            assert cls.proc.stdin is not None
            cls.proc.stdin.write(line.encode() + b"\n")
            cls.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # best effort: the command itself still runs and is still stopped on timeout


def run(
    command: list[str] | str,
    *,
    shell: bool = False,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    on_line: Callable[[str, str], None] | None = None,
    stdin: bytes | None = None,
) -> CommandResult:
    """Run ``command``; stream each output line to ``on_line(stream, line)``; enforce ``timeout``."""
    start = time.monotonic()
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    proc = subprocess.Popen(
        command,
        shell=shell,
        executable="/bin/sh" if shell else None,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    partial = {"stdout": b"", "stderr": b""}
    sel = selectors.DefaultSelector()
    timed_out = False
    # From here on the child is stopped whatever happens, a SIGTERM (Interrupted) included:
    # one arriving while the reaper starts or stdin is written must not leave it running.
    try:
        _Reaper.tell(f"+{proc.pid}")
        if stdin is not None and proc.stdin is not None:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while sel.get_map():
            remaining = None if timeout is None else timeout - (time.monotonic() - start)
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                name = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    if partial[name] and on_line:
                        on_line(name, partial[name].decode("utf-8", "replace"))
                    continue
                out[name].append(chunk)
                if on_line:
                    data = partial[name] + chunk
                    *complete, partial[name] = data.split(b"\n")
                    for line in complete:
                        on_line(name, line.decode("utf-8", "replace"))
        if not timed_out:
            remaining = None if timeout is None else max(timeout - (time.monotonic() - start), 0.01)
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        sel.close()
        if proc.poll() is None:
            _stop_group(proc)
        _Reaper.tell(f"-{proc.pid}")
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return CommandResult(
        rc=proc.returncode if not timed_out else -1,
        stdout=b"".join(out["stdout"]).decode("utf-8", "replace"),
        stderr=b"".join(out["stderr"]).decode("utf-8", "replace"),
        timed_out=timed_out,
        duration=time.monotonic() - start,
    )


def _remove_dead_temps(directory: str, prefix: str) -> None:
    """Remove ``<prefix><pid>.tmp`` files of writers that died (kill -9) between write and rename."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) : -len(".tmp")]
        if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # a live writer (maybe another user's: PermissionError below)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


class LocalFS:
    """The FileSystem protocol on this host; writes go through a temp file and rename."""

    def read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def write_atomic(self, path: str, data: bytes, mode: int | None) -> None:
        directory = os.path.dirname(path) or "."
        prefix = f".{os.path.basename(path)}.pgpool-hook."
        tmp = os.path.join(directory, f"{prefix}{os.getpid()}.tmp")
        _remove_dead_temps(directory, prefix)
        if mode is None:
            mode = self.stat_mode(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode if mode is not None else 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def remove(self, path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path) and not os.path.islink(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def remove_tree(self, path: str) -> None:
        import shutil

        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def mkdir(self, path: str, mode: int) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def stat_mode(self, path: str) -> int | None:
        try:
            return os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            return None
