"""Faults while a hook runs, against the real sandbox services.

Each test starts the real runner (``python -m engine run``) as pgpool would, breaks
something — sshd, PostgreSQL, a host that never answers, a hanging remote command, a
signal, ``kill -9``, a second run, a crash in the middle of a file write — and then
checks the exit code, the log, the journal and the state left behind: replication
slots on the server, files, running servers, leftover processes, temporary files.

Workflows here use short timeouts and deadlines so the whole file runs in a couple of
minutes; the shipped workflows use the same mechanisms with longer ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faulttools import (
    DROP_SLOT,
    NODE_HOST,
    PARAMS,
    REAPER_MARK,
    REPO,
    Scenario,
    attempts,
    create_slot_step,
    journal_runs,
    new_processes_left,
    new_slot,
    of,
    one,
    processes_matching,
    remote_shells,
    remote_shells_left,
    slot_names,
    ssh_settings,
    temp_files,
    wait_for,
)
from proctools import unique_sleep, wait_no_process

from engine.transport.ssh import STALE_TEMP_AGE
from sandbox.osuser import children_of, chown_postgres, make_postgres_dir, pid_alive


@pytest.fixture
def remote_dir(sandbox_base: Path) -> Path:
    """A fresh folder owned by the ssh login user (postgres); the tests (root) read it directly."""
    path = Path(tempfile.mkdtemp(prefix="fault-", dir=sandbox_base))
    make_postgres_dir(path, 0o755)
    return path


@pytest.fixture
def scenario(tmp_path: Path, sshd: Any, pg_primary: Any, remote_dir: Path) -> Iterator[Any]:
    """Factory: ``scenario(workflow_dict, **config) -> Scenario`` on pg_primary's node."""
    made: list[Scenario] = []
    slots: list[str] = []

    def make(workflow: dict[str, Any], name: str = "fault", **config: Any) -> Scenario:
        settings: dict[str, Any] = {
            "postgres": {"passfile": str(pg_primary.passfile), "connect_timeout": 2},
            "ssh": ssh_settings(sshd),
            "lock_timeout": 20,
        }
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        sc = Scenario(tmp_path / f"{name}-{len(made)}", workflow, settings, name=name)
        made.append(sc)
        return sc

    make.slots = slots  # type: ignore[attr-defined]
    yield make
    for sc in made:
        sc.cleanup()
    if not sshd.is_running():
        sshd.stop()
        sshd.start()
    if not pg_primary.is_running():
        pg_primary.start()
    for slot in slots:
        if slot in slot_names(pg_primary):
            pg_primary.query("SELECT pg_drop_replication_slot(%s)", [slot])


def args(pg_primary: Any, remote_dir: Path, slot: str, *extra: Any) -> list[Any]:
    return [NODE_HOST, pg_primary.port, remote_dir, slot, *extra]


def assert_rolled_back(
    result: Any, events: list[dict[str, Any]], failed_step: str, undone: list[str]
) -> None:
    """Exit 1, a rollback of ``undone`` (newest first) and a run_finished that says so."""
    assert result.rc == 1, result.log
    assert one(events, "rollback")["steps"] == undone
    end = one(events, "run_finished")
    assert (end["status"], end["exit_code"], end["failed_step"]) == ("rolled-back", 1, failed_step), end
    assert result.lines("outcome=rollback", f"undoing {len(undone)} step(s)"), result.log
    assert result.lines("outcome=finished", "rolled-back exit=1"), result.log


# ---- sshd down -------------------------------------------------------------------------


def ssh_after_slot(**ssh_step: Any) -> dict[str, Any]:
    """create_slot (undo: drop it), touch a marker (reverted), then an ssh step with retries."""
    return {
        "params": PARAMS,
        "deadline": 30,
        "steps": [
            create_slot_step(),
            {"id": "marker", "file": {"path": "{{ dir }}/marker", "state": "touch"}, "timeout": 5},
            *ssh_step.pop("before", []),
            {
                "id": "remote",
                "ssh": {"host": "{{ host }}", "command": "echo reached"},
                "retry": {"attempts": 3, "delay": 0.2},
                "timeout": 5,
                **ssh_step,
            },
        ],
        "handlers": [DROP_SLOT],
    }


