"""PostgreSQL 15 nodes and a primary + standbys streaming-replication cluster.

Each node listens on its own loopback address (127.0.0.11, .12, ... - all of 127.0.0.0/8
is loopback on Linux) and the same port, as separate hosts would in production.  That
keeps the hook's rule "replication slot name = host name with '-' and '.' turned into
'_'" collision-free, and lets ``pg_rewind``/``pg_basebackup`` copy ``postgresql.conf``
between nodes without a wrong ``port`` sneaking in.

Standbys are built exactly the way the hooks re-point nodes (``myrecovery.conf`` +
``include_if_exists`` + ``standby.signal``), never with ``pg_basebackup -R``: ``-R`` puts
``primary_conninfo`` into ``postgresql.auto.conf``, which silently overrides the recovery
file that follow_primary rewrites.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from sandbox.osuser import (
    PG_BIN_DIR,
    SandboxError,
    base_env,
    check_traversable,
    children_of,
    make_postgres_dir,
    pid_alive,
    require_root,
    run_as_postgres,
    wait_until,
    write_file,
)

DEFAULT_ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
DEFAULT_PORT = 15432
REPLICATION_USER = "repl"
SUPERUSER = "postgres"
RECOVERY_FILE_NAME = "myrecovery.conf"
PGPOOL_RECOVERY_CONTROL = Path("/usr/share/postgresql/15/extension/pgpool_recovery.control")

PG_HBA = """\
# sandbox: trust everything on loopback, including replication
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.0/8   trust
host    replication  all   127.0.0.0/8   trust
"""


def slot_name_for(host: str) -> str:
    """The hooks' slot-name rule: host with '-' and '.' turned into '_', lower-cased."""
    return re.sub(r"[-.]", "_", host).lower()


def set_conf(conf_file: Path, settings: dict[str, str]) -> None:
    """Set ``key = value`` lines in a postgresql.conf: drop earlier assignments, append new.

    Values are written verbatim (quote strings yourself).  Removing old assignments keeps
    the file readable after several rewrites (pg_basebackup/pg_rewind copy it around).
    """
    keys = {k.lower() for k in settings}
    pattern = re.compile(r"^\s*([A-Za-z_.]+)\s*=?")
    kept = []
    for line in conf_file.read_text().splitlines():
        m = pattern.match(line)
        if m and m.group(1).lower() in keys and not line.lstrip().startswith("#"):
            continue
        kept.append(line)
    kept.extend(f"{k} = {v}" for k, v in settings.items())
    conf_file.write_text("\n".join(kept) + "\n")


