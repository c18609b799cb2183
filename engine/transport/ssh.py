"""Commands and files on other nodes, over one reused paramiko connection per host.

Imported only when a run has a step that needs SSH, so paramiko is never
loaded for a purely local workflow.  Every step of a run shares one
:class:`SshPool`: the first step that reaches a host connects, the others
reuse the connection (and one SFTP session on it).

Two things the classic ``ssh host cmd`` scripts get wrong are handled here:

* a command that outlives its timeout (or a runner that is interrupted) is
  killed on the remote side — the whole process group of the session's
  shell — instead of being left running behind pgpool's back;
* nothing can ever prompt: the key file is the only credential tried, and
  host keys are checked against a ``known_hosts`` file by the configured
  policy.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import select
import shlex
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import paramiko

from engine.errors import StepFailure
from engine.transport import CommandResult

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out remote command
EOF_GRACE = 2.0  # after the exit status, wait this long for the output to close (a daemon may hold it)
POLL = 0.1
STALE_TEMP_AGE = 600  # seconds: a write_atomic temp file untouched this long was left by a dead writer


# A runner killed with SIGKILL (or cut off from the node) cannot stop its remote command, and sshd
# does not stop a command without a pty when the connection drops: a pg_basebackup would go on
# writing into the PGDATA that the next run empties.  The command's shell therefore starts this
# watchdog, detached (its own session, so a `wait` in the command does not wait for it and a
# timeout kill of the command's group does not count it): once this connection's sshd process
# ($PPID) is gone while the shell ($$) still runs, it stops the shell's process group.  It exits
# by itself within a second of the shell ending.
ORPHAN_WATCHDOG = (
    '( setsid sh -c \'while kill -0 "$1" 2>/dev/null; do if ! kill -0 "$2" 2>/dev/null; then '
    'kill -s TERM -- "-$1"; sleep 2; kill -s KILL -- "-$1"; exit 0; fi; sleep 1; done\' '
    "pgpool-hook-watchdog $$ $PPID </dev/null >/dev/null 2>&1 & )"
)


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        self.hostname, self.key = hostname, key
        super().__init__(f"{hostname} not found in known_hosts")


class _StrictPolicy(paramiko.MissingHostKeyPolicy):
    """Reject a host that is not in known_hosts (RejectPolicy with a telling exception)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``StrictHostKeyChecking=accept-new``: remember a new host by appending one line.

    A host already in the file with a different key never reaches this policy:
    paramiko raises BadHostKeyException for it first.
    """

    def __init__(self, known_hosts: str, logger: Any):
        self.known_hosts = known_hosts
        self.log = logger

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            directory = os.path.dirname(self.known_hosts)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a", encoding="ascii") as fh:
                fh.write(line)
        except OSError as exc:
            _log(
                self.log,
                "warning",
                f"ssh: accepted the new host key of {hostname} but cannot save it "
                f"to {self.known_hosts}: {exc.strerror or exc}",
            )
            return
        _log(
            self.log,
            "ssh-new-host-key",
            f"added {key.get_name()} key {key.fingerprint} of {hostname} to {self.known_hosts}",
        )


def _log(logger: Any, outcome: str, message: str) -> None:
    event = getattr(logger, "event", None)
    if event is not None:
        event(outcome, message)


class SshPool:
    """One ``paramiko.SSHClient`` per (host, port, user) for the whole run."""

    def __init__(self, config: Any, logger: Any):
        self.config = config
        self.log = logger
        self.user = str(config.get("ssh.user") or "postgres")
        self.port = int(config.get("ssh.port") or 22)
        key_file = config.get("ssh.key_file")
        self.key_file = os.path.expanduser(str(key_file)) if key_file else None
        self.policy = str(config.get("ssh.host_key_policy") or "accept-new")
        known = config.get("ssh.known_hosts")
        self.known_hosts = os.path.expanduser(str(known)) if known else None
        self.connect_timeout = float(config.get("ssh.connect_timeout") or 10)
        self.io_timeout = max(self.connect_timeout * 3, 30.0)
        self._clients: dict[tuple[str, int, str], paramiko.SSHClient] = {}
        self._sftp: dict[tuple[str, int, str], paramiko.SFTPClient] = {}
        self.connections_opened = 0

    # -- connections ----------------------------------------------------------
    def _key(self, host: str, port: Any, user: str | None) -> tuple[str, int, str]:
        try:
            number = int(port) if port not in (None, "") else self.port
        except (TypeError, ValueError):
            raise StepFailure(f"ssh {host}: port {port!r} is not a number") from None
        return (str(host), number, str(user) if user else self.user)

    @staticmethod
    def describe(key: tuple[str, int, str]) -> str:
        host, port, user = key
        return f"{user}@{host}:{port}"

    def connected(self) -> list[str]:
        """``user@host:port`` of every open connection (for logs and tests)."""
        return [self.describe(k) for k, c in self._clients.items() if _active(c)]

    def client(
        self, host: str, port: Any = None, user: str | None = None, timeout: float | None = None
    ) -> paramiko.SSHClient:
        """The pooled connection; a new one may take ``connect_timeout``, or ``timeout`` if shorter."""
        key = self._key(host, port, user)
        existing = self._clients.get(key)
        if existing is not None:
            if _active(existing):
                return existing
            self._drop(key)
        client = self._connect(key, timeout)
        self._clients[key] = client
        return client

    def _connect(self, key: tuple[str, int, str], timeout: float | None = None) -> paramiko.SSHClient:
        host, port, user = key
        where = f"ssh {self.describe(key)}"
        client = paramiko.SSHClient()
        if self.policy == "ignore":
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # nothing loaded, nothing saved
        else:
            if self.known_hosts and os.path.exists(self.known_hosts):
                try:
                    client.get_host_keys().load(self.known_hosts)
                except (OSError, paramiko.SSHException) as exc:
                    raise StepFailure(f"{where}: cannot read known_hosts {self.known_hosts}: {exc}") from None
            if self.policy == "strict":
                client.set_missing_host_key_policy(_StrictPolicy())
            else:
                client.set_missing_host_key_policy(
                    _AcceptNewPolicy(self.known_hosts or os.path.expanduser("~/.ssh/known_hosts"), self.log)
                )
        kwargs: dict[str, Any] = {}
        if self.key_file:
            if not os.path.exists(self.key_file):
                raise StepFailure(f"{where}: key file {self.key_file} does not exist")
            kwargs.update(key_filename=self.key_file, allow_agent=False, look_for_keys=False)
        t = self.connect_timeout if timeout is None else max(min(self.connect_timeout, timeout), 0.1)
        try:
            client.connect(
                host,
                port=port,
                username=user,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
                **kwargs,
            )
        except BaseException as exc:
            client.close()
            if isinstance(exc, Exception):
                raise StepFailure(f"{where}: {self._explain(exc, t)}") from None
            raise
        self.connections_opened += 1
        return client

    def _explain(self, exc: Exception, t: float) -> str:
        if isinstance(exc, _UnknownHostKey):
            return (
                f"host key verification failed: {exc.hostname} is not in {self.known_hosts or 'known_hosts'} "
                f"(its {exc.key.get_name()} key is {exc.key.fingerprint}; host_key_policy is strict)"
            )
        if isinstance(exc, paramiko.BadHostKeyException):
            return (
                f"host key verification failed: the host key CHANGED (server offers {exc.key.get_name()} "
                f"{exc.key.fingerprint}, {self.known_hosts or 'known_hosts'} has "
                f"{exc.expected_key.fingerprint}); refusing to connect"
            )
        if isinstance(exc, paramiko.PasswordRequiredException):
            return f"key file {self.key_file} is encrypted; use a key without a passphrase"
        if isinstance(exc, paramiko.AuthenticationException):
            what = f"with key {self.key_file}" if self.key_file else "(no key file configured)"
            return f"authentication failed {what}"
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve host name: {exc.strerror or exc}"
        if isinstance(exc, TimeoutError | socket.timeout):
            return f"no answer within the connect timeout of {round(t, 2):g}s"
        if isinstance(exc, paramiko.SSHException):
            text = str(exc)
            lowered = text.lower()
            if any(
                w in lowered for w in ("banner", "timed out", "timeout", "negotiation", "no existing session")
            ):
                return (
                    f"the host accepted the connection but did not speak SSH within {round(t, 2):g}s ({text})"
                )
            return f"SSH error: {text}"
        if isinstance(exc, OSError):
            if exc.errno is not None and exc.strerror:
                return exc.strerror.lower() if exc.filename is None else f"{exc.filename}: {exc.strerror}"
            return str(exc) or type(exc).__name__
        return f"{type(exc).__name__}: {exc}"

    def _drop(self, key: tuple[str, int, str]) -> None:
        sftp = self._sftp.pop(key, None)
        if sftp is not None:
            try:
                sftp.close()
            except Exception:
                pass
        client = self._clients.pop(key, None)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def close(self) -> None:
        for key in list(self._clients):
            self._drop(key)

    # -- commands -------------------------------------------------------------
    def run(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None,
        user: str | None = None,
        port: Any = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` with the remote login shell; stream lines; kill the remote group on timeout."""
        start = time.monotonic()
        key = self._key(host, port, user)
        where = f"ssh {self.describe(key)}"
        client = self.client(host, port, user, timeout)  # the step's timeout bounds connecting too
        transport = client.get_transport()
        assert transport is not None
        marker = f"__pgpool_hook_pgid_{secrets.token_hex(6)}__"
        # sshd makes the session's shell a session (and process group) leader: $$ is the group to kill
        wrapped = f"echo {marker}$$\n{ORPHAN_WATCHDOG}\n{command}"
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(wrapped)
            chan.shutdown_write()  # the command reads EOF on stdin, never waits for input
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop(key)
            raise StepFailure(f"{where}: cannot start the command: {exc or type(exc).__name__}") from None

        marker_re = re.compile(re.escape(marker).encode() + rb"(\d+)")
        pgid: list[int] = []
        out = bytearray()
        err = bytearray()
        partial = {"stdout": b"", "stderr": b""}

        def emit(name: str, line: bytes) -> None:
            if name == "stdout" and not pgid:
                m = marker_re.fullmatch(line.rstrip(b"\r"))
                if m:
                    pgid.append(int(m.group(1)))
                    return
            (out if name == "stdout" else err).extend(line + b"\n")
            if on_line:
                on_line(name, line.decode("utf-8", "replace"))

        def feed(name: str, chunk: bytes) -> None:
            *complete, partial[name] = (partial[name] + chunk).split(b"\n")
            for line in complete:
                emit(name, line)

        def drain() -> bool:
            got = False
            while chan.recv_ready():
                chunk = chan.recv(65536)
                if not chunk:
                    break
                feed("stdout", chunk)
                got = True
            while chan.recv_stderr_ready():
                chunk = chan.recv_stderr(65536)
                if not chunk:
                    break
                feed("stderr", chunk)
                got = True
            return got

        deadline = None if timeout is None else start + timeout
        timed_out = False
        finished = False
        exit_seen: float | None = None
        try:
            while True:
                got = drain()
                now = time.monotonic()
                # paramiko also reports "ready" (status -1) when the channel dies without one
                if chan.exit_status_ready() and (chan.exit_status != -1 or transport.is_active()):
                    if exit_seen is None:
                        exit_seen = now
                    if chan.eof_received or chan.closed or now - exit_seen >= EOF_GRACE:
                        drain()
                        finished = True
                        break
                elif chan.closed or not transport.is_active():
                    # closed without an exit status: the connection is gone
                    drain()
                    self._drop(key)
                    raise StepFailure(
                        f"{where}: connection lost while the command was running",
                        {"stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")},
                    )
                if deadline is not None and now >= deadline:
                    timed_out = True
                    break
                wait = POLL if deadline is None else max(min(POLL, deadline - now), 0.0)
                if chan.eof_received and not got:
                    time.sleep(wait)  # output closed, status pending: the pipe stays readable, do not spin
                else:
                    select.select([chan], [], [], wait)
        finally:
            if not finished:
                self._stop_remote(key, transport, chan, pgid[0] if pgid else None, where)
            else:
                chan.close()
        for name in ("stdout", "stderr"):
            if partial[name]:
                rest, partial[name] = partial[name], b""
                if name == "stdout" and not pgid and marker_re.fullmatch(rest):
                    continue
                (out if name == "stdout" else err).extend(rest)
                if on_line:
                    on_line(name, rest.decode("utf-8", "replace"))
        return CommandResult(
            rc=-1 if timed_out else chan.recv_exit_status(),
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            timed_out=timed_out,
            duration=time.monotonic() - start,
        )

    def _stop_remote(
        self,
        key: tuple[str, int, str],
        transport: paramiko.Transport,
        chan: paramiko.Channel,
        pgid: int | None,
        where: str,
    ) -> None:
        """TERM, then KILL, the remote command's process group; then close its channel."""
        try:
            if pgid is None:
                _log(
                    self.log,
                    "warning",
                    f"{where}: the remote command's process group is unknown; "
                    "closing the channel only (the command may still run)",
                )
                return
            if not transport.is_active():
                return
            steps = int(KILL_GRACE / POLL)
            # `kill -s SIG -- -PGID` is the spelling both dash and bash accept for a process group
            script = (
                f"kill -s TERM -- -{pgid} 2>/dev/null || exit 0\n"
                f"i=0; while [ $i -lt {steps} ]; do kill -s 0 -- -{pgid} 2>/dev/null || exit 0; "
                f"sleep {POLL}; i=$((i+1)); done\n"
                f"kill -s KILL -- -{pgid} 2>/dev/null; exit 0\n"
            )
            try:
                killer = transport.open_session(timeout=self.connect_timeout)
                killer.exec_command("sh -c " + shlex.quote(script))
                end = time.monotonic() + KILL_GRACE + self.connect_timeout
                while not killer.exit_status_ready() and time.monotonic() < end:
                    time.sleep(0.05)
                killer.close()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                _log(self.log, "warning", f"{where}: could not stop remote process group {pgid}: {exc}")
                self._drop(key)
        finally:
            try:
                chan.close()
            except Exception:
                pass

    # -- files ----------------------------------------------------------------
    def sftp(self, host: str, port: Any = None, user: str | None = None) -> paramiko.SFTPClient:
        key = self._key(host, port, user)
        client = self.client(host, port, user)
        sftp = self._sftp.get(key)
        if sftp is not None and not sftp.get_channel().closed:  # type: ignore[union-attr]
            return sftp
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop(key)
            raise StepFailure(f"sftp {self.describe(key)}: cannot open an SFTP session: {exc}") from None
        sftp.get_channel().settimeout(self.io_timeout)  # type: ignore[union-attr]
        self._sftp[key] = sftp
        return sftp

    def fs(self, host: str, port: Any = None, user: str | None = None) -> SftpFS:
        return SftpFS(self, host, port, user)


