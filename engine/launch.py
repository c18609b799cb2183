"""The ``pgpool-hook`` command's first few milliseconds: hand the call to a resident runner.

A hook's start-up is failover time.  Importing the engine and its libraries costs a
Python process 100-250 ms before the first step; ``pgpool-hook serve`` (see
:mod:`engine.serve`) pays that once and forks a ready worker per call.  This module is
all a call imports when such a runner listens: it connects to the runner's Unix socket,
passes its standard streams (as file descriptors), arguments, environment, working
directory and umask, forwards the signals it gets (pgpool's SIGTERM, a terminal's
Ctrl-C) to the worker, and exits with the worker's exit code.  The worker is the same
``engine.cli.main`` a local run calls, so the two behave alike.

When no runner answers, belongs to another user, runs another interpreter or older
engine code, the call runs here, in this process, exactly as without a runner: the
runner is an accelerator, never a dependency of failover.

Only builtin modules (``_socket``, ``_signal``) are imported here: ``socket`` and
``signal`` pull in ``enum`` and ``selectors``, which costs more than the rest of the
hand-over.
"""

from __future__ import annotations

import os
import sys

SOCKET_ENV = "PGPOOL_HOOK_SOCKET"
DEFAULT_SOCKET = "/run/pgpool-hook/runner.sock"
MAGIC = b"PGH1"
# exit code when the worker's outcome cannot be known: like an incomplete rollback, it
# tells the operator to look (``pgpool-hook history``) before trusting the node's state
EXIT_UNKNOWN = 3
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# in a worker of the resident runner: the runner's pid (the journal records it)
served_by: int | None = None


def socket_path() -> str | None:
    """Where the resident runner listens; ``None`` when the operator turned hand-over off."""
    path = os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    return None if path in ("", "off", "none") else path


def encode_request(argv: list[str], fds: str) -> bytes:
    """The call as NUL-separated fields: argv and environment cannot contain NUL."""
    env = [k + b"=" + v for k, v in os.environb.items()]
    umask = os.umask(0)
    os.umask(umask)
    fields = [
        os.fsencode(sys.executable),
        os.fsencode(sys.version),
        os.fsencode(os.path.dirname(os.path.abspath(__file__))),
        os.fsencode(os.getcwd()),
        b"%o" % umask,
        fds.encode(),
        b"%d" % len(argv),
        *(os.fsencode(a) for a in argv),
        *env,
    ]
    body = b"\0".join(fields)
    return MAGIC + len(body).to_bytes(4, "big") + body


def decode_request(body: bytes) -> dict[str, object]:
    """The server's side of :func:`encode_request` (``body`` without magic and length)."""
    fields = body.split(b"\0")
    executable, version, engine_dir, cwd, umask, fds, argc = fields[:7]
    n = int(argc)
    argv = [os.fsdecode(a) for a in fields[7 : 7 + n]]
    env: dict[bytes, bytes] = {}
    for item in fields[7 + n :]:
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    return {
        "executable": os.fsdecode(executable),
        "version": os.fsdecode(version),
        "engine_dir": os.fsdecode(engine_dir),
        "cwd": os.fsdecode(cwd),
        "umask": int(umask, 8),
        "fds": fds.decode(),
        "argv": argv,
        "env": env,
    }


def _open_fds() -> str:
    """Which of 0, 1, 2 are open (a hook may be started with stdin closed)."""
    present = ""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            continue
        present += str(fd)
    return present


def handoff(argv: list[str]) -> int | None:
    """Run ``argv`` in the resident runner: its exit code, or ``None`` to run it here."""
    path = socket_path()
    if path is None or argv[1:2] == ["serve"]:  # a runner is never started inside a worker
        return None
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        # the runner must be ours: a socket someone else put there gets nothing
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        if int.from_bytes(creds[4:8], sys.byteorder) != os.getuid():
            sock.close()
            return None
        fds = _open_fds()
        fd_array = b"".join(int(fd).to_bytes(4, sys.byteorder) for fd in fds)
        sock.sendmsg([encode_request(argv, fds)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd_array)])
        reply = _Replies(sock)
        first = reply.next()
    except OSError:
        sock.close()
        return None
    if first is None or not first.startswith(b"pid "):
        # "stale", "mismatch" or a runner going away: nothing ran, run it here
        sock.close()
        return None
    _forward_signals(int(first[4:]))
    while True:
        try:
            message = reply.next()
        except OSError:
            message = None
        if message is None:
            os.write(2, b"pgpool-hook: lost contact with the resident runner; the outcome of this run is "
                        b"unknown (see pgpool-hook history)\n")  # fmt: skip
            return EXIT_UNKNOWN
        word, _, value = message.partition(b" ")
        if word in (b"exit", b"status"):
            try:
                sock.send(b"done\n")  # so the runner knows this caller did not just vanish
            except OSError:
                pass
            return int(value)


class _Replies:
    """Newline-terminated messages from the runner and the worker, in arrival order."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(256)  # type: ignore[attr-defined]
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def _forward_signals(pid: int) -> None:
    """pgpool's SIGTERM (or a terminal's Ctrl-C) is meant for the run: pass it on."""
    import _signal

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    for name in FORWARDED_SIGNALS:
        _signal.signal(getattr(_signal, name), forward)


def entry() -> None:
    """The console script: the resident runner if one answers, else a run in this process."""
    code = handoff(sys.argv)
    if code is None:
        from engine.cli import entry as run_here

        run_here()
        return
    os._exit(code)
