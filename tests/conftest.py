"""Shared fixtures: real PostgreSQL nodes, sshd, pgpool and the engine as pgpool runs it.

Everything here starts real processes (see ``sandbox/``) and therefore needs root and the
Debian packages postgresql-15, openssh-server, pgpool2 and postgresql-15-pgpool2.  Outside
CI a missing piece skips the tests that need it; with ``CI=true`` it fails them, so a
broken CI machine cannot pass by skipping.

Addresses (all loopback, all nodes on the same PostgreSQL port, like separate hosts):
    127.0.0.11-13  pgpool_cluster (fresh per test: primary node 0 + standbys 1, 2)
    127.0.0.21     pg_primary (one standalone node for the whole session)
    127.0.0.31-33  pg_cluster (primary + 2 streaming standbys, per test module)
sshd listens on all of them.  Ports can be moved with environment variables
PGPOOL_HOOK_TEST_{PG,SSH,PGPOOL,PCP}_PORT if the defaults collide with something.

Set PGPOOL_HOOK_KEEP_SANDBOX=1 to keep the session directory (logs) after the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.app import HookApp, hook_settings, write_hook_config
from sandbox.osuser import (
    PG_BIN_DIR,
    SandboxError,
    make_postgres_dir,
    pid_alive,
    processes_referencing,
    write_file,
)
from sandbox.pg import DEFAULT_ADDRESSES, PGPOOL_RECOVERY_CONTROL, Cluster, Node
from sandbox.pgpool import PCP_BIN_DIR, PCP_PASSWORD, PCP_USER, PGPOOL_BIN
from sandbox.sshd import SFTP_SERVER, SSHD_BIN, Sshd
from sandbox.stack import PgpoolSandbox

PGPOOL_ADDRESSES = DEFAULT_ADDRESSES
PRIMARY_ADDRESS = "127.0.0.21"
CLUSTER_ADDRESSES = ("127.0.0.31", "127.0.0.32", "127.0.0.33")
SSH_ADDRESSES = (*PGPOOL_ADDRESSES, PRIMARY_ADDRESS, *CLUSTER_ADDRESSES)

PG_PORT = int(os.environ.get("PGPOOL_HOOK_TEST_PG_PORT", "15432"))
SSH_PORT = int(os.environ.get("PGPOOL_HOOK_TEST_SSH_PORT", "2222"))
PGPOOL_PORT = int(os.environ.get("PGPOOL_HOOK_TEST_PGPOOL_PORT", "19999"))
PCP_PORT = int(os.environ.get("PGPOOL_HOOK_TEST_PCP_PORT", "19898"))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SESSION_PREFIX = "pgpool-hook-test-"
SESSION_PID_FILE = "session.pid"
LOCK_FILE = Path(os.environ.get("PGPOOL_HOOK_TEST_LOCK", "/tmp/pgpool-hook-tests.lock"))
KEEP = os.environ.get("PGPOOL_HOOK_KEEP_SANDBOX", "") not in ("", "0")

SANDBOX_FIXTURES = {
    "sandbox_base",
    "sshd",
    "pg_primary",
    "pg_cluster",
    "hook_app",
    "pgpool_cluster",
    "hook_config",
}

PG_NEEDS = [PG_BIN_DIR / "initdb", PG_BIN_DIR / "pg_ctl", PG_BIN_DIR / "pg_basebackup"]
SSH_NEEDS = [SSHD_BIN, SFTP_SERVER, Path("/usr/bin/ssh"), Path("/usr/bin/ssh-keygen")]
PGPOOL_NEEDS = [PGPOOL_BIN, PCP_BIN_DIR / "pcp_node_info", PGPOOL_RECOVERY_CONTROL]


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP (e.g. ``timeout``, a cancelled CI job) -> KeyboardInterrupt, which
    pytest answers by tearing fixtures down: no server outlives the session."""
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _terminate)
    config.addinivalue_line("markers", "integration: needs root and real PostgreSQL/sshd processes")
    config.addinivalue_line("markers", "e2e: drives a real pgpool through failover/follow/recovery")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the fixtures they use, so ``-m 'not integration'`` selects unit tests."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SANDBOX_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if "pgpool_cluster" in names:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item, so fixtures can dump logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def require(*paths: Path, root: bool = True) -> None:
    """Skip (locally) or fail (CI) when the machine cannot run real-process tests."""
    problems = []
    if root and os.geteuid() != 0:
        problems.append("not running as root (the sandbox runs sshd and uses runuser)")
    if shutil.which("runuser") is None:
        problems.append("runuser not found")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if problems:
        message = "; ".join(problems)
        if IN_CI:
            pytest.fail(f"CI machine is not set up for real-cluster tests: {message}", pytrace=False)
        pytest.skip(message)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(node, f"rep_{w}", None) is not None and getattr(node, f"rep_{w}").failed
        for w in ("setup", "call")
    )


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh per-user cache folder (remembered configs) per test, not the real ~/.cache.

    Hooks run as postgres through the sandbox get a clean environment and use its home.
    """
    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "pgpool-hook"


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    """`pgpool-hook run` installs SIGTERM/SIGINT/SIGHUP handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# ---- session-wide --------------------------------------------------------------------


