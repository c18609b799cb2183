"""The real-process sandbox itself works: replication, ssh, pgpool failover/follow/recovery.

If these fail, the engine's end-to-end tests cannot mean anything; if they pass, the
machine is ready for them.  The last test drives Pgpool-II's own sample hook scripts
(adapted at runtime from /usr/share/doc/pgpool2/examples, never stored in the repo)
through a complete primary failure, follow-primary and online recovery: it is the
reference behaviour the engine's workflows replace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.app import HookApp
from sandbox.osuser import make_postgres_dir, run_as_postgres, write_file
from sandbox.pg import Cluster, Node
from sandbox.pgpool import settle
from sandbox.sshd import Sshd
from sandbox.stack import PgpoolSandbox

SAMPLES = Path("/usr/share/doc/pgpool2/examples")

# ---- PostgreSQL --------------------------------------------------------------------------


def test_standbys_stream_from_primary_through_active_slots(pg_cluster: Cluster) -> None:
    primary, standbys = pg_cluster.nodes[0], pg_cluster.nodes[1:]
    assert not primary.is_in_recovery()
    assert all(s.is_in_recovery() for s in standbys)
    streaming = {r["application_name"]: r["state"] for r in primary.replication()}
    assert streaming == {s.address: "streaming" for s in standbys}
    slots = {s["slot_name"]: s["active"] for s in primary.slots()}
    assert slots == {"127_0_0_32": True, "127_0_0_33": True}


def test_standbys_are_configured_the_way_the_hooks_repoint_them(pg_cluster: Cluster) -> None:
    primary = pg_cluster.nodes[0]
    for standby in pg_cluster.nodes[1:]:
        recovery = standby.recovery_file.read_text()
        assert (
            f"host={primary.address} port={primary.port} user=repl application_name={standby.address}"
            in recovery
        )
        assert f"primary_slot_name = '{standby.slot_name}'" in recovery
        assert "recovery_target_timeline = 'latest'" in recovery
        assert (standby.pgdata / "standby.signal").exists()
        conf = (standby.pgdata / "postgresql.conf").read_text()
        assert f"include_if_exists = '{standby.recovery_file}'" in conf
        # no pg_basebackup -R: nothing may override the recovery file
        assert "primary_conninfo" not in (standby.pgdata / "postgresql.auto.conf").read_text()
        assert standby.scalar("SHOW listen_addresses") == standby.address
        assert standby.scalar("SHOW primary_slot_name") == standby.slot_name


def test_writes_on_the_primary_reach_every_standby(pg_cluster: Cluster) -> None:
    primary = pg_cluster.nodes[0]
    primary.query("CREATE TABLE IF NOT EXISTS sandbox_probe (v text)")
    primary.query("INSERT INTO sandbox_probe VALUES (%s)", ("hello",))
    for standby in pg_cluster.nodes[1:]:
        standby.wait_until(
            lambda s=standby: s.query("SELECT count(*) FROM sandbox_probe WHERE v = 'hello'") == [(1,)],
            10,
            "replicated row",
        )


def test_standalone_primary_survives_kill9_and_has_pgpool_recovery(pg_primary: Node) -> None:
    assert not pg_primary.is_in_recovery()
    for db in ("template1", "postgres"):
        assert pg_primary.query("SELECT 1 FROM pg_extension WHERE extname = 'pgpool_recovery'", dbname=db)
    pg_primary.kill9()
    assert not pg_primary.is_running()
    pg_primary.start()
    assert pg_primary.is_running() and pg_primary.scalar("SELECT 42") == 42


# ---- ssh ---------------------------------------------------------------------------------


@pytest.mark.parametrize("as_postgres", [True, False], ids=["as-postgres", "as-root"])
@pytest.mark.parametrize("address", ["127.0.0.11", "127.0.0.21", "127.0.0.33"])
def test_sshd_accepts_the_key_with_strict_host_checking(sshd: Sshd, address: str, as_postgres: bool) -> None:
    result = sshd.run(address, "id", "-un", as_postgres=as_postgres)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgres"


def test_ssh_rejects_a_host_missing_from_known_hosts(sshd: Sshd, sandbox_base: Path) -> None:
    empty = write_file(sandbox_base / "empty_known_hosts", "", mode=0o644)
    argv = [
        a if a != f"UserKnownHostsFile={sshd.known_hosts}" else f"UserKnownHostsFile={empty}"
        for a in sshd.ssh_argv("127.0.0.11", "true")
    ]
    result = run_as_postgres(argv, check=False)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_paramiko_runs_commands_and_sftp_as_postgres(sshd: Sshd) -> None:
    paramiko = pytest.importorskip("paramiko")
    client = paramiko.SSHClient()
    client.load_host_keys(str(sshd.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.12",
        port=sshd.port,
        username=sshd.user,
        key_filename=str(sshd.key_file),
        timeout=5,
        allow_agent=False,
        look_for_keys=False,
    )
    try:
        _, stdout, _ = client.exec_command("id -un")
        assert stdout.read().decode().strip() == "postgres"
        assert stdout.channel.recv_exit_status() == 0
        with client.open_sftp() as sftp:
            assert sftp.stat(str(sshd.authorized_keys)).st_size > 0
    finally:
        client.close()


def test_paused_sshd_makes_connections_time_out(sshd: Sshd) -> None:
    sshd.pause()
    try:
        argv = [
            a if a != "ConnectTimeout=5" else "ConnectTimeout=1" for a in sshd.ssh_argv("127.0.0.11", "true")
        ]
        result = run_as_postgres(argv, check=False, timeout=30)
        assert result.returncode == 255
        assert "timed out" in result.stderr
    finally:
        sshd.resume()
    assert sshd.run("127.0.0.11", "true").returncode == 0


# ---- the engine as pgpool runs it ---------------------------------------------------------


def test_hook_app_is_importable_by_postgres_with_dependencies(hook_app: HookApp) -> None:
    assert hook_app.wrapper.read_text().startswith("#!/bin/sh\n")
    assert f"PYTHONPATH={hook_app.app_dir} exec {hook_app.python} -m engine" in hook_app.wrapper.read_text()
    code = "import engine, yaml, jinja2, jsonschema, paramiko, psycopg; print(engine.__file__)"
    result = run_as_postgres(
        ["/usr/bin/env", f"PYTHONPATH={hook_app.app_dir}", hook_app.python, "-c", code], check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(hook_app.app_dir / "engine"))


# ---- pgpool --------------------------------------------------------------------------------


def _recorder(directory: Path, name: str) -> str:
    """A hook that stores its argv (NUL-separated) in one file per call."""
    make_postgres_dir(directory)
    script = write_file(
        directory / f"{name}.sh",
        f'#!/bin/sh\nprintf \'%s\\0\' "$@" > "{directory}/{name}.$(date +%s%N).$$"\n',
        mode=0o755,
    )
    return str(script)


def _calls(directory: Path, name: str) -> list[list[str]]:
    files = sorted(directory.glob(f"{name}.*[0-9]"))
    return [[a.decode() for a in f.read_bytes().split(b"\0")[:-1]] for f in files]


def test_pgpool_detects_a_failed_standby_and_passes_12_failover_args(
    pgpool_cluster: Callable[..., PgpoolSandbox], sandbox_base: Path
) -> None:
    rec = Path(sandbox_base / "recorder")
    sandbox = pgpool_cluster(
        failover_command=_recorder(rec, "failover") + " %d %h %p %D %m %H %M %P %r %R %N %S",
        follow_primary_command=_recorder(rec, "follow") + " %d %h %p %D %m %H %M %P %r %R",
    )
    pgpool, (n0, _, n2) = sandbox.pgpool, sandbox.nodes

    nodes = pgpool.pool_nodes()
    assert [(n["node_id"], n["hostname"], n["status"]) for n in nodes] == [
        ("0", "127.0.0.11", "up"),
        ("1", "127.0.0.12", "up"),
        ("2", "127.0.0.13", "up"),
    ]
    assert [n["role"] for n in nodes] == ["primary", "standby", "standby"]

    n2.kill9()
    pgpool.wait_node_status(2, "down", timeout=20)
    calls = pgpool.wait_for(lambda: _calls(rec, "failover"), 10, message="failover hook call")
    assert calls == [
        [
            "2",
            n2.address,
            str(n2.port),
            str(n2.pgdata),
            "0",
            n0.address,
            "0",
            "0",
            str(n0.port),
            str(n0.pgdata),
            n0.address,
            str(n0.port),
        ]
    ]
    assert _calls(rec, "follow") == []  # a standby failure never triggers follow_primary
    assert pgpool.node_states()[0] == ("up", "primary")

    n2.start()
    sandbox.cluster.wait_streaming(n2, n0)
    rc, out = pgpool.pcp_attach_node(2)
    assert rc == 0, out
    pgpool.wait_for(
        lambda: pgpool.pcp_node_info(2)["Status Name"] in ("up", "waiting"), 10, message="node 2 attached"
    )


def _adapt_sample(name: str, sandbox: PgpoolSandbox, sshd: Sshd, workdir: Path) -> str:
    """Pgpool-II's sample script with this sandbox's paths, ports and strict ssh."""
    text = (SAMPLES / f"{name}.sample").read_text()
    ssh_options = (
        f"-p {sshd.port} -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={sshd.known_hosts} -i {sshd.key_file}"
    )
    text = re.sub(r"(?m)^PGHOME=.*$", "PGHOME=/usr/lib/postgresql/15", text)
    text = re.sub(r"(?m)^SSH_OPTIONS=.*$", f'SSH_OPTIONS="{ssh_options}"', text)
    text = re.sub(r"(?m)^ARCHIVEDIR=.*$", f"ARCHIVEDIR={workdir}/archivedir", text)
    text = re.sub(r"(?m)^PGPOOL_PATH=.*$", "PGPOOL_PATH=/usr/sbin", text)
    text = re.sub(r"(?m)^PCP_PORT=.*$", f"PCP_PORT={sandbox.pcp_port}", text)
    text = re.sub(r"(?m)^restore_command = .*\n", "", text)  # scp would need -P; slots suffice
    return text.replace("/var/lib/pgsql/.pgpass", str(sandbox.cluster.passfile))


@pytest.mark.skipif(
    not (SAMPLES / "failover.sh.sample").exists(), reason="pgpool2 sample scripts not installed"
)
def test_pgpool_sample_scripts_run_a_full_failover_follow_recovery_cycle(
    pgpool_cluster: Callable[..., PgpoolSandbox], sshd: Sshd, sandbox_base: Path
) -> None:
    workdir = make_postgres_dir(sandbox_base / "samples")
    make_postgres_dir(workdir / "archivedir")
    sandbox = pgpool_cluster(start_pgpool=False)
    scripts = {}
    for name in ("failover.sh", "follow_primary.sh", "recovery_1st_stage", "pgpool_remote_start"):
        scripts[name] = _adapt_sample(name, sandbox, sshd, workdir)
        write_file(workdir / name, scripts[name], mode=0o755)
    sandbox.cluster.install_recovery_scripts(scripts["recovery_1st_stage"], scripts["pgpool_remote_start"])
    sandbox.pgpool.failover_command = f"{workdir}/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S"
    sandbox.pgpool.follow_primary_command = f"{workdir}/follow_primary.sh %d %h %p %D %m %H %M %P %r %R"
    pgpool, (n0, n1, n2) = sandbox.pgpool, sandbox.nodes
    pgpool.start()

    # primary dies: failover.sh promotes node 1, follow_primary.sh rewinds node 2 onto it
    n0.kill9()
    pgpool.wait_primary(1, timeout=30)
    assert not n1.is_in_recovery()
    pgpool.wait_for(lambda: pgpool.node_states()[2][0] in ("up", "waiting"), 40, message="node 2 re-attached")
    sandbox.cluster.wait_streaming(n2, n1)
    assert {s["slot_name"] for s in n1.slots()} >= {"127_0_0_13"}
    assert pgpool.node_states()[0][0] == "down"

    # online recovery of the old primary: recovery_1st_stage + pgpool_remote_start
    settle()
    rc, out = pgpool.pcp_recovery_node(0)
    assert rc == 0, out
    sandbox.cluster.wait_streaming(n0, n1)
    assert n0.is_in_recovery()
    states = pgpool.node_states()
    assert states[1] == ("up", "primary")
    assert states[0][0] in ("up", "waiting") and states[0][1] == "standby"
