"""Whole workflow runs through the CLI against the real services: success, rollback, failed rollback.

The workflow uses every step kind on the sandbox node (sql on PostgreSQL, ssh/template/file over
SSH as postgres, local on this host), with a retry + until poll, step timeouts and an undo handler.
Each run is checked by the state it leaves: the replication slot, the files, the journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from proctools import processes_matching, ssh_settings, unique_sleep, wait_no_process

REPO = Path(__file__).resolve().parents[2]
NODE_HOST = "127.0.0.21"  # pg_primary's address; sshd listens there too

WORKFLOW = """\
name: real_run
description: every step kind against the sandbox, for rollback tests
params:
  - host
  - {name: pg_port, type: int}
  - dir
  - {name: fail, type: int, default: 0}
  - {name: undo_slot, default: ""}
  - {name: hang, default: "0"}
vars:
  slot: "it_{{ dir | basename | slot_name }}"
deadline: 60
steps:
  - id: poll
    description: retry until the counter file says 2 (each attempt increments it over ssh)
    ssh:
      host: "{{ host }}"
      command: "n=$(cat {{ dir }}/counter 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{ dir }}/counter; echo $n"
    retry: {attempts: 5, delay: 0.1, until: "result.stdout_lines[-1] | int >= 2"}
    timeout: 5
  - id: checkpoint
    sql: {host: "{{ host }}", port: "{{ pg_port }}", statement: CHECKPOINT}
    timeout: 10
  - id: create_slot
    sql:
      host: "{{ host }}"
      port: "{{ pg_port }}"
      statement: "SELECT slot_name FROM pg_create_physical_replication_slot(%(slot)s)"
      params: {slot: "{{ slot }}"}
    timeout: 10
    undo: drop_slot
  - id: settings
    template:
      host: "{{ host }}"
      dest: "{{ dir }}/myrecovery.conf"
      content: "primary_slot_name = {{ steps.create_slot.row.slot_name | pgquote }}\\n"
      mode: "0600"
    timeout: 10
  - id: signal
    file: {host: "{{ host }}", path: "{{ dir }}/standby.signal", state: touch}
    timeout: 10
  - id: show
    ssh: {host: "{{ host }}", command: "cat {{ dir }}/myrecovery.conf"}
    timeout: 5
  - id: slow_warning
    description: a step that outlives its timeout, warn-only
    local: {command: ["sleep", "30"]}
    timeout: 0.5
    on_error: continue
  - id: hang
    when: "hang != '0'"
    ssh: {host: "{{ host }}", command: "echo hanging; sleep {{ hang }}"}
    timeout: 50
  - id: verdict
    local: {command: ["sh", "-c", "exit {{ fail }}"]}
    timeout: 5
handlers:
  - id: drop_slot
    sql:
      host: "{{ host }}"
      port: "{{ pg_port }}"
      statement: "SELECT pg_drop_replication_slot(%(slot)s)"
      params: {slot: "{{ undo_slot or slot }}"}
    retry: {attempts: 2, delay: 0.1}
    timeout: 10
