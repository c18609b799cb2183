"""A throw-away OpenSSH server on the nodes' loopback addresses.

The hooks reach "remote" nodes over ssh as ``postgres``; testing that for real needs a
real sshd.  This one runs as root (sshd must, to switch to the login user) from a config
file in the sandbox directory, listens on every node address at a test port, accepts one
generated ed25519 user key (owned by ``postgres``), and publishes a ``known_hosts`` file
so clients can keep strict host-key checking on.

Settings that a stock sshd needs for this to work on Debian (see sandbox-cluster.md):
``UsePAM yes`` (the ``postgres`` account is locked; without PAM even key logins are
refused), ``StrictModes no`` (keys live under world-writable /tmp), an ``sftp``
subsystem (paramiko SFTP and OpenSSH 9 scp use it) and the ``/run/sshd`` directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.osuser import (
    POSTGRES_USER,
    SandboxError,
    chown_postgres,
    make_postgres_dir,
    pid_alive,
    port_open,
    require_root,
    run_as_postgres,
    wait_until,
    write_file,
)

SSHD_BIN = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
DEFAULT_SSH_PORT = 2222


def known_hosts_host(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


@dataclass
class Sshd:
    """An sshd listening on ``addresses`` at ``port``, with keys and config under ``root``.

    Attributes tests and hook configs use: ``port``, ``user`` (``postgres``), ``key_file``
    (private key, 0600, owned by postgres), ``known_hosts``, ``addresses``.
    """

    root: Path
    addresses: Sequence[str]
    port: int = DEFAULT_SSH_PORT
    user: str = POSTGRES_USER
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def key_file(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def public_key_file(self) -> Path:
        return self.root / "id_ed25519.pub"

    @property
    def host_key_file(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def config_file(self) -> Path:
        return self.root / "sshd_config"

    @property
    def pid_file(self) -> Path:
        return self.root / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "sshd.log"

    # ---- setup -----------------------------------------------------------------------

    def _keygen(self, path: Path, comment: str) -> None:
        for p in (path, path.with_name(path.name + ".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
        )

    def prepare(self) -> None:
        """Generate keys, authorized_keys, known_hosts and sshd_config (idempotent)."""
        require_root()
        make_postgres_dir(self.root, 0o755)
        if not self.host_key_file.exists():
            self._keygen(self.host_key_file, "pgpool-hook-sandbox-host")  # root-owned, 0600
        if not self.key_file.exists():
            self._keygen(self.key_file, "pgpool-hook-sandbox-user")
            chown_postgres(self.key_file)
            chown_postgres(self.public_key_file)
            self.key_file.chmod(0o600)
        write_file(self.authorized_keys, self.public_key_file.read_text(), mode=0o644)
        host_pub = " ".join(
            self.host_key_file.with_name(self.host_key_file.name + ".pub").read_text().split()[:2]
        )
        write_file(
            self.known_hosts,
            "".join(f"{known_hosts_host(a, self.port)} {host_pub}\n" for a in self.addresses),
            mode=0o644,
        )
        listen = "".join(f"ListenAddress {a}:{self.port}\n" for a in self.addresses)
        config = (
            f"# pgpool-hook test sshd\n{listen}"
            f"HostKey {self.host_key_file}\n"
            f"PidFile {self.pid_file}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM yes\n"
            "StrictModes no\n"
            "PermitRootLogin no\n"
            f"AllowUsers {self.user}\n"
            "PrintMotd no\n"
            "UseDNS no\n"
            "MaxStartups 200\n"
            "MaxSessions 100\n"
            "LogLevel VERBOSE\n"
            f"Subsystem sftp {SFTP_SERVER}\n"
        )
        write_file(self.config_file, config, mode=0o644, postgres_owned=False)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        check = subprocess.run(
            [str(SSHD_BIN), "-t", "-f", str(self.config_file)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise SandboxError(f"sshd rejects its config {self.config_file}: {check.stderr}")

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 20) -> Sshd:
        """Start sshd in the foreground (-D) as a child, logging to ``log_file``."""
        self.prepare()
        if self.is_running():
            return self
        busy = [a for a in self.addresses if port_open(a, self.port)]
        if busy:
            raise SandboxError(f"port {self.port} already in use on {busy} (a stale sshd?)")
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(SSHD_BIN), "-D", "-e", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )
        try:
            for address in self.addresses:
                wait_until(
                    lambda a=address: port_open(a, self.port) or self._died(),  # type: ignore[misc]
                    timeout,
                    message=f"sshd on {address}:{self.port}",
                )
                if self._died():
                    raise SandboxError(f"sshd exited at start:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def pid(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def stop(self) -> None:
        """Stop the listener (existing sessions end when their clients disconnect)."""
        pid = self.pid()
        if pid is not None and pid_alive(pid):
            self.resume()
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not pid_alive(pid), 10, message="sshd to stop")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.process = None
        self.pid_file.unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP the listener: new connections hang before the banner (an unresponsive
        host), which is what the hooks' ssh timeouts must handle."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # ---- client helpers --------------------------------------------------------------

    def ssh_argv(self, address: str, *command: str, batch: bool = True) -> list[str]:
        """argv for OpenSSH's client with this server's key and strict host-key checking."""
        argv = [
            "ssh",
            "-i", str(self.key_file),
            "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=5",
            "-F", "/dev/null",
        ]  # fmt: skip
        if batch:
            argv += ["-o", "BatchMode=yes"]
        return [*argv, f"{self.user}@{address}", *command]

    def run(
        self, address: str, *command: str, as_postgres: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on ``address`` over ssh, as root's or postgres's ssh client."""
        argv = self.ssh_argv(address, *command)
        if as_postgres:
            return run_as_postgres(argv, check=False, timeout=timeout)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", check=False)
