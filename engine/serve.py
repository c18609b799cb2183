"""``pgpool-hook serve``: a resident runner that forks a ready worker for every hook call.

Why: a hook that starts a fresh Python process pays for the interpreter, the engine, Jinja2,
PyYAML, psycopg and paramiko before its first step (100-250 ms), and pgpool holds its
clients for all of it.  The resident runner imports all of that once; each call of
``pgpool-hook`` (see :mod:`engine.launch`) connects to its Unix socket and the runner
forks a worker that already has everything loaded.  The worker takes over the caller's
standard streams, arguments, environment, working directory and umask and runs the
same ``engine.cli.main`` a local run would, then reports its exit code.

What keeps it safe to leave running:

* only the runner's own user can connect (socket mode 0600, and the peer's uid is
  checked); the caller checks the runner's uid too;
* a call from another interpreter or another engine copy is refused (the caller runs it
  itself), and so is every call once any loaded engine file changed on disk: the runner
  then starts itself again with the new code (``exec``), so an upgrade needs no restart;
* a worker whose caller went away (``kill -9`` of the hook) gets SIGTERM and rolls back,
  as a run does on SIGTERM;
* stopping the runner (SIGTERM) never stops a running hook: workers finish and report to
  their callers directly.
"""

from __future__ import annotations

import gc
import io
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from engine import launch
from engine.launch import DEFAULT_SOCKET, MAGIC, decode_request

# what a warm hook call would otherwise import: the engine, its step kinds, and the
# libraries they load on first use
PRELOAD = (
    "engine.cli",
    "engine.commands",
    "engine.run",
    "engine.interpreter",
    "engine.steps",
    "engine.steps.sql",
    "engine.steps.ssh",
    "engine.steps.template",
    "engine.steps.file",
    "engine.steps.local",
    "engine.transport.local",
    "engine.transport.ssh",
    "engine.render",
    "engine.validate",
    "engine.plan",
    "engine.preview",
    "engine.cache",
    "engine.config",
    "jinja2",
    "jinja2.sandbox",
    "yaml",
    "jsonschema",
    "psycopg",
    "paramiko",
)
REQUEST_TIMEOUT = 5.0  # a caller sends its whole request at once
MAX_REQUEST = 4 * 1024 * 1024
ENGINE_DIR = str(Path(__file__).resolve().parent)
PEERCRED = struct.Struct("3i")


def log(message: str) -> None:
    print(f"pgpool-hook serve: {message}", file=sys.stderr, flush=True)


def preload() -> list[str]:
    """Import :data:`PRELOAD`; the names that could not be imported (their first use pays)."""
    import importlib

    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a library missing here fails in the worker with its own message
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return missing


def engine_files() -> dict[str, tuple[int, int]]:
    """Modification time and size of every engine module loaded: a change means new code."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(ENGINE_DIR):
            try:
                st = os.stat(path)
            except OSError:
                files[path] = (-1, -1)
            else:
                files[path] = (st.st_mtime_ns, st.st_size)
    return files


def peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel."""
    pid, uid, _gid = PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
    return pid, uid