def test_sshd_stopped_before_the_run(scenario: Any, sshd: Any, pg_primary: Any, remote_dir: Path) -> None:
    slot = new_slot()
    scenario.slots.append(slot)
    sc = scenario(ssh_after_slot())
    sshd.stop()
    try:
        result = sc.run(*args(pg_primary, remote_dir, slot))
    finally:
        sshd.start()
    events = sc.last_run()
    tries = attempts(events, "remote")
    assert [t["outcome"] for t in tries] == ["failed"] * 3, tries
    assert all(t["message"] == f"ssh postgres@{NODE_HOST}:{sshd.port}: connection refused" for t in tries)
    assert all(t["duration"] < 1 for t in tries), tries  # refused: no waiting for a timeout
    assert_rolled_back(result, events, "remote", ["marker", "create_slot"])
    assert result.lines("step=remote attempt=3 outcome=failed", "connection refused"), result.log
    assert slot not in slot_names(pg_primary)  # the undo dropped it on the server
    assert not (remote_dir / "marker").exists()  # the touched file is gone again
    assert result.elapsed < 10


def test_sshd_dies_between_two_ssh_steps(scenario: Any, sshd: Any, pg_primary: Any, remote_dir: Path) -> None:
    """The first ssh step connects; a local step then kills sshd and its sessions (a host's sshd
    dying); the next ssh step cannot reuse the dead connection nor open a new one."""
    slot = new_slot()
    scenario.slots.append(slot)
    first = {"id": "first", "ssh": {"host": "{{ host }}", "command": "echo connected"}, "timeout": 5}
    kill = {
        "id": "kill_sshd",
        "local": {"command": ["sh", "-c", 'pkill -TERM -P "$1"; kill -TERM "$1"', "sh", "{{ sshd_pid }}"]},
        "timeout": 5,
    }
    workflow = ssh_after_slot(before=[first, kill])
    workflow["params"] = [*PARAMS, "sshd_pid"]
    sc = scenario(workflow)
    pid = sshd.pid()
    try:
        result = sc.run(*args(pg_primary, remote_dir, slot, pid))
        assert not pid_alive(pid)
    finally:
        sshd.stop()
        sshd.start()
    events = sc.last_run()
    assert one(events, "step", step="first")["status"] == "succeeded"
    tries = attempts(events, "remote")
    assert [t["outcome"] for t in tries] == ["failed"] * 3, tries
    # whether the dead connection is noticed at once or when the command cannot start,
    # the retries open a new connection and are refused
    assert tries[-1]["message"] == f"ssh postgres@{NODE_HOST}:{sshd.port}: connection refused", tries
    assert all(t["duration"] < 3 for t in tries), tries
    assert_rolled_back(result, events, "remote", ["marker", "create_slot"])
    assert slot not in slot_names(pg_primary)
    assert not (remote_dir / "marker").exists()
    assert result.elapsed < 10


FREEZE = 'freeze() { for c in $(pgrep -P "$1"); do freeze "$c"; done; kill -STOP "$1"; }; freeze "$1"'


def thaw(pid: int) -> None:
    for child in children_of(pid):
        thaw(child)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("kind", ["ssh", "template"])
def test_node_freezing_between_two_steps_ends_each_attempt_at_its_timeout(
    scenario: Any, sshd: Any, pg_primary: Any, remote_dir: Path, kind: str
) -> None:
    """The first ssh step connects; a local step then freezes sshd and every session process
    (SIGSTOP: a hung node, a network partition): the pooled connection is still open but dead,
    and new connections are accepted by the kernel and never answered."""
    slot = new_slot()
    scenario.slots.append(slot)
    first = {"id": "first", "ssh": {"host": "{{ host }}", "command": "echo connected"}, "timeout": 5}
    freeze = {
        "id": "freeze",
        "local": {"command": ["sh", "-c", FREEZE, "sh", "{{ sshd_pid }}"]},
        "timeout": 5,
    }
    body: dict[str, Any] = (
        {"ssh": {"host": "{{ host }}", "command": "echo reached"}}
        if kind == "ssh"
        else {"template": {"host": "{{ host }}", "dest": "{{ dir }}/frozen.conf", "content": "x"}}
    )
    sc = scenario(
        {
            "params": [*PARAMS, "sshd_pid"],
            "deadline": 30,
            "steps": [
                first,
                create_slot_step(),
                freeze,
                {"id": "remote", **body, "retry": {"attempts": 2, "delay": 0.1}, "timeout": 2},
            ],
            "handlers": [DROP_SLOT],
        },
        ssh={"connect_timeout": 1.5},
    )
    pid = sshd.pid()
    try:
        result = sc.run(*args(pg_primary, remote_dir, slot, pid))
    finally:
        thaw(pid)
        sshd.stop()
        sshd.start()
    events = sc.last_run()
    tries = attempts(events, "remote")
    assert [t["outcome"] for t in tries] == ["failed"] * 2, tries
    assert all(t["duration"] < 2.5 for t in tries), [(t["duration"], t["message"]) for t in tries]
    assert_rolled_back(result, events, "remote", ["create_slot"])
    assert slot not in slot_names(pg_primary)
    assert result.elapsed < 12