def _active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def _remove_stale_temps(sftp: paramiko.SFTPClient, directory: str, prefix: str, written: str) -> None:
    """Remove temp files of writers that died between write and rename (kill -9, lost connection).

    A live writer's temp file changes with every chunk; one untouched for STALE_TEMP_AGE,
    measured on the node's clock (the file just written), is an orphan.
    """
    try:
        now = sftp.stat(written).st_mtime
        if now is None:
            return
        for attrs in sftp.listdir_attr(directory):
            name = attrs.filename
            if (
                name.startswith(prefix)
                and name.endswith(".tmp")
                and (attrs.st_mtime or now) < now - STALE_TEMP_AGE
            ):
                sftp.remove(posixpath.join(directory, name))
    except Exception:
        pass  # only tidying up: the write itself succeeded


class SftpFS:
    """The FileSystem protocol on a node, over the pool's SFTP session; mirrors LocalFS."""

    def __init__(self, pool: SshPool, host: str, port: Any = None, user: str | None = None):
        self.pool = pool
        self.host = host
        self.port = port
        self.user = user

    def _call(self, op: str, path: str, fn: Callable[[paramiko.SFTPClient], Any]) -> Any:
        sftp = self.pool.sftp(self.host, self.port, self.user)
        where = f"sftp {self.pool.describe(self.pool._key(self.host, self.port, self.user))}"
        try:
            return fn(sftp)
        except FileNotFoundError:
            raise
        except PermissionError as exc:
            raise StepFailure(f"{where}: {op} {path}: permission denied ({exc})") from None
        except (TimeoutError, EOFError, paramiko.SSHException) as exc:
            self.pool._drop(self.pool._key(self.host, self.port, self.user))
            raise StepFailure(
                f"{where}: {op} {path}: connection problem: {exc or type(exc).__name__}"
            ) from None
        except OSError as exc:
            raise StepFailure(f"{where}: {op} {path}: {exc.strerror or exc}") from None

    def read(self, path: str) -> bytes | None:
        def do(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as fh:
                fh.prefetch()
                return fh.read()

        try:
            data: bytes = self._call("read", path, do)
            return data
        except FileNotFoundError:
            return None

    def write_atomic(self, path: str, data: bytes, mode: int | None) -> None:
        directory = posixpath.dirname(path) or "."
        prefix = f".{posixpath.basename(path)}.pgpool-hook."
        tmp = posixpath.join(directory, f"{prefix}{secrets.token_hex(4)}.tmp")
        if mode is None:
            mode = self.stat_mode(path)
        final_mode = mode if mode is not None else 0o644

        def do(sftp: paramiko.SFTPClient) -> None:
            try:
                with sftp.open(tmp, "wb") as fh:
                    fh.chmod(0o600)
                    fh.set_pipelined(True)
                    fh.write(data)
                sftp.chmod(tmp, final_mode)
                sftp.posix_rename(tmp, path)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except Exception:
                    pass
                raise
            _remove_stale_temps(sftp, directory, prefix, path)

        try:
            self._call("write", path, do)
        except FileNotFoundError as exc:
            raise StepFailure(f"sftp {self.host}: write {path}: {directory} does not exist ({exc})") from None

    def remove(self, path: str) -> bool:
        try:
            self._call("remove", path, lambda s: s.remove(path))
            return True
        except FileNotFoundError:
            return False

    def _lstat(self, path: str) -> paramiko.SFTPAttributes | None:
        try:
            attrs: paramiko.SFTPAttributes = self._call("lstat", path, lambda s: s.lstat(path))
            return attrs
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        return self._lstat(path) is not None

    def is_dir(self, path: str) -> bool:
        attrs = self._lstat(path)
        return attrs is not None and attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode)

    def listdir(self, path: str) -> list[str]:
        names: list[str] = self._call("list", path, lambda s: s.listdir(path))
        return sorted(names)

    def remove_contents(self, path: str, timeout: float | None) -> None:
        """Empty a folder with one remote command: an SFTP round trip per file makes
        emptying a PGDATA of a few thousand files take seconds.  ``rm -rf`` removes a
        symlink, never what it points to."""
        command = f"find {shlex.quote(path)} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +"
        res = self.pool.run(self.host, command, timeout=timeout, user=self.user, port=self.port)
        if res.timed_out or res.rc != 0:
            why = (
                "timed out" if res.timed_out else (res.stderr.strip().splitlines() or [f"exit {res.rc}"])[-1]
            )
            raise StepFailure(f"emptying {path} on {self.host} failed: {why}")

    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and, if it is a real folder, everything in it; symlinks are never followed."""

        def rm(sftp: paramiko.SFTPClient, target: str) -> None:
            attrs = sftp.lstat(target)
            if attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode):
                for entry in sftp.listdir_attr(target):
                    child = posixpath.join(target, entry.filename)
                    if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
                        rm(sftp, child)
                    else:
                        sftp.remove(child)
                sftp.rmdir(target)
            else:
                sftp.remove(target)

        self._call("remove", path, lambda s: rm(s, path))

    def mkdir(self, path: str, mode: int) -> None:
        def do(sftp: paramiko.SFTPClient) -> None:
            missing: list[str] = []
            current = path.rstrip("/") or "/"
            while current not in ("", "/"):
                try:
                    attrs = sftp.stat(current)
                except FileNotFoundError:
                    missing.append(current)
                    current = posixpath.dirname(current)
                    continue
                if attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode):
                    raise OSError(17, f"{current} exists and is not a folder")
                break
            for i, folder in enumerate(reversed(missing)):
                leaf = i == len(missing) - 1
                sftp.mkdir(folder, mode if leaf else 0o777)

        self._call("mkdir", path, do)

    def chmod(self, path: str, mode: int) -> None:
        self._call("chmod", path, lambda s: s.chmod(path, mode))

    def stat_mode(self, path: str) -> int | None:
        try:
            attrs = self._call("stat", path, lambda s: s.stat(path))
        except FileNotFoundError:
            return None
        return None if attrs.st_mode is None else attrs.st_mode & 0o7777