def reap_stale_sessions(tmp_root: Path) -> None:
    """Kill what earlier, crashed sessions left running (their pytest pid is gone).

    Runs under the machine lock, so no live session is using those directories; a live
    owner pid is still respected in case a pre-lock session is around.
    """
    for directory in tmp_root.glob(f"{SESSION_PREFIX}*"):
        try:
            owner = int((directory / SESSION_PID_FILE).read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and pid_alive(owner):
            continue
        for pid in processes_referencing(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def machine_lock(announce: Callable[[str], None]) -> Iterator[None]:
    """Serialize test sessions on one machine: they share addresses and ports.

    A second session (another checkout, a colleague's run) waits here instead of failing
    with "port already in use" or, worse, talking to the other session's servers.
    """
    timeout = float(os.environ.get("PGPOOL_HOOK_TEST_LOCK_TIMEOUT", "1200"))
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {LOCK_FILE} for {timeout:.0f}s", pytrace=False)
                if not announced:
                    handle.seek(0)
                    holder = handle.read().strip()
                    announce(f"waiting for another sandbox test session ({holder}) to finish...")
                    announced = True
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def sandbox_base(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory under /tmp owned by postgres, for everything the session builds.

    Holding it also holds the machine-wide lock that serializes sandbox test sessions.
    """
    require()

    def announce(message: str) -> None:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            sys.stderr.write(f"\n{message}\n")
            sys.stderr.flush()

    with machine_lock(announce):
        tmp_root = os.environ.get("PGPOOL_HOOK_TEST_TMP", "/tmp")
        reap_stale_sessions(Path(tmp_root))
        base = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=tmp_root))
        make_postgres_dir(base, 0o755)
        (base / SESSION_PID_FILE).write_text(f"{os.getpid()}\n")
        try:
            yield base
        finally:
            if KEEP:
                print(f"\nsandbox kept in {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(sandbox_base: Path) -> Iterator[Sshd]:
    """Running OpenSSH server on every test address.

    Attributes: ``port``, ``user`` ('postgres'), ``key_file`` (ed25519 private key owned
    by postgres), ``public_key_file``, ``known_hosts`` (entries ``[addr]:port``),
    ``addresses``, ``log_file``; methods ``run(addr, *cmd, as_postgres=True)``,
    ``ssh_argv(addr, *cmd)``, ``pause()``/``resume()`` (SIGSTOP/SIGCONT the listener).
    """
    require(*SSH_NEEDS)
    server = Sshd(sandbox_base / "ssh", SSH_ADDRESSES, SSH_PORT)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hook_app(sandbox_base: Path) -> HookApp:
    """The checkout's engine/ and workflows/ copied for postgres, plus the wrapper.

    Attributes: ``wrapper`` (``<base>/bin/pgpool-hook``), ``python``, ``app_dir``,
    ``workflows_dir``, ``bin_dir``; methods ``run(*args)`` (as postgres),
    ``hook_command(config, hook)``, ``recovery_script(config, hook)``.
    """
    require()
    try:
        return HookApp(sandbox_base).install()
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def pg_primary(sandbox_base: Path) -> Iterator[Node]:
    """One standalone PostgreSQL node (a primary without standbys) at 127.0.0.21.

    A ``sandbox.pg.Node``: ``address``, ``port``, ``pgdata``, ``socket_dir``,
    ``log_file``, ``passfile``; ``query(sql, params)``, ``start()``, ``stop(mode)``,
    ``kill9()``, ``is_running()``, ``is_in_recovery()``, ``slots()``.  Tests that
    stop it must start it again.
    """
    require(*PG_NEEDS)
    cluster = Cluster(sandbox_base / "primary", [PRIMARY_ADDRESS], PG_PORT)
    try:
        cluster.build()
        yield cluster.nodes[0]
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def pg_cluster(sandbox_base: Path) -> Iterator[Cluster]:
    """Primary (node 0, 127.0.0.31) + two streaming standbys with slots, per test module.

    A ``sandbox.pg.Cluster``: ``nodes``, ``primary`` (queried), ``standbys``, ``passfile``,
    ``node(id|address)``, ``wait_streaming(standby)``, ``add_standby(node, primary)``,
    ``status()``.  Shared by the module's tests: restore what you break.
    """
    require(*PG_NEEDS)
    base = Path(tempfile.mkdtemp(prefix="cluster-", dir=sandbox_base))
    make_postgres_dir(base)
    cluster = Cluster(base, CLUSTER_ADDRESSES, PG_PORT)
    try:
        cluster.build()
        yield cluster
    finally:
        cluster.destroy()


# ---- per test ------------------------------------------------------------------------


@pytest.fixture
def hook_config(sandbox_base: Path, sshd: Sshd, hook_app: HookApp) -> Callable[..., Path]:
    """Factory: ``hook_config(passfile=..., **overrides) -> Path`` of a fresh YAML config
    for step-level tests, in its own directory with its own ``state/``.  ssh keys point
    at the session sshd, pcp at the pgpool_cluster ports; ``passfile`` defaults to a
    fresh valid pgpass (auth is trust anyway).  Overrides deep-merge; ``None`` deletes
    a key."""
    from sandbox.app import deep_merge

    def make(passfile: Path | None = None, **overrides: Any) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="config-", dir=sandbox_base))
        make_postgres_dir(directory)
        # valid files behind every path the config names (trust auth: contents are moot)
        write_file(directory / "pgpass", "*:*:*:repl:repl\n*:*:*:postgres:postgres\n", mode=0o600)
        write_file(directory / "pcppass", f"*:*:{PCP_USER}:{PCP_PASSWORD}\n", mode=0o600)
        settings = hook_settings(
            workflows_dir=hook_app.workflows_dir,
            state_dir=directory / "state",
            passfile=passfile or directory / "pgpass",
            ssh_port=sshd.port,
            ssh_key_file=sshd.key_file,
            known_hosts=sshd.known_hosts,
            pcp_port=PCP_PORT,
            pcppass=directory / "pcppass",
        )
        return write_hook_config(directory / "pgpool-hook.yaml", **deep_merge(settings, overrides))

    return make


@pytest.fixture
def pgpool_cluster(
    request: pytest.FixtureRequest, sandbox_base: Path, sshd: Sshd, hook_app: HookApp
) -> Iterator[Callable[..., PgpoolSandbox]]:
    """Factory for end-to-end scenarios: ``pgpool_cluster(**options) -> PgpoolSandbox``.

    Builds a fresh primary + 2 standbys (127.0.0.11-13), writes the hook config and the
    recovery scripts, and starts pgpool with the engine as hooks (or with the commands
    given).  Options: ``failover_command``, ``follow_primary_command``,
    ``recovery_scripts=(first_stage_text, remote_start_text)``, ``config_overrides``
    (dict deep-merged into the hook config), ``pgpool_settings`` (pgpool.conf overrides),
    ``start_pgpool`` (default True).

    The result has ``cluster`` (``sandbox.pg.Cluster``), ``nodes``, ``pgpool``
    (``sandbox.pgpool.Pgpool``: ``pool_nodes()``, ``pcp_node_info(n)``, ``node_states()``,
    ``pcp_recovery_node(n)``, ``pcp_attach_node(n)``, ``wait_node_status(n, s)``,
    ``wait_primary(n)``, ``wait_for(pred)``, ``log_text()``), ``config_path``,
    ``state_dir``, ``write_config(**overrides)``, ``base``.  Everything is destroyed after
    the test; on failure the pgpool and server log tails are printed.  One at a time:
    calling the factory again destroys the previous sandbox first.
    """
    require(*PG_NEEDS, *PGPOOL_NEEDS)
    built: list[PgpoolSandbox] = []

    def make(*, start_pgpool: bool = True, **options: Any) -> PgpoolSandbox:
        while built:
            built.pop().destroy()
        base = Path(tempfile.mkdtemp(prefix="pgpool-", dir=sandbox_base))
        sandbox = PgpoolSandbox(
            base,
            sshd,
            hook_app,
            addresses=PGPOOL_ADDRESSES,
            pg_port=PG_PORT,
            pgpool_port=PGPOOL_PORT,
            pcp_port=PCP_PORT,
            **options,
        )
        built.append(sandbox)
        sandbox.build(start_pgpool=start_pgpool)
        return sandbox

    yield make

    for sandbox in built:
        if _test_failed(request):
            print(f"\n===== pgpool log tail ({sandbox.pgpool.log_file}) =====")
            print(sandbox.pgpool.log_text()[-6000:])
            for node in sandbox.nodes:
                print(f"===== {node} server log tail =====\n{node.log_tail(25)}")
        sandbox.destroy(remove=not KEEP)