# ---- PostgreSQL down -------------------------------------------------------------------


def test_postgres_down_fails_fast_with_retries(scenario: Any, pg_primary: Any, remote_dir: Path) -> None:
    sc = scenario({
        "params": PARAMS,
        "deadline": 30,
        "steps": [
            {"id": "marker", "file": {"path": "{{ dir }}/marker", "state": "touch"}, "timeout": 5},
            {
                "id": "checkpoint",
                "sql": {"host": "{{ host }}", "port": "{{ pg_port }}", "statement": "CHECKPOINT"},
                "retry": {"attempts": 3, "delay": 0.2},
                "timeout": 5,
            },
        ],
    })  # fmt: skip
    pg_primary.stop()
    try:
        result = sc.run(*args(pg_primary, remote_dir, "unused"))
    finally:
        pg_primary.start()
    events = sc.last_run()
    tries = attempts(events, "checkpoint")
    assert [t["outcome"] for t in tries] == ["failed"] * 3, tries
    assert all("Connection refused" in t["message"] for t in tries), tries
    assert all(t["duration"] < 1 for t in tries), tries
    assert_rolled_back(result, events, "checkpoint", ["marker"])
    assert result.lines("step=checkpoint attempt=3 outcome=failed", "Connection refused"), result.log
    assert not (remote_dir / "marker").exists()
    assert result.elapsed < 10


def test_postgres_dying_mid_run_makes_an_incomplete_rollback_that_says_so(
    scenario: Any, pg_primary: Any, remote_dir: Path
) -> None:
    """The slot is created, then the server dies (immediate stop from a local step): the next sql
    step fails, and the undo that would drop the slot cannot reach the server either."""
    slot = new_slot()
    scenario.slots.append(slot)
    stop = [str(pg_primary.bin_dir / "pg_ctl"), "-D", str(pg_primary.pgdata), "-m", "immediate", "-w", "stop"]
    sc = scenario({
        "params": PARAMS,
        "deadline": 30,
        "steps": [
            create_slot_step(),
            {"id": "crash", "local": {"command": ["runuser", "-u", "postgres", "--", *stop]}, "timeout": 20},
            {
                "id": "checkpoint",
                "sql": {"host": "{{ host }}", "port": "{{ pg_port }}", "statement": "CHECKPOINT"},
                "retry": {"attempts": 2, "delay": 0.2},
                "timeout": 5,
            },
        ],
        "handlers": [DROP_SLOT],
    })  # fmt: skip
    try:
        result = sc.run(*args(pg_primary, remote_dir, slot))
        assert not pg_primary.is_running()
    finally:
        pg_primary.start()
    assert result.rc == 3, result.log
    events = sc.last_run()
    assert [t["outcome"] for t in attempts(events, "checkpoint")] == ["failed"] * 2
    assert [t["outcome"] for t in of(events, "attempt", step="drop_slot", phase="undo")] == ["failed"] * 2
    end = one(events, "run_finished")
    assert (end["status"], end["exit_code"]) == ("rollback-incomplete", 3), end
    assert result.lines("step=drop_slot", "outcome=undo-failed"), result.log
    assert result.lines("outcome=finished", "rollback INCOMPLETE"), result.log
    assert slot in slot_names(pg_primary)  # left for the operator, who was told; dropped by the fixture


