"""A Pgpool-II 4.3 instance (Debian ``pgpool2``) over a sandbox ``Cluster``.

Everything pgpool writes (pid file, status file, sockets, log) lives in the instance's
directory; it listens on 127.0.0.1 at test ports, checks health and streaming every
second and fails over at the first failed health check, so a scenario takes seconds.
pgpool runs as ``postgres`` with ``PCPPASSFILE`` in its environment: the hooks it starts
inherit that, which is how a hook's ``pcp_attach_node -w`` finds its password.

The hook commands are whatever the caller passes: the sandbox does not care whether they
are the engine, pgpool's sample scripts or a stub that records its argv.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from sandbox.osuser import (
    PG_BIN_DIR,
    PGPOOL_MARKER_ENV,
    SandboxError,
    base_env,
    make_postgres_dir,
    pid_alive,
    popen_as_postgres,
    port_open,
    postgres_ids,
    require_root,
    run_as_postgres,
    wait_until,
    write_file,
)
from sandbox.pg import SUPERUSER, Cluster, Node

PGPOOL_BIN = Path("/usr/sbin/pgpool")
PCP_BIN_DIR = Path("/usr/sbin")
DEFAULT_PGPOOL_PORT = 19999
DEFAULT_PCP_PORT = 19898
PCP_USER = "pgpool"
PCP_PASSWORD = "pgpool-sandbox"
MARKER_ENV = PGPOOL_MARKER_ENV

T = TypeVar("T")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return _quote(str(value))


@dataclass
class Pgpool:
    """pgpool over ``cluster``; files under ``root``.

    ``failover_command``/``follow_primary_command`` are pgpool.conf strings with the
    ``%`` placeholders; ``extra_settings`` override or add any pgpool.conf parameter.
    """

    root: Path
    cluster: Cluster
    failover_command: str = ""
    follow_primary_command: str = ""
    port: int = DEFAULT_PGPOOL_PORT
    pcp_port: int = DEFAULT_PCP_PORT
    extra_settings: Mapping[str, object] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    pcppass_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    host = "127.0.0.1"
    pcp_user = PCP_USER
    pcp_password = PCP_PASSWORD

    @property
    def config_file(self) -> Path:
        return self.root / "pgpool.conf"

    @property
    def pcp_conf(self) -> Path:
        return self.root / "pcp.conf"

    @property
    def pcppass(self) -> Path:
        """0600 pcp password file (``PCPPASSFILE``); ``root/pcppass`` unless placed elsewhere."""
        return self.pcppass_file or self.root / "pcppass"

    @property
    def pool_passwd(self) -> Path:
        return self.root / "pool_passwd"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pgpool.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "pgpool.log"

    # ---- configuration ---------------------------------------------------------------

    def settings(self) -> dict[str, object]:
        """The pgpool.conf parameters, in writing order."""
        s: dict[str, object] = {
            "backend_clustering_mode": "streaming_replication",
            "listen_addresses": self.host,
            "port": self.port,
            "socket_dir": str(self.run_dir),
            "pcp_listen_addresses": self.host,
            "pcp_port": self.pcp_port,
            "pcp_socket_dir": str(self.run_dir),
            "wd_ipc_socket_dir": str(self.run_dir),
            "pid_file_name": str(self.pid_file),
            "logdir": str(self.run_dir),
            "memqcache_oiddir": str(self.run_dir / "oiddir"),
            "log_destination": "stderr",
            "logging_collector": False,
            "log_line_prefix": "%m: %a pid %p: ",
            "log_min_messages": "warning",
            "enable_pool_hba": False,
            "pool_passwd": str(self.pool_passwd),
            "num_init_children": 8,
            "max_pool": 2,
            "reserved_connections": 0,
            "load_balance_mode": False,
            "use_watchdog": False,
            "health_check_period": 1,
            "health_check_timeout": 3,
            "health_check_user": SUPERUSER,
            "health_check_password": "",
            "health_check_database": "postgres",
            "health_check_max_retries": 0,
            "health_check_retry_delay": 1,
            "connect_timeout": 3000,
            "sr_check_period": 1,
            "sr_check_user": SUPERUSER,
            "sr_check_password": "",
            "sr_check_database": "postgres",
            "search_primary_node_timeout": 60,
            "failover_on_backend_error": True,
            "auto_failback": False,
            "failover_command": self.failover_command,
            "follow_primary_command": self.follow_primary_command,
            "recovery_user": SUPERUSER,
            "recovery_password": "",
            "recovery_1st_stage_command": "recovery_1st_stage",
            "recovery_2nd_stage_command": "",
            "recovery_timeout": 90,
        }
        for node in self.cluster.nodes:
            i = node.node_id
            s[f"backend_hostname{i}"] = node.address
            s[f"backend_port{i}"] = node.port
            s[f"backend_weight{i}"] = 1
            s[f"backend_data_directory{i}"] = str(node.pgdata)
            s[f"backend_flag{i}"] = "ALLOW_TO_FAILOVER"
            s[f"backend_application_name{i}"] = node.address
        s.update(self.extra_settings)
        return s

    def env(self) -> dict[str, str]:
        """pgpool's environment, inherited by every hook it runs."""
        return base_env(
            PG_BIN_DIR,
            {
                "PCPPASSFILE": str(self.pcppass),
                "PGPASSFILE": str(self.cluster.passfile),
                MARKER_ENV: str(self.root),
                **self.extra_env,
            },
        )

    def write_config(self) -> None:
        require_root()
        make_postgres_dir(self.root, 0o755)
        make_postgres_dir(self.run_dir, 0o755)
        make_postgres_dir(self.run_dir / "oiddir", 0o755)
        conf = "".join(f"{k} = {_conf_value(v)}\n" for k, v in self.settings().items())
        write_file(self.config_file, "# pgpool-hook sandbox\n" + conf, mode=0o644)
        md5 = hashlib.md5(self.pcp_password.encode()).hexdigest()  # what pg_md5 prints
        write_file(self.pcp_conf, f"{self.pcp_user}:{md5}\n", mode=0o600)
        write_file(
            self.pcppass,
            "".join(
                f"{h}:{self.pcp_port}:{self.pcp_user}:{self.pcp_password}\n"
                for h in (self.host, "localhost", "*")
            ),
            mode=0o600,
        )
        write_file(self.pool_passwd, "", mode=0o600)  # an empty file silences warnings

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 30) -> Pgpool:
        """Start pgpool (-n foreground, -D discard saved node status) and wait until it
        serves ``SHOW pool_nodes`` with every backend up."""
        self.write_config()
        for port in (self.port, self.pcp_port):
            if port_open(self.host, port):
                raise SandboxError(f"{self.host}:{port} is already in use (a stale pgpool?)")
        with open(self.log_file, "ab") as log:
            os.chown(self.log_file, *postgres_ids())
            self.process = popen_as_postgres(
                [PGPOOL_BIN, "-n", "-D", "-f", self.config_file, "-F", self.pcp_conf],
                env=self.env(),
                output=log,
            )
        try:
            wait_until(
                lambda: (
                    self._died() or (port_open(self.host, self.port) and port_open(self.host, self.pcp_port))
                ),
                timeout,
                message="pgpool ports",
            )
            if self._died():
                raise SandboxError(f"pgpool exited at start:\n{self.log_text()[-3000:]}")
            self.wait_for(
                lambda: (
                    len(self.pool_nodes()) == len(self.cluster.nodes)
                    and all(n["status"] == "up" for n in self.pool_nodes())
                ),
                timeout,
                message="all backends up in pgpool",
            )
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
            # pgpool writes the pid NUL-terminated, without a newline
            match = re.match(rb"\s*(\d+)", self.pid_file.read_bytes())
        except OSError:
            return None
        return int(match.group(1)) if match else None

    def is_running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def stop(self, timeout: float = 20) -> None:
        """Fast shutdown via ``pgpool -m fast stop``; SIGKILL the process group if stuck.

        Follow-primary children run in their own session (setsid); kill what is left of
        them too, so a hung hook cannot outlive the test.
        """
        pid = self.pid()
        if pid is not None and pid_alive(pid):
            run_as_postgres(
                [PGPOOL_BIN, "-f", self.config_file, "-F", self.pcp_conf, "-m", "fast", "stop"],
                env=self.env(),
                check=False,
                timeout=timeout + 5,
            )
            try:
                wait_until(lambda: not pid_alive(pid), timeout, message="pgpool to stop")
            except TimeoutError:
                for sig_target in (pid, -pid):
                    try:
                        os.kill(sig_target, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """SIGKILL every process that inherited this instance's marker environment variable
        (pgpool children, hooks still running), except PostgreSQL servers a hook started."""
        marker = f"{MARKER_ENV}={self.root}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if marker in environ and comm != "postgres":
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # ---- queries ---------------------------------------------------------------------

    def connect(self, dbname: str = "postgres", timeout: int = 5) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=dbname,
            user=SUPERUSER,
            connect_timeout=timeout,
            autocommit=True,
        )

    def pool_nodes(self) -> list[dict[str, str]]:
        """``SHOW pool_nodes`` through pgpool: node_id, hostname, port, status, pg_status,
        role, pg_role, replication_state, ... (all values as strings)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW pool_nodes")
            assert cur.description is not None
            names = [d.name for d in cur.description]
            return [dict(zip(names, (str(v) for v in row), strict=True)) for row in cur.fetchall()]

    def pcp(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a pcp tool as postgres against this instance (password from PCPPASSFILE)."""
        return run_as_postgres(
            [
                PCP_BIN_DIR / tool,
                "-h", self.host,
                "-p", str(self.pcp_port),
                "-U", self.pcp_user,
                "-w",
                *args,
            ],
            env=self.env(),
            check=False,
            timeout=timeout,
        )  # fmt: skip

    def pcp_node_info(self, node_id: int) -> dict[str, str]:
        """``pcp_node_info -v``: {'Hostname': ..., 'Status Name': 'up'|'down'|'waiting',
        'Role': 'primary'|'standby', ...}."""
        proc = self.pcp("pcp_node_info", "-v", "-n", str(node_id))
        if proc.returncode != 0:
            raise SandboxError(f"pcp_node_info -n {node_id} failed: {proc.stdout}{proc.stderr}")
        info: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip()] = value.strip()
        return info

    def pcp_recovery_node(self, node_id: int, timeout: float = 180) -> tuple[int, str]:
        """Online recovery of ``node_id``.  pcp_recovery_node exits 0 even when recovery
        fails, so callers should check the output for "Command Successful" too; the
        returned rc is forced to 1 when that text is missing."""
        proc = self.pcp("pcp_recovery_node", "-n", str(node_id), timeout=timeout)
        output = proc.stdout + proc.stderr
        rc = proc.returncode if proc.returncode != 0 or "Command Successful" in output else 1
        return rc, output

    def pcp_attach_node(self, node_id: int) -> tuple[int, str]:
        proc = self.pcp("pcp_attach_node", "-n", str(node_id))
        return proc.returncode, proc.stdout + proc.stderr

    def pcp_detach_node(self, node_id: int) -> tuple[int, str]:
        proc = self.pcp("pcp_detach_node", "-n", str(node_id))
        return proc.returncode, proc.stdout + proc.stderr

    def node_states(self) -> dict[int, tuple[str, str]]:
        """{node_id: (status, role)} from pcp (works while client connections would stall)."""
        result = {}
        for node in self.cluster.nodes:
            info = self.pcp_node_info(node.node_id)
            result[node.node_id] = (info.get("Status Name", "?"), info.get("Role", "?"))
        return result

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 60, message: str = "pgpool condition"
    ) -> T:
        """wait_until, with the pgpool log tail attached to the timeout for diagnosis."""
        try:
            return wait_until(predicate, timeout, interval=0.3, message=message)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- pgpool log tail ---\n{self.log_text()[-4000:]}") from exc

    def wait_node_status(self, node_id: int, status: str, timeout: float = 60) -> None:
        self.wait_for(
            lambda: self.pcp_node_info(node_id).get("Status Name") == status,
            timeout,
            message=f"pgpool node {node_id} status {status}",
        )

    def wait_primary(self, node_id: int, timeout: float = 60) -> None:
        self.wait_for(
            lambda: self.pcp_node_info(node_id).get("Role") == "primary",
            timeout,
            message=f"pgpool to see node {node_id} as primary",
        )


def install_recovery_scripts(node: Node, recovery_1st_stage_text: str, remote_start_text: str) -> None:
    """Place executable ``recovery_1st_stage`` and ``pgpool_remote_start`` in ``node``'s
    PGDATA (pgpool runs them from the primary's PGDATA, by these fixed names)."""
    write_file(node.pgdata / "recovery_1st_stage", recovery_1st_stage_text, mode=0o755)
    write_file(node.pgdata / "pgpool_remote_start", remote_start_text, mode=0o755)


def settle(seconds: float = 3.0) -> None:
    """Pause after a failover before starting online recovery: a recovery started within
    a second of a failover was seen to stall inside pgpool."""
    time.sleep(seconds)