def resident_pid(path: str) -> int | None:
    """pid of the runner of this user listening on ``path``, if one answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return None
        pid, uid = peer(probe)
        return pid if uid == os.getuid() else None


class ServeError(Exception):
    """The runner cannot start (socket path taken, folder missing or not writable)."""


class Server:
    """The listening socket, the workers it forked and their callers' connections."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = self._listen(path)
        self.inode = os.stat(path).st_ino  # so stopping never removes a successor's socket
        self.snapshot = engine_files()
        self.workers: dict[int, socket.socket] = {}  # worker pid -> its caller's connection
        self.by_fd: dict[int, int] = {}  # connection fd -> worker pid
        self.stopping = False
        self.restart = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.poller = select.poll()

    @staticmethod
    def _listen(path: str) -> socket.socket:
        if resident_pid(path) is not None:
            raise ServeError(f"a runner already listens on {path}")
        folder = os.path.dirname(path) or "."
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if os.path.exists(path) or os.path.islink(path):
                os.unlink(path)  # a runner that died left it; nobody answers on it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # 0600 from the start: no window in which others may connect
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            sock.listen(64)
        except OSError as exc:
            raise ServeError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
        return sock

    # ---- the loop ----------------------------------------------------------------------

    def serve_forever(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_restart)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a byte on the wake-up pipe is enough
        self.poller.register(self.wake_r, select.POLLIN)
        self.poller.register(self.listener.fileno(), select.POLLIN)
        gc.freeze()  # workers then leave the preloaded objects' pages shared
        while not (self.stopping or self.restart):
            for fd, _event in self.poller.poll():
                if fd == self.wake_r:
                    self._drain_wakeups()
                    self._reap()
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd in self.by_fd:
                    self._caller_event(fd)
        self._close_listener()
        if self.restart:
            self._exec_again()

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_restart(self, signum: int, frame: object) -> None:
        self.restart = True

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _close_listener(self) -> None:
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.listener.close()

    def _exec_again(self) -> None:
        """Same command line, new code; running workers stay children and are reaped later."""
        log("engine files changed on disk: starting again with the new code")
        signal.set_wakeup_fd(-1)
        os.execv(sys.executable, sys.orig_argv)

    # ---- one call ------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            request, fds = self._receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        pid, refusal = 0, ""
        try:
            try:
                refusal = self._refusal(conn, request)
            except OSError:  # the caller went away meanwhile
                refusal = "gone"
                conn.close()
                return
            if not refusal:
                try:
                    pid = os.fork()
                except OSError as exc:  # out of processes or memory: the caller still has its own
                    log(f"cannot start a worker ({exc.strerror or exc}); the caller runs the hook itself")
                    refusal = "busy"
            if refusal:
                self._send(conn, refusal.encode() + b"\n")
                conn.close()
                if refusal == "stale":
                    self.restart = True
                return
            if pid == 0:
                try:
                    self._become_worker(conn, request, fds)  # never returns
                finally:
                    os._exit(1)  # a signal raising inside the worker's own exit path
        finally:
            if pid != 0 or refusal:
                for fd in fds:
                    os.close(fd)
        self.workers[pid] = conn
        self.by_fd[conn.fileno()] = pid
        self.poller.register(conn.fileno(), select.POLLIN)

    @staticmethod
    def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
        conn.settimeout(REQUEST_TIMEOUT)
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        try:
            if not data.startswith(MAGIC) or len(data) < 8:
                raise ValueError("not a pgpool-hook request")
            size = int.from_bytes(data[4:8], "big")
            if size > MAX_REQUEST:
                raise ValueError("request too large")
            body = data[8:]
            while len(body) < size:
                chunk = conn.recv(min(65536, size - len(body)))
                if not chunk:
                    raise ValueError("request cut short")
                body += chunk
            conn.settimeout(None)
            return decode_request(body), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _refusal(self, conn: socket.socket, request: dict[str, object]) -> str:
        """Why this call must run in the caller's own process ("" when it may run here)."""
        if peer(conn)[1] != os.getuid():
            return "refused"
        if request["executable"] != sys.executable or request["version"] != sys.version:
            return "mismatch"
        if os.path.realpath(str(request["engine_dir"])) != ENGINE_DIR:
            return "mismatch"
        if not os.path.isdir(str(request["cwd"])):
            return "mismatch"
        if engine_files() != self.snapshot:
            return "stale"
        return ""

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        try:
            conn.sendall(data)
        except OSError:
            pass

    def _caller_event(self, fd: int) -> None:
        pid = self.by_fd[fd]
        conn = self.workers[pid]
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if data.startswith(b"done"):  # the caller has its exit code: nothing left to watch
            self._forget(pid)
            return
        if data:
            return  # noise: callers send nothing else
        # the caller is gone (kill -9 of the hook): the run must not go on unseen
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        else:
            log(f"worker {pid}: its caller went away; sent SIGTERM (the run stops and rolls back)")
        self._forget(pid)

    def _forget(self, pid: int) -> None:
        conn = self.workers.pop(pid, None)
        if conn is None:
            return
        self.by_fd.pop(conn.fileno(), None)
        try:
            self.poller.unregister(conn.fileno())
        except KeyError:
            pass
        conn.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if code < 0 and pid in self.workers:
                log(f"worker {pid} ended by signal {-code} before reporting to its caller")
            code = 128 - code if code < 0 else code
            conn = self.workers.get(pid)
            if conn is not None:
                self._send(conn, b"status %d\n" % code)
                self._forget(pid)

    # ---- the worker ----------------------------------------------------------------------

    def _become_worker(self, conn: socket.socket, request: dict[str, object], fds: list[int]) -> None:
        """In the forked child: become the caller's process, run the command, report, exit."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            self.listener.close()
            for other in self.workers.values():
                other.close()
            _adopt_streams(str(request["fds"]), fds)
            os.chdir(str(request["cwd"]))
            os.umask(int(request["umask"]))  # type: ignore[call-overload]
            env = request["env"]
            assert isinstance(env, dict)
            os.environb.clear()
            os.environb.update(env)
            time.tzset()
            launch.served_by = os.getppid()
            argv = list(request["argv"])  # type: ignore[call-overload]
            sys.argv = argv
            self._send(conn, b"pid %d\n" % os.getpid())
            from engine.cli import main

            code = main(argv[1:], prog=argv[0] if argv else "pgpool-hook")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the caller must get a code, whatever happened
            print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            # the run is over: a late SIGTERM (the caller already gone) must not raise in here
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(signum, signal.SIG_IGN)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            self._send(conn, b"exit %d\n" % code)
            os._exit(code)


def _adopt_streams(present: str, fds: list[int]) -> None:
    """Put the caller's descriptors at 0, 1, 2 (``/dev/null`` for one it had closed)."""
    received = dict(zip(present, fds, strict=False))
    for target in (0, 1, 2):
        source = received.get(str(target))
        if source is None:
            source = os.open(os.devnull, os.O_RDWR)
            os.dup2(source, target)
            os.close(source)
        else:
            os.dup2(source, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    fds.clear()
    sys.stdin = _text_stream(0, "r", sys.stdin)
    sys.stdout = _text_stream(1, "w", sys.stdout)
    sys.stderr = _text_stream(2, "w", sys.stderr)


def _text_stream(fd: int, mode: str, like: object) -> io.TextIOWrapper:
    """A fresh text stream on ``fd``: buffering follows the caller's file (a terminal or not)."""
    encoding = getattr(like, "encoding", None) or "utf-8"
    errors = getattr(like, "errors", None) or "strict"
    binary = open(fd, mode + "b", closefd=False)  # noqa: SIM115 - lives as long as the process
    tty = os.isatty(fd)
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, line_buffering=tty or fd == 2)


def main(socket_path: str | None, status_only: bool = False) -> int:
    """``pgpool-hook serve``; with ``status_only`` just say whether a runner answers."""
    # where calls look for it; with hand-over turned off ("off") still the usual place
    path = socket_path or launch.socket_path() or DEFAULT_SOCKET
    if status_only:
        pid = resident_pid(path)
        if pid is None:
            print(f"no resident runner of this user answers on {path}; hooks run in their own process")
            return 1
        print(f"resident runner pid {pid} answers on {path}")
        return 0
    for fd in (0, 1, 2):  # so a caller's descriptors never land on 0-2 before they are placed
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    started = time.monotonic()
    missing = preload()
    try:
        server = Server(path)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    took = (time.monotonic() - started) * 1000
    log(f"listening on {path} (pid {os.getpid()}, engine {ENGINE_DIR}, ready in {took:.0f} ms)")
    for item in missing:
        log(f"not preloaded: {item}; a hook that needs it loads it itself")
    server.serve_forever()
    log("stopped; running hooks finish on their own")
    return 0