# ---- a host that accepts the connection and never answers ------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on the node's address that accepts TCP connections (kernel backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind((NODE_HOST, 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("kind", ["ssh", "sql"])
def test_silent_host_each_attempt_ends_at_its_timeout_and_the_run_at_its_deadline(
    scenario: Any, pg_primary: Any, remote_dir: Path, silent_port: int, kind: str
) -> None:
    if kind == "ssh":
        body = {"ssh": {"host": "{{ host }}", "port": "{{ silent }}", "command": "true"}}
        per_attempt = 1.0  # ssh.connect_timeout (the banner never comes)
    else:
        body = {"sql": {"host": "{{ host }}", "port": "{{ silent }}", "statement": "SELECT 1"}}
        per_attempt = 2.0  # postgres.connect_timeout (libpq's minimum is 2s)
    deadline = 5
    sc = scenario(
        {
            "params": [*PARAMS, "silent"],
            "deadline": deadline,
            "steps": [
                {"id": "marker", "file": {"path": "{{ dir }}/marker", "state": "touch"}, "timeout": 5},
                {"id": "silent", **body, "retry": {"attempts": 20, "delay": 0.1}, "timeout": 3},
            ],
        },
        ssh={"connect_timeout": 1},
    )
    result = sc.run(*args(pg_primary, remote_dir, "unused", silent_port))
    events = sc.last_run()
    tries = attempts(events, "silent")
    assert 2 <= len(tries) < 20, tries  # retried, and stopped by the deadline, not by the attempt count
    assert all(t["outcome"] == "failed" for t in tries), tries
    assert all(t["duration"] < per_attempt + 0.5 for t in tries), tries
    assert all(t["duration"] > per_attempt - 0.3 for t in tries[:-1]), tries  # it really waited
    if kind == "ssh":
        # each attempt waits the connect timeout, the last one only what is left before the deadline
        assert all("did not speak SSH within 1s" in t["message"] for t in tries[:-1]), tries
        assert "did not speak SSH within" in tries[-1]["message"], tries
    else:
        assert all("timeout expired" in t["message"] for t in tries), tries
    assert_rolled_back(result, events, "silent", ["marker"])
    assert not (remote_dir / "marker").exists()
    # the run (from process start to exit, rollback included) ends about at its deadline
    assert result.elapsed < deadline + per_attempt + 1.5, result.elapsed
    assert one(events, "run_finished")["duration"] < deadline + per_attempt + 0.5


@pytest.mark.parametrize(("step_timeout", "deadline"), [(1, 30), (30, 3)], ids=["step-timeout", "deadline"])
def test_ssh_connect_to_a_silent_host_is_bounded_by_the_step_timeout_and_the_deadline(
    scenario: Any, pg_primary: Any, remote_dir: Path, silent_port: int, step_timeout: float, deadline: float
) -> None:
    """ssh.connect_timeout (here 8s) is the longest a connection may take, not a floor: a step
    with a shorter timeout, or the last seconds before the run deadline, end the attempt sooner."""
    sc = scenario(
        {
            "params": [*PARAMS, "silent"],
            "deadline": deadline,
            "steps": [
                {
                    "id": "silent",
                    "ssh": {"host": "{{ host }}", "port": "{{ silent }}", "command": "true"},
                    "retry": {"attempts": 2, "delay": 0.1},
                    "timeout": step_timeout,
                },
            ],
        },
        ssh={"connect_timeout": 8},
    )
    result = sc.run(*args(pg_primary, remote_dir, "unused", silent_port))
    assert result.rc == 1, result.log
    tries = attempts(sc.last_run(), "silent")
    bound = min(step_timeout, deadline)
    assert tries and all(t["duration"] < bound + 0.5 for t in tries), [t["duration"] for t in tries]
    assert all("did not speak SSH" in t["message"] for t in tries), tries
    assert one(sc.last_run(), "run_finished")["duration"] < min(2 * step_timeout + 0.5, deadline + 0.5) + 0.5


# ---- a remote command that hangs -------------------------------------------------------


def test_hanging_remote_command_is_killed_on_the_node(
    scenario: Any, pg_primary: Any, remote_dir: Path
) -> None:
    shells = remote_shells()
    slot = new_slot()
    scenario.slots.append(slot)
    arg = unique_sleep()
    sc = scenario({
        "params": [*PARAMS, "nap"],
        "deadline": 30,
        "steps": [
            create_slot_step(),
            {
                "id": "hang",
                "ssh": {"host": "{{ host }}", "command": "echo hanging; sleep {{ nap }}"},
                "retry": {"attempts": 2, "delay": 0.1},
                "timeout": 1.5,
            },
        ],
        "handlers": [DROP_SLOT],
    })  # fmt: skip
    result = sc.run(*args(pg_primary, remote_dir, slot, arg))
    events = sc.last_run()
    tries = attempts(events, "hang")
    assert [(t["outcome"], t["timed_out"]) for t in tries] == [("failed", True)] * 2, tries
    assert all(t["message"] == "timed out after 1.5s; remote command killed" for t in tries)
    assert all(1.4 < t["duration"] < 3.5 for t in tries), [t["duration"] for t in tries]
    assert wait_no_process(f"sleep {arg}") == []  # killed on the node, not just abandoned
    assert remote_shells_left(shells) == []
    assert_rolled_back(result, events, "hang", ["create_slot"])
    assert slot not in slot_names(pg_primary)
    assert len(result.lines("step=hang", "stdout| hanging")) == 2, result.log


