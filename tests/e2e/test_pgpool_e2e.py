"""End to end: a real Pgpool-II 4.3 calls pgpool-hook for failover, follow-primary
and online recovery on three real PostgreSQL 15 nodes reached over a real sshd.

Every scenario asserts the cluster's state (pgpool's node status and roles,
pg_stat_replication, rows, slots) rather than a hook's exit code, because pgpool
ignores the exit code of failover and follow-primary hooks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.app import HookApp
from sandbox.pg import Node
from sandbox.pgpool import settle
from sandbox.stack import PgpoolSandbox

pytestmark = pytest.mark.e2e
RUNNER_PID: list[int] = []  # the module's resident runner (fixture resident_runner)


def wait(predicate: Any, timeout: float, message: str, interval: float = 0.3) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - a node may be restarting
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


def journal_runs(sb: PgpoolSandbox) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    path = Path(sb.state_dir) / "journal.jsonl"
    if not path.exists():
        return runs
    for line in path.read_text().splitlines():
        if line.strip():
            ev = json.loads(line)
            runs.setdefault(ev["run"], []).append(ev)
    return runs


def finished_runs(sb: PgpoolSandbox, workflow: str) -> list[dict[str, Any]]:
    """(run_started event + run_finished event) for each finished run of ``workflow``.

    Every run must have been a worker of the module's resident runner (``runner`` in the
    journal is its parent's pid, recorded by the worker itself)."""
    out = []
    for events in journal_runs(sb).values():
        start = next((e for e in events if e["event"] == "run_started"), None)
        end = next((e for e in events if e["event"] == "run_finished"), None)
        if start and end and start["workflow"] == workflow:
            assert start.get("runner") == RUNNER_PID[0], f"{workflow} run not handed to the resident runner"
            out.append({"start": start, "end": end, "events": events})
    return out


def write_through_pgpool(sb: PgpoolSandbox, value: str, timeout: float = 30) -> None:
    """Write like a client would: right after a failover pgpool restarts its children and
    drops connections, and a client reconnects."""

    def attempt() -> bool:
        with sb.pgpool.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS e2e (v text PRIMARY KEY)")
            conn.execute("INSERT INTO e2e VALUES (%s) ON CONFLICT DO NOTHING", (value,))
            conn.commit()
        return True

    wait(attempt, timeout, f"a write of {value!r} through pgpool", interval=0.5)


def has_row(node: Node, value: str) -> bool:
    try:
        return bool(node.scalar("SELECT count(*) FROM e2e WHERE v = %s", (value,)))
    except Exception:  # noqa: BLE001 - table not replayed yet
        return False


def hook_lines(sb: PgpoolSandbox, last: int = 60) -> str:
    """What the hooks logged (pgpool puts their stderr in its log, among many pcp lines)."""
    lines = [ln for ln in sb.pgpool.log_text().splitlines() if "pgpool-hook[" in ln]
    for node in sb.nodes:  # recovery hooks log to the primary's server log
        try:
            lines += [ln for ln in node.log_tail(400).splitlines() if "pgpool-hook[" in ln]
        except OSError:
            pass
    return "\n".join(lines[-last:])