@dataclass
class Node:
    """One PostgreSQL server: its address, port and files, plus control and query helpers.

    ``root`` is the node's directory; inside it live ``data/`` (PGDATA), ``socket/`` (its
    unix socket directory) and ``postgres.log`` (server log, via ``pg_ctl -l``).
    """

    node_id: int
    address: str
    port: int
    root: Path
    bin_dir: Path = PG_BIN_DIR
    passfile: Path | None = None
    connect_timeout: int = 3

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def name(self) -> str:
        return f"node{self.node_id}"

    @property
    def slot_name(self) -> str:
        """Slot name the primary holds for this node when it is a standby."""
        return slot_name_for(self.address)

    @property
    def recovery_file(self) -> Path:
        return self.pgdata / RECOVERY_FILE_NAME

    def conninfo(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host={self.address} port={self.port} user={user} dbname={dbname}"

    def __str__(self) -> str:
        return f"{self.name}({self.address}:{self.port})"

    # ---- process control -------------------------------------------------------------

    def pg_ctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        proc = run_as_postgres(
            [self.bin_dir / "pg_ctl", "-D", self.pgdata, *args],
            env=base_env(self.bin_dir),
            check=check,
            timeout=timeout,
        )
        return proc.stdout + proc.stderr

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        """True if the postmaster process exists and is not a zombie."""
        pid = self.postmaster_pid()
        return pid is not None and pid_alive(pid)

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections."""
        self._wait_stale_pid_gone()
        try:
            self.pg_ctl(
                "-l", str(self.log_file), "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10
            )
        except SandboxError as exc:
            raise SandboxError(
                f"{self}: start failed\n{exc}\n--- server log tail ---\n{self.log_tail()}"
            ) from exc

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server (``smart``/``fast``/``immediate``); no-op if not running."""
        if not self.is_running():
            return
        self.pg_ctl("-m", mode, "-w", "-t", str(int(timeout)), "stop", check=False, timeout=timeout + 10)
        wait_until(lambda: not self.is_running(), timeout, message=f"{self} to stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill9(self, timeout: float = 15) -> None:
        """Simulate a crash: SIGKILL the postmaster and its children, wait until gone.

        The children are killed too, as when a machine dies; otherwise orphaned backends
        keep the old shared memory attached and a restart has to wait for them.
        """
        pid = self.postmaster_pid()
        if pid is None or not pid_alive(pid):
            return
        victims = [pid, *children_of(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(
            lambda: not any(pid_alive(v) for v in victims),
            timeout,
            message=f"{self} processes to die after SIGKILL",
        )

    def _wait_stale_pid_gone(self, timeout: float = 15) -> None:
        """A SIGKILLed postmaster may linger as a zombie; its PID still "exists" for
        PostgreSQL's lock-file check, which would refuse to start.  Wait it out."""
        pid = self.postmaster_pid()
        if pid is None or pid_alive(pid):
            return

        def gone() -> bool:
            return not Path(f"/proc/{pid}").exists()

        try:
            wait_until(gone, timeout, message=f"zombie postmaster {pid} to be reaped")
        except TimeoutError:
            pass  # PostgreSQL may still cope (pid reused by nothing); let pg_ctl decide

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # ---- SQL -------------------------------------------------------------------------

    def connect(self, dbname: str = "postgres", user: str = SUPERUSER) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.address,
            port=self.port,
            dbname=dbname,
            user=user,
            connect_timeout=self.connect_timeout,
            autocommit=True,
        )

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None, *, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; return its rows ([] if none)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def query_dicts(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None, *, dbname: str = "postgres"
    ) -> list[dict[str, Any]]:
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            if not cur.description:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def accepts_connections(self) -> bool:
        try:
            self.query("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def is_in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def timeline(self) -> int:
        return int(self.scalar("SELECT timeline_id FROM pg_control_checkpoint()"))

    def slots(self) -> list[dict[str, Any]]:
        """Replication slots on this node (name, type, active, restart_lsn)."""
        return self.query_dicts(
            "SELECT slot_name, slot_type, active, restart_lsn::text AS restart_lsn "
            "FROM pg_replication_slots ORDER BY slot_name"
        )

    def replication(self) -> list[dict[str, Any]]:
        """pg_stat_replication on this node (who streams from it)."""
        return self.query_dicts(
            "SELECT application_name, client_addr::text AS client_addr, state, sync_state, "
            "replay_lsn::text AS replay_lsn FROM pg_stat_replication ORDER BY application_name"
        )

    def wait_until(self, predicate: Any, timeout: float = 30, message: str = "condition") -> Any:
        return wait_until(predicate, timeout, message=f"{self}: {message}")

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(self.accepts_connections, timeout, message=f"{self} to accept connections")

    # ---- configuration as the hooks do it --------------------------------------------

    def set_conf(self, **settings: str) -> None:
        set_conf(self.pgdata / "postgresql.conf", settings)

    @property
    def node_conf(self) -> Path:
        """Per-node settings file *outside* PGDATA (``<root>/node.conf``)."""
        return self.root / "node.conf"

    def set_local_settings(self) -> None:
        """Give the node its own address, port and socket directory.

        They live in ``<root>/node.conf``, outside PGDATA, included from postgresql.conf by
        the *relative* path ``../node.conf``.  pg_basebackup and pg_rewind copy
        postgresql.conf from another node; the relative include then resolves to the
        destination's own file, as host-specific settings would on separate machines.
        Without this, a node rebuilt by a hook would try to listen on its source's address.
        """
        write_file(
            self.node_conf,
            f"# settings of {self.name}; kept outside PGDATA so that copies of PGDATA do not carry them\n"
            f"listen_addresses = '{self.address}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n",
            mode=0o644,
        )
        conf = self.pgdata / "postgresql.conf"
        include = "include = '../node.conf'"
        lines = conf.read_text().splitlines()
        if include not in (ln.strip() for ln in lines):
            conf.write_text("\n".join([*lines, include]) + "\n")

    def write_recovery_config(self, primary: Node, slot_name: str | None = None) -> None:
        """Make this node a standby of ``primary`` the way follow_primary does it."""
        passfile = f" passfile={self.passfile}" if self.passfile else ""
        slot = slot_name or self.slot_name
        write_file(
            self.recovery_file,
            f"primary_conninfo = 'host={primary.address} port={primary.port} user={REPLICATION_USER} "
            f"application_name={self.address}{passfile}'\n"
            f"recovery_target_timeline = 'latest'\n"
            f"primary_slot_name = '{slot}'\n",
            mode=0o600,
        )
        conf = self.pgdata / "postgresql.conf"
        include = f"include_if_exists = '{self.recovery_file}'"
        lines = [ln for ln in conf.read_text().splitlines() if ln.strip() != include]
        conf.write_text("\n".join([*lines, include]) + "\n")
        write_file(self.pgdata / "standby.signal", "", mode=0o600)


@dataclass
class Cluster:
    """Primary + standbys under ``base``; node 0 is the initial primary.

    ``base`` must be reachable by ``postgres`` (``/tmp/...`` is, ``/root/...`` is not).
    ``base/pgpass`` is a 0600 passfile owned by ``postgres`` that ``primary_conninfo`` and
    the hooks can name (authentication is trust, so it only has to exist and be valid).
    """

    base: Path
    addresses: Sequence[str] = DEFAULT_ADDRESSES
    port: int = DEFAULT_PORT
    bin_dir: Path = PG_BIN_DIR
    nodes: list[Node] = field(init=False)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.nodes = [
            Node(i, addr, self.port, self.base / "pg" / f"node{i}", self.bin_dir, self.passfile)
            for i, addr in enumerate(self.addresses)
        ]

    @property
    def passfile(self) -> Path:
        return self.base / "pgpass"

    @property
    def primary(self) -> Node:
        """The node currently not in recovery (queried), else node 0."""
        for node in self.nodes:
            try:
                if node.is_running() and not node.is_in_recovery():
                    return node
            except psycopg.Error:
                continue
        return self.nodes[0]

    @property
    def standbys(self) -> list[Node]:
        primary = self.primary
        return [n for n in self.nodes if n is not primary]

    def node(self, ident: int | str) -> Node:
        for node in self.nodes:
            if ident in (node.node_id, node.address, node.name):
                return node
        raise KeyError(ident)

    # ---- building --------------------------------------------------------------------

    def build(self, timeout: float = 60) -> Cluster:
        """initdb + start the primary, clone and start every standby, wait for streaming."""
        require_root()
        check_traversable(self.base)
        make_postgres_dir(self.base)
        make_postgres_dir(self.base / "pg")
        write_file(
            self.passfile,
            f"*:*:*:{REPLICATION_USER}:{REPLICATION_USER}\n*:*:*:{SUPERUSER}:{SUPERUSER}\n",
            mode=0o600,
        )
        primary = self.nodes[0]
        self.init_primary(primary)
        for standby in self.nodes[1:]:
            self.add_standby(standby, primary)
        for standby in self.nodes[1:]:
            self.wait_streaming(standby, primary, timeout)
        return self

    def init_primary(self, node: Node) -> None:
        make_postgres_dir(node.root, 0o700)
        make_postgres_dir(node.socket_dir, 0o700)
        run_as_postgres(
            [
                node.bin_dir / "initdb",
                "-D", node.pgdata,
                "-A", "trust",
                "-U", SUPERUSER,
                "--data-checksums",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            env=base_env(node.bin_dir),
        )  # fmt: skip
        write_file(node.pgdata / "pg_hba.conf", PG_HBA, mode=0o600)
        node.set_conf(
            wal_level="replica",
            hot_standby="on",
            max_wal_senders="10",
            max_replication_slots="10",
            wal_keep_size="'128MB'",
            max_wal_size="'256MB'",
            wal_log_hints="on",
            wal_retrieve_retry_interval="'1s'",
            logging_collector="off",
            log_line_prefix="'%m [%p] %q%a@%d '",
            log_connections="off",
            shared_buffers="'32MB'",
            max_connections="60",
            fsync="off",  # test speed; a node "crash" here is a process kill, not power loss
        )
        node.set_local_settings()
        node.start()
        node.query(f"CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN PASSWORD '{REPLICATION_USER}'")
        node.query("CREATE ROLE pgpool LOGIN PASSWORD 'pgpool' IN ROLE pg_monitor")
        if PGPOOL_RECOVERY_CONTROL.exists():
            # pgpool 4.3 calls pgpool_recovery()/pgpool_remote_start() in template1; create it
            # before cloning so that every node (any may become primary) has it.
            for db in ("template1", "postgres"):
                node.query("CREATE EXTENSION IF NOT EXISTS pgpool_recovery", dbname=db)

    def add_standby(self, node: Node, primary: Node, *, start: bool = True) -> None:
        """Clone ``node`` from ``primary`` with a physical slot, hooks-style recovery config."""
        if node.pgdata.exists():
            node.stop("immediate")
            shutil.rmtree(node.pgdata)
        make_postgres_dir(node.root, 0o700)
        make_postgres_dir(node.socket_dir, 0o700)
        self.create_slot(primary, node.slot_name)
        run_as_postgres(
            [
                node.bin_dir / "pg_basebackup",
                "-h", primary.address,
                "-p", str(primary.port),
                "-U", REPLICATION_USER,
                "-D", node.pgdata,
                "-X", "stream",
                "-c", "fast",
                "--no-sync",
            ],
            env=base_env(node.bin_dir),
        )  # fmt: skip
        node.set_local_settings()
        node.write_recovery_config(primary)
        if start:
            node.start()

    @staticmethod
    def create_slot(on: Node, name: str) -> None:
        on.query(
            "SELECT pg_create_physical_replication_slot(%s) "
            "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
            (name, name),
        )

    def install_recovery_scripts(
        self,
        recovery_1st_stage: str,
        pgpool_remote_start: str,
        nodes: Iterable[Node] | None = None,
    ) -> None:
        """Place ``recovery_1st_stage`` and ``pgpool_remote_start`` (executable) in PGDATA.

        pgpool runs them from the *primary's* PGDATA by fixed name; they go to every node
        because any node may become primary (pg_basebackup/pg_rewind copy them anyway).
        """
        for node in nodes if nodes is not None else self.nodes:
            write_file(node.pgdata / "recovery_1st_stage", recovery_1st_stage, mode=0o755)
            write_file(node.pgdata / "pgpool_remote_start", pgpool_remote_start, mode=0o755)

    # ---- waiting / inspecting --------------------------------------------------------

    def wait_streaming(self, standby: Node, primary: Node | None = None, timeout: float = 30) -> None:
        """Wait until ``primary``'s pg_stat_replication shows ``standby`` streaming."""
        source = primary or self.primary

        def streaming() -> bool:
            rows = source.query(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                (standby.address,),
            )
            return bool(rows)

        try:
            wait_until(streaming, timeout, message=f"{standby} to stream from {source}")
        except TimeoutError as exc:
            raise SandboxError(f"{exc}\n--- {standby} log tail ---\n{standby.log_tail()}") from exc

    def status(self) -> list[dict[str, Any]]:
        """One line of facts per node, for the CLI and for test failure messages."""
        result = []
        for node in self.nodes:
            info: dict[str, Any] = {"node": node.name, "address": node.address, "port": node.port}
            info["running"] = node.is_running()
            if info["running"]:
                try:
                    info["role"] = "standby" if node.is_in_recovery() else "primary"
                except psycopg.Error as exc:
                    info["role"] = f"unreachable ({exc.__class__.__name__})"
            result.append(info)
        return result

    # ---- teardown --------------------------------------------------------------------

    def stop_all(self, mode: str = "immediate") -> None:
        for node in self.nodes:
            try:
                node.stop(mode)
            except (SandboxError, TimeoutError):
                node.kill9()

    def destroy(self, remove: bool = True) -> None:
        """Stop every node (immediate) and remove the cluster's directories."""
        self.stop_all("immediate")
        if remove:
            shutil.rmtree(self.base / "pg", ignore_errors=True)
            self.passfile.unlink(missing_ok=True)