# ---- SIGTERM and kill -9 ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_sigterm_to_the_process_group_stops_the_step_and_rolls_back(
    scenario: Any, pg_primary: Any, remote_dir: Path, where: str
) -> None:
    shells = remote_shells()
    slot = new_slot()
    scenario.slots.append(slot)
    arg = unique_sleep()
    conf = remote_dir / "myrecovery.conf"
    conf.write_text("previous content\n")
    chown_postgres(conf)
    long_step: dict[str, Any] = (
        {"local": {"command": ["sleep", "{{ nap }}"]}}
        if where == "local"
        else {"ssh": {"host": "{{ host }}", "command": "sleep {{ nap }}"}}
    )
    sc = scenario({
        "params": [*PARAMS, "nap"],
        "deadline": 60,
        "steps": [
            create_slot_step(),
            {
                "id": "settings",
                "template": {"host": "{{ host }}", "dest": "{{ dir }}/myrecovery.conf",
                             "content": "primary_slot_name = '{{ slot }}'\n"},
                "timeout": 10,
            },
            {"id": "long", **long_step, "timeout": 50},
            {"id": "never", "local": {"command": ["true"]}, "timeout": 5},
        ],
        "handlers": [DROP_SLOT],
    })  # fmt: skip
    running = sc.start(*args(pg_primary, remote_dir, slot, arg))
    running.wait_line("step=long", "outcome=started")
    wait_for(lambda: processes_matching(f"sleep {arg}"), 10, f"sleep {arg} to run")
    assert conf.read_text() == f"primary_slot_name = '{slot}'\n" and slot in slot_names(pg_primary)
    signalled = time.monotonic()
    running.signal_group(signal.SIGTERM)
    result = running.finish(30)
    assert time.monotonic() - signalled < 8, result.log
    assert result.rc == 1, result.log
    assert wait_no_process(f"sleep {arg}") == []  # the current step's process is gone
    assert remote_shells_left(shells) == []
    events = sc.last_run()
    assert one(events, "step", step="long")["status"] == "interrupted"
    assert not of(events, "step", step="never")
    assert one(events, "rollback")["steps"] == ["settings", "create_slot"]
    end = one(events, "run_finished")
    assert (end["status"], end["exit_code"]) == ("interrupted", 1), end
    assert result.lines("outcome=interrupted", "signal received"), result.log
    assert result.lines("outcome=finished", "interrupted exit=1"), result.log
    assert slot not in slot_names(pg_primary)
    assert conf.read_text() == "previous content\n"
    assert temp_files(remote_dir) == []


def test_a_second_sigterm_during_the_rollback_does_not_cut_it_short(
    scenario: Any, pg_primary: Any, remote_dir: Path
) -> None:
    """pgpool (or an operator) may signal again while the undos run: they still all run."""
    arg = unique_sleep()
    sc = scenario({
        "params": [*PARAMS, "nap"],
        "steps": [
            {"id": "prepare", "local": {"command": ["true"]}, "timeout": 5, "undo": "slow_undo"},
            {"id": "long", "local": {"command": ["sleep", "{{ nap }}"]}, "timeout": 50},
        ],
        "handlers": [
            {"id": "slow_undo", "local": {"command": ["sh", "-c", "sleep 1; touch \"$0\"", "{{ dir }}/undone"]},
             "timeout": 10},
        ],
    })  # fmt: skip
    running = sc.start(*args(pg_primary, remote_dir, "unused", arg))
    running.wait_line("step=long", "outcome=started")
    running.signal_group(signal.SIGTERM)
    running.wait_line("step=slow_undo", "outcome=started")
    running.signal_group(signal.SIGTERM)
    result = running.finish(30)
    assert result.rc == 1, result.log
    assert (remote_dir / "undone").exists(), result.log  # the undo ran to its end
    events = sc.last_run()
    assert one(events, "step", step="slow_undo", phase="undo")["status"] == "succeeded"
    assert one(events, "run_finished")["status"] == "interrupted"
    assert wait_no_process(f"sleep {arg}") == []


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_kill_9_of_the_runner_leaves_no_command_running(
    scenario: Any, pg_primary: Any, remote_dir: Path, where: str
) -> None:
    """Commands run in their own process group (so a timeout can stop all they started), out of
    reach of a signal to the runner's group: after a kill -9 they must not run on behind pgpool."""
    shells = remote_shells()
    reapers = set(processes_matching(REAPER_MARK))  # this pytest process may have one of its own
    arg = unique_sleep()
    long_step: dict[str, Any] = (
        {"local": {"command": ["sh", "-c", 'sleep "$0" & sleep "$0"; wait', "{{ nap }}"]}}
        if where == "local"
        else {"ssh": {"host": "{{ host }}", "command": "sleep {{ nap }} & sleep {{ nap }}; wait"}}
    )
    sc = scenario({"params": [*PARAMS, "nap"], "steps": [{"id": "long", **long_step, "timeout": 50}]})
    running = sc.start(*args(pg_primary, remote_dir, "unused", arg))
    wait_for(lambda: len(processes_matching(f"sleep {arg}")) >= 2, 10, f"two sleep {arg} to run")
    running.signal_group(signal.SIGKILL)
    running.finish(10)
    assert wait_no_process(f"sleep {arg}", timeout=6) == []  # both, the background one too
    assert new_processes_left(REAPER_MARK, reapers) == []  # the runner's reaper is done too
    assert remote_shells_left(shells) == []
    events = sc.last_run()
    assert of(events, "run_started") and not of(events, "run_finished")