def wait_attached(sb: PgpoolSandbox, node_id: int, timeout: float) -> None:
    """pgpool shows a failed-back node as "waiting" until a client connects, then "up"."""
    try:
        wait(
            lambda: sb.pgpool.pcp_node_info(node_id).get("Status Name") in ("up", "waiting"),
            timeout,
            f"pgpool to attach node {node_id}",
            interval=1.0,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- hook output ---\n{hook_lines(sb)}") from None


def streams_from(standby: Node, primary: Node) -> bool:
    rows = standby.query_dicts("SELECT status, sender_host FROM pg_stat_wal_receiver")
    return bool(rows) and rows[0]["status"] == "streaming" and rows[0]["sender_host"] == primary.address


def slot(node: Node, name: str) -> dict[str, Any] | None:
    return next((s for s in node.slots() if s["slot_name"] == name), None)


@pytest.fixture(scope="module", autouse=True)
def resident_runner(hook_app: HookApp) -> Iterator[int]:
    """These scenarios run the way the manual recommends: pgpool's hook calls are handed to
    a resident ``pgpool-hook serve`` (each scenario checks that they were)."""
    RUNNER_PID[:] = [hook_app.start_runner()]
    yield RUNNER_PID[0]
    hook_app.stop_runner()


@pytest.fixture
def cluster(pgpool_cluster: Any, request: pytest.FixtureRequest) -> Any:
    """pgpool_cluster, plus the hooks' own log lines printed when the test fails."""
    built: list[PgpoolSandbox] = []

    def make(**options: Any) -> PgpoolSandbox:
        sb = pgpool_cluster(**options)
        built.append(sb)
        return sb

    yield make
    rep = getattr(request.node, "rep_call", None)
    if built and rep is not None and rep.failed:
        print(f"\n===== hook output =====\n{hook_lines(built[-1], 200)}")


def test_standby_failure_drops_its_slot_and_keeps_the_primary(cluster: Any) -> None:
    sb: PgpoolSandbox = cluster()
    primary, _, standby = sb.nodes
    assert slot(primary, standby.slot_name) is not None
    standby.kill9()
    sb.pgpool.wait_node_status(2, "down", timeout=30)
    wait(lambda: slot(primary, standby.slot_name) is None, 30, "the failed standby's slot to be dropped")
    assert sb.pgpool.pcp_node_info(0)["Role"] == "primary"
    assert not primary.is_in_recovery()
    write_through_pgpool(sb, "after-standby-failure")
    assert has_row(primary, "after-standby-failure")
    runs = wait(lambda: finished_runs(sb, "failover"), 20, "the failover run in the journal")
    assert runs[-1]["end"]["exit_code"] == 0
    assert runs[-1]["start"]["params"]["failed_node_id"] == 2
    # the other standby keeps its slot and keeps streaming
    assert slot(primary, sb.nodes[1].slot_name)["active"]


def test_primary_failure_promotes_follows_and_online_recovery_brings_it_back(cluster: Any) -> None:
    sb: PgpoolSandbox = cluster()
    old_primary, new_primary, other = sb.nodes
    write_through_pgpool(sb, "before-failover")
    wait(
        lambda: has_row(new_primary, "before-failover") and has_row(other, "before-failover"),
        20,
        "both standbys to replay the row",
    )

    old_primary.kill9()
    sb.pgpool.wait_primary(1, timeout=60)
    assert not new_primary.is_in_recovery()
    # follow_primary re-points node 2 at node 1 and attaches it again
    wait_attached(sb, 2, timeout=90)
    wait(lambda: streams_from(other, new_primary), 30, "node 2 to stream from node 1")
    assert slot(new_primary, other.slot_name)["active"]
    assert has_row(new_primary, "before-failover") and has_row(other, "before-failover")
    write_through_pgpool(sb, "after-failover")
    wait(lambda: has_row(other, "after-failover"), 20, "node 2 to replay a write made after the failover")
    # the dead old primary was skipped by follow_primary and stays down
    assert sb.pgpool.pcp_node_info(0)["Status Name"] == "down"
    follow = {r["start"]["params"]["node_id"]: r for r in finished_runs(sb, "follow_primary")}
    assert follow[0]["end"]["status"] == "exited"
    assert follow[2]["end"]["status"] == "succeeded"

    # online recovery of the old primary as a standby of the new one
    settle()
    rc, output = sb.pgpool.pcp_recovery_node(0)
    assert rc == 0 and "Command Successful" in output, output
    wait_attached(sb, 0, timeout=60)
    wait(lambda: streams_from(old_primary, new_primary), 30, "the recovered node to stream from node 1")
    assert old_primary.is_in_recovery()
    assert slot(new_primary, old_primary.slot_name)["active"]
    assert has_row(old_primary, "after-failover")
    conf = (old_primary.pgdata / "postgresql.conf").read_text()
    assert conf.count(f"include_if_exists = '{old_primary.recovery_file}'") == 1
    assert "host=127.0.0.12" in old_primary.recovery_file.read_text()
    assert sb.pgpool.pcp_node_info(0)["Role"] == "standby"
    write_through_pgpool(sb, "after-recovery")
    assert {n: st[0] for n, st in sb.pgpool.node_states().items()} == {0: "up", 1: "up", 2: "up"}


def test_follow_primary_rewinds_a_standby_that_diverged(cluster: Any) -> None:
    sb: PgpoolSandbox = cluster()
    primary, to_promote, ahead = sb.nodes
    write_through_pgpool(sb, "common")
    wait(lambda: has_row(to_promote, "common") and has_row(ahead, "common"), 20, "replay of the common row")
    # node 1 stops receiving WAL: node 2 gets ahead of it
    with to_promote.connect() as conn:
        conn.autocommit = True
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
    wait(
        lambda: not to_promote.query_dicts("SELECT 1 FROM pg_stat_wal_receiver"),
        20,
        "node 1 to stop receiving",
    )
    with primary.connect() as conn:
        conn.autocommit = True
        conn.execute("CREATE TABLE IF NOT EXISTS e2e (v text PRIMARY KEY)")
        conn.execute("INSERT INTO e2e SELECT 'only-on-node-2-' || g FROM generate_series(1, 100) g")
    wait(lambda: has_row(ahead, "only-on-node-2-100"), 20, "node 2 to get ahead")
    assert not has_row(to_promote, "only-on-node-2-100")

    primary.kill9()
    sb.pgpool.wait_primary(1, timeout=60)
    wait_attached(sb, 2, timeout=120)
    wait(lambda: streams_from(ahead, to_promote), 30, "the rewound node to stream from node 1")
    # the rewind threw away what only node 2 had: it now matches the new primary's timeline
    assert not has_row(ahead, "only-on-node-2-100")
    assert has_row(ahead, "common")
    assert to_promote.timeline() == 2
    assert ahead.query_dicts("SELECT received_tli FROM pg_stat_wal_receiver")[0]["received_tli"] == 2
    follow = {r["start"]["params"]["node_id"]: r for r in finished_runs(sb, "follow_primary")}
    assert follow[2]["end"]["status"] == "succeeded"
    rewind = next(e for e in follow[2]["events"] if e["event"] == "step" and e["step"] == "rewind")
    assert rewind["status"] == "succeeded"
    output = rewind["result"]["stdout"] + rewind["result"]["stderr"]
    assert "servers diverged" in output and "no rewind required" not in output, output


def test_failed_online_recovery_drops_the_slot_it_created(cluster: Any) -> None:
    sb: PgpoolSandbox = cluster(config_overrides={"postgres": {"replication_user": "no_such_role"}})
    primary, _, standby = sb.nodes
    standby.stop()
    sb.pgpool.pcp_detach_node(2)
    sb.pgpool.wait_node_status(2, "down", timeout=30)
    # failover_command ran for the detached standby and dropped its slot
    wait(lambda: slot(primary, standby.slot_name) is None, 30, "the detached standby's slot to be dropped")
    settle()
    rc, output = sb.pgpool.pcp_recovery_node(2)
    assert "Command Successful" not in output
    assert slot(primary, standby.slot_name) is None
    runs = finished_runs(sb, "recovery_1st_stage")
    assert runs and runs[-1]["end"]["exit_code"] == 1
    assert runs[-1]["end"]["failed_step"] == "basebackup"
    assert "rolled-back" in primary.log_tail(400)
    assert sb.pgpool.pcp_node_info(2)["Status Name"] == "down"


def test_failed_follow_primary_rolls_back_and_leaves_the_node_down(cluster: Any) -> None:
    sb: PgpoolSandbox = cluster(
        config_overrides={"vars": {"source_server": "host=127.0.0.99 port=1 user=postgres connect_timeout=2"}}
    )
    old_primary, new_primary, other = sb.nodes
    old_primary.kill9()
    sb.pgpool.wait_primary(1, timeout=60)
    runs = wait(
        lambda: [r for r in finished_runs(sb, "follow_primary") if r["start"]["params"]["node_id"] == 2],
        120,
        "follow_primary of node 2 to finish",
    )
    end = runs[-1]["end"]
    assert end["failed_step"] == "rewind" and end["exit_code"] == 1, end
    # the slot this run created on the new primary was dropped again
    assert slot(new_primary, other.slot_name) is None
    assert sb.pgpool.pcp_node_info(2)["Status Name"] == "down"
    assert "rolled-back" in sb.pgpool.log_text()