"""


@pytest.fixture
def setup(tmp_path: Path, sshd: Any, pg_primary: Any, remote_dir: Path) -> dict[str, Any]:
    workflow = tmp_path / "real_run.yaml"
    workflow.write_text(WORKFLOW)
    config = tmp_path / "pgpool-hook.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "state_dir": str(tmp_path / "state"),
        "postgres": {"passfile": str(pg_primary.passfile), "connect_timeout": 3},
        "ssh": ssh_settings(sshd),
        "lock_timeout": 5,
    }))  # fmt: skip
    (remote_dir / "myrecovery.conf").write_text("previous content\n")
    os.chmod(remote_dir / "myrecovery.conf", 0o644)
    import pwd

    pw = pwd.getpwnam("postgres")
    os.chown(remote_dir / "myrecovery.conf", pw.pw_uid, pw.pw_gid)
    slot = "it_" + remote_dir.name.lower().replace("-", "_").replace(".", "_")
    yield {
        "workflow": workflow,
        "config": config,
        "dir": remote_dir,
        "slot": slot,
        "state": tmp_path / "state",
    }
    if slot in slot_names(pg_primary):
        pg_primary.query("SELECT pg_drop_replication_slot(%s)", [slot])


def slot_names(node: Any) -> list[str]:
    return [s["slot_name"] for s in node.slots()]


def command(setup: dict[str, Any], pg_primary: Any, *args: str) -> tuple[list[str], dict[str, str]]:
    """``python -m engine run --config CONFIG WORKFLOW host pg_port dir ARGS`` and its environment."""
    argv = [sys.executable, "-m", "engine", "run", "--config", str(setup["config"]), str(setup["workflow"]),
            NODE_HOST, str(pg_primary.port), str(setup["dir"]), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PGPOOL_HOOK_CONFIG", None)
    return argv, env


def run(
    setup: dict[str, Any], pg_primary: Any, fail: int = 0, undo_slot: str = ""
) -> subprocess.CompletedProcess[str]:
    argv, env = command(setup, pg_primary, str(fail), undo_slot)
    return subprocess.run(argv, capture_output=True, text=True, cwd=str(REPO), env=env, timeout=60)


def journal(setup: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for path in sorted(setup["state"].rglob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def test_successful_run_leaves_its_changes(setup: dict[str, Any], pg_primary: Any) -> None:
    start = time.monotonic()
    proc = run(setup, pg_primary)
    assert proc.returncode == 0, proc.stderr
    d = setup["dir"]
    assert (d / "counter").read_text() == "2\n"  # the until poll really retried once
    assert setup["slot"] in slot_names(pg_primary)
    assert (d / "myrecovery.conf").read_text() == f"primary_slot_name = '{setup['slot']}'\n"
    assert (d / "standby.signal").exists()
    assert f"stdout| primary_slot_name = '{setup['slot']}'" in proc.stderr  # ssh output streamed to the log
    assert "step=slow_warning" in proc.stderr and "outcome=continuing" in proc.stderr
    assert time.monotonic() - start < 10


def test_failure_rolls_back_for_real(setup: dict[str, Any], pg_primary: Any) -> None:
    proc = run(setup, pg_primary, fail=1)
    assert proc.returncode == 1, proc.stderr
    d = setup["dir"]
    assert setup["slot"] not in slot_names(pg_primary)  # undo handler dropped the slot
    assert (d / "myrecovery.conf").read_text() == "previous content\n"  # template reverted
    assert not (d / "standby.signal").exists()  # touched file removed again
    assert "rolled back" in proc.stderr
    rollback = [r for r in journal(setup) if r["event"] == "rollback"]
    assert rollback and rollback[0]["steps"] == ["signal", "settings", "create_slot"]  # newest first
    assert not [name for name in os.listdir(d) if name.endswith(".tmp")]


def test_failed_undo_exits_3_and_says_so(setup: dict[str, Any], pg_primary: Any) -> None:
    proc = run(setup, pg_primary, fail=1, undo_slot=f"no_such_slot_{uuid.uuid4().hex[:6]}")
    assert proc.returncode == 3, proc.stderr
    assert setup["slot"] in slot_names(pg_primary)  # the compensation could not drop it ...
    assert "rollback INCOMPLETE" in proc.stderr  # ... and the operator is told
    assert (setup["dir"] / "myrecovery.conf").read_text() == "previous content\n"  # the rest was still undone


def test_sigterm_mid_ssh_step_kills_the_remote_command_and_rolls_back(
    setup: dict[str, Any], pg_primary: Any
) -> None:
    arg = unique_sleep()
    argv, env = command(setup, pg_primary, "0", "", arg)
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=str(REPO), env=env
    )
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "stdout| hanging" in line:
                break
        assert processes_matching(f"sleep {arg}"), "".join(seen)  # the remote command really runs
        proc.send_signal(signal.SIGTERM)  # as pgpool does to its follow child's group on shutdown
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen.append(rest)
    assert proc.returncode == 1, "".join(seen)
    assert wait_no_process(f"sleep {arg}") == []
    assert setup["slot"] not in slot_names(pg_primary)
    assert (setup["dir"] / "myrecovery.conf").read_text() == "previous content\n"
    assert "interrupted" in "".join(seen)