@pytest.fixture
def recovery_target(pg_cluster: Any) -> Iterator[Any]:
    """Standby node 2 of pg_cluster, stopped and without its slot: a detached node to recover."""
    primary, target = pg_cluster.nodes[0], pg_cluster.nodes[2]
    target.stop()
    wait_for(
        lambda: not [s for s in primary.slots() if s["slot_name"] == target.slot_name and s["active"]],
        10,
        "the slot to be released",
    )
    primary.query("SELECT pg_drop_replication_slot(%s)", [target.slot_name])
    yield target
    if not target.is_running():  # the test failed half-way: rebuild the standby
        pg_cluster.add_standby(target, primary)
    pg_cluster.wait_streaming(target, primary)


def test_kill_9_mid_recovery_leaves_an_unfinished_run_and_a_rerun_completes(
    pg_cluster: Any, recovery_target: Any, hook_config: Any, hook_app: Any
) -> None:
    """The shipped recovery_1st_stage, killed with SIGKILL during pg_basebackup, then run again:
    the slot the first run created is kept, the stopped node and the half-copied PGDATA are no
    obstacle, and remote_start brings the node back as a streaming standby."""
    shells = remote_shells()
    primary, target = pg_cluster.nodes[0], recovery_target
    config = hook_config(passfile=pg_cluster.passfile)
    state = Path(str(config.parent / "state"))
    hook_args = [str(primary.pgdata), target.address, str(target.pgdata), str(primary.port),
                 str(target.node_id), str(target.port), primary.address]  # fmt: skip

    def start() -> subprocess.Popen[str]:
        argv = ["runuser", "-u", "postgres", "--", str(hook_app.wrapper), "run", "--config", str(config),
                "recovery_1st_stage", *hook_args]  # fmt: skip
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, cwd="/", start_new_session=True)  # fmt: skip

    proc = start()
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "step=basebackup" in line and "outcome=started" in line:
            break
    time.sleep(random.uniform(0.0, 0.3))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    # the remote pg_basebackup does not outlive the runner: it would go on writing into the PGDATA
    # that the next run empties (sshd leaves a command without a pty running when the client is gone)
    assert wait_no_process(f"pg_basebackup .*-D {target.pgdata}", timeout=8) == []
    assert remote_shells_left(shells) == []

    first = journal_runs(state)
    assert len(first) == 1
    events = first[0]
    assert of(events, "run_started") and not of(events, "run_finished")  # an unfinished run
    assert one(events, "step", step="create_slot")["result"]["row"] == {"created": True}
    assert target.slot_name in slot_names(primary)
    assert not target.is_running()

    again = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(hook_app.wrapper), "run", "--config", str(config),
         "recovery_1st_stage", *hook_args],
        capture_output=True, text=True, cwd="/", timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    rerun = journal_runs(state)[-1]
    assert one(rerun, "run_finished")["status"] == "succeeded"
    assert one(rerun, "step", step="create_slot")["result"]["row"] == {"created": False}  # kept, not an error
    assert one(rerun, "step", step="target_is_down")["status"] == "succeeded"  # already stopped: fine
    history = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(hook_app.wrapper), "history", "--config", str(config),
         "--json", "--workflow", "recovery_1st_stage"],
        capture_output=True, text=True, cwd="/", timeout=30,
    )  # fmt: skip
    assert history.returncode == 0, history.stderr
    assert [json.loads(line)["outcome"] for line in history.stdout.splitlines()] == [
        "succeeded",
        "unfinished",
    ]
    started = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(hook_app.wrapper), "run", "--config", str(config),
         "remote_start", target.address, str(target.pgdata)],
        capture_output=True, text=True, cwd="/", timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    pg_cluster.wait_streaming(target, primary)
    assert target.is_in_recovery()
    assert slot_names(primary).count(target.slot_name) == 1
    assert [s for s in primary.slots() if s["slot_name"] == target.slot_name][0]["active"]
    assert (target.pgdata / "myrecovery.conf").read_text().count("primary_slot_name") == 1
    assert temp_files(target.pgdata) == []


# ---- two runs at once ------------------------------------------------------------------


LOCKED = {
    "params": [*PARAMS, "tag"],
    "lock": "fault-{{ host }}",
    "lock_timeout": 20,
    "steps": [
        {
            "id": "line",
            "file": {"host": "{{ host }}", "path": "{{ dir }}/shared.conf", "state": "line",
                     "line": "run = {{ tag }}", "create": True},
            "timeout": 10,
        },
        {"id": "hold", "local": {"command": ["sleep", "1.5"]}, "timeout": 10},
        {
            "id": "settings",
            "template": {"host": "{{ host }}", "dest": "{{ dir }}/big.conf",
                         "content": "{{ ('written by ' ~ tag ~ ' ' ~ ('x' * 80) ~ '\\n') * 20000 }}"},
            "timeout": 20,
        },
    ],
}  # fmt: skip


def test_second_run_for_the_same_node_waits_for_the_lock(
    scenario: Any, pg_primary: Any, remote_dir: Path
) -> None:
    sc = scenario(LOCKED)
    a = sc.start(*args(pg_primary, remote_dir, "unused", "A"))
    a.wait_line("step=hold", "outcome=started")
    b = sc.start(*args(pg_primary, remote_dir, "unused", "B"))
    ra, rb = a.finish(30), b.finish(30)
    assert (ra.rc, rb.rc) == (0, 0), ra.log + "\n" + rb.log
    assert rb.lines("outcome=waiting", "another run holds lock 'fault-127.0.0.21'"), rb.log
    assert rb.lines("outcome=locked", "got lock 'fault-127.0.0.21' after waiting"), rb.log
    assert not ra.lines("outcome=waiting")
    run_a, run_b = sc.journal_runs()
    a_end = one(run_a, "run_finished")["ts"]
    b_first_step = min(e["ts"] for e in run_b if e["event"] in ("step", "attempt"))
    assert b_first_step >= a_end  # B's steps ran only after A finished
    assert (remote_dir / "shared.conf").read_text() == "run = A\nrun = B\n"
    assert (remote_dir / "big.conf").read_text() == ("written by B " + "x" * 80 + "\n") * 20000
    assert temp_files(remote_dir) == []


def test_sigterm_while_waiting_for_the_lock_changes_nothing(
    scenario: Any, pg_primary: Any, remote_dir: Path
) -> None:
    sc = scenario(LOCKED)
    a = sc.start(*args(pg_primary, remote_dir, "unused", "A"))
    a.wait_line("step=hold", "outcome=started")
    b = sc.start(*args(pg_primary, remote_dir, "unused", "B"))
    b.wait_line("outcome=waiting")
    b.signal_group(signal.SIGTERM)
    rb = b.finish(10)
    ra = a.finish(30)
    assert ra.rc == 0, ra.log
    assert rb.rc == 1, rb.log
    assert rb.elapsed < 5
    run_a, run_b = sc.journal_runs()
    assert not of(run_b, "step") and not of(run_b, "attempt")  # B ran nothing ...
    end = one(run_b, "run_finished")  # ... and says how it ended
    assert (end["status"], end["exit_code"]) == ("interrupted", 1), end
    assert rb.lines("outcome=interrupted", "nothing was changed"), rb.log
    assert one(run_a, "run_finished")["status"] == "succeeded"  # A was not disturbed
    assert (remote_dir / "shared.conf").read_text() == "run = A\n"
    assert (remote_dir / "big.conf").read_text() == ("written by A " + "x" * 80 + "\n") * 20000


# ---- a write interrupted half-way ------------------------------------------------------

BIG_TEMPLATE = {
    "params": ["dest", "tag", {"name": "size", "type": "int"}, {"name": "host", "default": ""}],
    "deadline": 60,
    "steps": [
        {
            "id": "write",
            "template": {"host": "{{ host }}", "dest": "{{ dest }}",
                         "content": "{{ ('line of ' ~ tag ~ ' ' ~ ('y' * 100) ~ '\\n') * size }}"},
            "timeout": 50,
        }
    ],
}  # fmt: skip


def content(tag: str, size: int) -> bytes:
    return (f"line of {tag} " + "y" * 100 + "\n").encode() * size


@pytest.mark.parametrize("host", ["", NODE_HOST], ids=["local", "sftp"])
def test_template_write_killed_at_random_moments_never_tears_the_file(
    scenario: Any, remote_dir: Path, host: str
) -> None:
    size = 150_000  # ~17 MB: the write takes long enough to be hit
    dest = remote_dir / "myrecovery.conf"
    sc = scenario(BIG_TEMPLATE)
    first = sc.run(dest, "A", size, host)
    assert first.rc == 0, first.log
    # how long a whole write takes (the step's duration)
    took = float(re.findall(r"step=write attempt=1 outcome=ok .*\((\d+\.\d+)s\)", first.log)[0])
    tags = [f"T{i}" for i in range(8)]  # each killed run writes new content
    allowed = {content(t, size) for t in ["A", *tags]}
    rng = random.Random(os.getpid())
    seen_temp = 0
    changed = 0
    before = dest.read_bytes()
    for i, tag in enumerate(tags):
        old_temps = set(temp_files(remote_dir))
        running = sc.start(dest, tag, size, host)
        # the moment this run's temporary file appears, then a random part of a whole write later
        while not set(temp_files(remote_dir)) - old_temps and running.proc.poll() is None:
            time.sleep(0.001)
        # the first kill lands as soon as the temporary file exists (mid-write, so the test
        # always hits a write in progress); the others at random moments of a whole write
        time.sleep(0.0 if i == 0 else rng.uniform(0.0, took * 1.2))
        running.signal_group(signal.SIGKILL)
        running.finish(10)
        now = dest.read_bytes()
        assert now in allowed, f"torn file after kill {i}: {len(now)} bytes"
        assert now in (before, content(tag, size))
        changed += now != before
        before = now
        seen_temp += bool(temp_files(remote_dir))
    # a normal run afterwards completes and clears what the killed ones left behind: locally the
    # files of dead pids; over SFTP (no pid to check) files untouched for STALE_TEMP_AGE, so age them
    if host:
        for name in temp_files(remote_dir):
            old = time.time() - STALE_TEMP_AGE - 60
            os.utime(remote_dir / name, (old, old))
    last = sc.run(dest, "D", size, host)  # new content: temp files are tidied when the file is written
    assert last.rc == 0, last.log
    assert dest.read_bytes() == content("D", size)
    assert temp_files(remote_dir) == [], (seen_temp, changed)
    assert changed < 8, f"no kill landed before the rename (a write takes {took}s)"  # the test hit writes


def test_crash_between_temp_write_and_rename_keeps_the_old_file_and_the_next_run_cleans_up(
    scenario: Any, remote_dir: Path
) -> None:
    """Deterministic version of the kill test: a process writing through LocalFS dies (SIGKILL)
    after the temporary file is complete and before the rename."""
    dest = remote_dir / "myrecovery.conf"
    dest.write_text("old complete content\n")
    code = (
        "import os, sys, time\n"
        "from engine.transport.local import LocalFS\n"
        "os.replace = lambda a, b: (print('written', flush=True), time.sleep(600))\n"
        "LocalFS().write_atomic(sys.argv[1], b'new content\\n' * 1000, None)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, text=True,
                            cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "written\n"
    leftover = temp_files(remote_dir)
    assert leftover == [f".myrecovery.conf.pgpool-hook.{proc.pid}.tmp"]
    proc.kill()
    proc.wait(5)
    assert dest.read_text() == "old complete content\n"  # never torn: the old file, whole
    live = remote_dir / f".myrecovery.conf.pgpool-hook.{os.getpid()}.tmp"  # a writer still at work
    live.write_text("half")
    sc = scenario(BIG_TEMPLATE)
    result = sc.run(dest, "A", 10)
    assert result.rc == 0, result.log
    assert dest.read_bytes() == content("A", 10)
    assert temp_files(remote_dir) == [live.name]  # the dead writer's file is gone, the live one's kept
