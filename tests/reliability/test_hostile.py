"""Hostile arguments through every shipped workflow, run for real against the sandbox.

pgpool pastes host names and paths into its hook command line unquoted, so a value can be
anything.  Each shipped workflow runs here (not as a dry-run) with host names and data
directories such as ``$(touch /tmp/pwned-…)``, backticks, ``;``, quotes, spaces and a
newline, against the real session PostgreSQL node (127.0.0.21) and sshd.  After every run:

* no marker file exists (everything runs on this machine, so a local check sees any
  injected ``touch``, whether it ran locally, over ssh or inside PostgreSQL);
* no SQL was altered: the canary table is still there and the replication slots are
  exactly the ones expected (slot names from hostile hosts are sanitised and bound as
  parameters);
* the run failed cleanly (exit 1, a message, no traceback) or did its job on the literal
  value (the literal appears in the command's own output, or the literal folder exists).

The engine runs in-process (``engine.cli.main``) as it would from pgpool's command line,
apart from one run that has to be stopped with SIGTERM, which runs as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.21"  # pg_primary; the session sshd listens there too
U = uuid.uuid4().hex[:10]
MARKERS = [Path(f"/tmp/pwned{n}-{U}") for n in ("", "2", "3", "4", "5", "6")]
POSTGRES_HOME = Path(os.path.expanduser("~postgres"))
CANARY = f"hostile_canary_{U}"

HOSTILE = {
    "dollar": f"$(touch /tmp/pwned-{U})",
    "backtick": f"`touch /tmp/pwned2-{U}`",
    "semicolon": f"a;touch /tmp/pwned3-{U}",
    "newline": f"a\ntouch /tmp/pwned4-{U}",
    "quote-breakout": f"a'; touch /tmp/pwned5-{U}; '",
    "sql-breakout": f"x'); DROP TABLE {CANARY}; --",
    "squote": "a'b",
    "dquote": 'a"b',
    "space": "a b",
    "and": f"a && touch /tmp/pwned6-{U}",
}
# one folder name with every kind of shell syntax in it, but no '/': created literally
LITERAL_DIR = f"pg $(touch pwned-{U}) `touch pwned2-{U}` a;touch pwned3-{U} 'q' \"d\" & x"

CASES = [pytest.param(v, id=k) for k, v in HOSTILE.items()]


@pytest.fixture(scope="module")
def canary(pg_primary: Any) -> Iterator[str]:
    pg_primary.query(f"CREATE TABLE {CANARY} (x int)")
    yield CANARY
    pg_primary.query(f"DROP TABLE IF EXISTS {CANARY}")


def slot_names(node: Any) -> set[str]:
    return {s["slot_name"] for s in node.slots()}


def no_marker() -> list[str]:
    """Every marker an injected command would have made, wherever it ran (empty when safe)."""
    found = [str(m) for m in MARKERS if m.exists()]
    for folder in (POSTGRES_HOME, Path("/"), Path.cwd()):
        found += [str(p) for p in folder.glob(f"pwned*-{U}*")]
    return found


class Hook:
    """Runs a shipped workflow in-process with one config; checks what every run must hold."""

    def __init__(self, config: Path, node: Any, capsys: pytest.CaptureFixture[str]):
        self.config = config
        self.node = node
        self.capsys = capsys

    def run(
        self,
        workflow: str,
        *args: Any,
        codes: tuple[int, ...] = (1,),
        limit: float = 30,
        same_slots: bool = True,
    ) -> str:
        slots_before = slot_names(self.node)
        start = time.monotonic()
        code = main(["run", "--config", str(self.config), workflow, *map(str, args)])
        took = time.monotonic() - start
        out, err = self.capsys.readouterr()
        assert code in codes, err
        assert took < limit, f"took {took:.1f}s\n{err}"
        assert "Traceback" not in out + err and "internal error" not in err, err
        assert no_marker() == [], err
        assert not [line for line in err.splitlines() if "pgpool-hook[" not in line], err  # no forged lines
        assert self.node.query("SELECT to_regclass(%s) IS NOT NULL", [CANARY]) == [(True,)]
        if same_slots:  # made and dropped again, or never made
            assert slot_names(self.node) == slots_before, err
        assert self.node.is_running() and not self.node.is_in_recovery()
        return err


@pytest.fixture
def hook(
    hook_config: Callable[..., Path], pg_primary: Any, canary: str, capsys: pytest.CaptureFixture[str]
) -> Hook:
    config = hook_config(passfile=pg_primary.passfile, postgres={"connect_timeout": 2})
    return Hook(config, pg_primary, capsys)


@pytest.fixture
def folder(sandbox_base: Path) -> Iterator[Path]:
    """A fresh folder the ssh login user (postgres) owns, for target data directories."""
    from sandbox.osuser import make_postgres_dir

    path = Path(tempfile.mkdtemp(prefix="hostile-", dir=sandbox_base))
    make_postgres_dir(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def logged(value: str) -> str:
    """How a value shows inside a log line: a newline is written as \\n (no forged lines)."""
    return value.replace("\n", "\\n")


def failed_step(err: str, step: str) -> bool:
    """The run's last line says this step is the one that failed."""
    return f"step {step} failed" in err[err.rfind("outcome=finished") :]


# ---- remote_start: target_host target_pgdata ---------------------------------------------


@pytest.mark.parametrize("value", CASES)
def test_remote_start_hostile_host_fails_cleanly(hook: Hook, value: str) -> None:
    err = hook.run("remote_start", value, "/var/lib/postgresql/15/main")
    assert failed_step(err, "start")
    assert "rolled back" in err or "failed" in err


@pytest.mark.parametrize("value", CASES)
def test_remote_start_hostile_pgdata_is_one_literal_path(hook: Hook, folder: Path, value: str) -> None:
    pgdata = f"{folder}/{value}"
    err = hook.run("remote_start", HOST, pgdata)
    assert failed_step(err, "start")
    if "\n" not in value:  # pg_ctl itself names the literal folder it could not find
        assert f'pg_ctl: directory "{pgdata}" does not exist' in err


# ---- failover: %d %h %p %D %m %H %M %P %r %R %N %S ---------------------------------------


@pytest.mark.parametrize("value", CASES)
def test_failover_standby_with_hostile_host_drops_only_the_literal_slot(
    hook: Hook, pg_primary: Any, value: str
) -> None:
    """The failed standby's slot name comes from its host name: sanitised, then a bound parameter."""
    from engine.render import slot_name_default

    slot = slot_name_default(value)
    pg_primary.query("SELECT pg_create_physical_replication_slot(%s)", [slot])
    try:
        args = [
            1,
            value,
            5432,
            value,
            0,
            HOST,
            0,
            0,
            pg_primary.port,
            pg_primary.pgdata,
            HOST,
            pg_primary.port,
        ]
        # the run drops exactly that slot, so the slots afterwards are the ones before minus it
        before = slot_names(pg_primary)
        code = main(["run", "--config", str(hook.config), "failover", *map(str, args)])
        err = hook.capsys.readouterr().err
        assert code == 0, err
        assert f"standby 1 ({logged(value)}) failed; the primary is unchanged" in err
        assert slot_names(pg_primary) == before - {slot}
        assert no_marker() == []
        assert pg_primary.query("SELECT to_regclass(%s) IS NOT NULL", [CANARY]) == [(True,)]
    finally:
        pg_primary.query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            [slot],
        )


@pytest.mark.parametrize("value", CASES)
def test_failover_promote_with_hostile_pgdata_runs_pg_ctl_on_the_literal_path(
    hook: Hook, pg_primary: Any, folder: Path, value: str
) -> None:
    """pg_ctl promote fails on the literal folder (warn only); the new main node is checked by SQL."""
    pgdata = f"{folder}/{value}"
    args = [1, "old-primary", 5432, "/x", 0, HOST, 1, 1, pg_primary.port, pgdata, "old-primary", 5432]
    err = hook.run("failover", *args, codes=(0,))
    assert "step=promote " in err and "outcome=continuing" in err
    if "\n" not in value:
        assert f'pg_ctl: directory "{pgdata}" does not exist' in err
    assert "step=verify_promoted " in err


@pytest.mark.parametrize("value", [HOSTILE["dollar"], HOSTILE["newline"], HOSTILE["sql-breakout"]])
def test_failover_hostile_new_main_host_fails_every_attempt_and_stops_on_sigterm(
    hook: Hook, pg_primary: Any, value: str
) -> None:
    """The host reaches ssh and libpq as a name that does not resolve; verify_promoted polls
    60 times, so the run is stopped with SIGTERM, as pgpool does on shutdown."""
    args = [1, "old", 5432, "/x", 0, value, 1, 1, pg_primary.port, "/x", "old", 5432]
    argv = [sys.executable, "-m", "engine", "run", "--config", str(hook.config), "failover", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "step=verify_promoted attempt=2 " in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 1, err
    assert "step=promote " in err and "outcome=continuing" in err  # ssh could not reach it: warn only
    assert "interrupted" in err and "Traceback" not in err
    assert no_marker() == []


# ---- follow_primary: %d %h %p %D %m %H %M %P %r %R ---------------------------------------


@pytest.mark.parametrize("value", CASES)
def test_follow_primary_hostile_node_host_is_skipped_as_not_running(
    hook: Hook, pg_primary: Any, value: str
) -> None:
    args = [1, value, pg_primary.port, "/x", 0, HOST, 0, 0, pg_primary.port, pg_primary.pgdata]
    err = hook.run("follow_primary", *args, codes=(0,))
    assert f"node 1 ({logged(value)}:{pg_primary.port}) is not running: skipped" in err


@pytest.mark.parametrize("value", CASES)
def test_follow_primary_hostile_pgdata_fails_at_the_rewind_and_drops_the_slot_it_made(
    hook: Hook, pg_primary: Any, folder: Path, value: str
) -> None:
    """The running node is never stopped: pg_ctl status on the literal folder says it is not there."""
    pgdata = f"{folder}/{value}"
    args = [1, HOST, pg_primary.port, pgdata, 0, HOST, 0, 0, pg_primary.port, pg_primary.pgdata]
    err = hook.run("follow_primary", *args)
    assert "already stopped" in err
    assert failed_step(err, "rewind")
    assert "step=drop_created_slot " in err  # the slot this run created was dropped again


@pytest.mark.parametrize("value", CASES)
def test_follow_primary_hostile_new_primary_host_fails_cleanly(
    hook: Hook, pg_primary: Any, value: str
) -> None:
    args = [1, HOST, pg_primary.port, "/x", 0, value, 0, 0, pg_primary.port, "/x"]
    err = hook.run("follow_primary", *args)
    assert failed_step(err, "checkpoint")


# ---- recovery_1st_stage: primary_pgdata target_host target_pgdata primary_port id port primary_host


def recovery_args(
    pg_primary: Any, target_host: str, target_pgdata: str, primary_host: str = HOST
) -> list[Any]:
    return [pg_primary.pgdata, target_host, target_pgdata, pg_primary.port, 1, 5433, primary_host]


@pytest.mark.parametrize("value", CASES)
def test_recovery_hostile_primary_host_fails_cleanly(hook: Hook, pg_primary: Any, value: str) -> None:
    err = hook.run("recovery_1st_stage", *recovery_args(pg_primary, HOST, "/x/y", primary_host=value))
    assert failed_step(err, "create_slot")


@pytest.mark.parametrize("value", CASES)
def test_recovery_hostile_target_host_rolls_back_its_slot(hook: Hook, pg_primary: Any, value: str) -> None:
    err = hook.run("recovery_1st_stage", *recovery_args(pg_primary, value, "/x/y"))
    assert failed_step(err, "target_is_down")
    assert "step=drop_created_slot " in err


@pytest.mark.parametrize(
    ("rule", "slot"),
    [
        (None, "127_0_0_21"),
        # a rule (or a long host name) giving more than 63 characters: the slot PostgreSQL
        # creates and primary_slot_name must still be the same name
        ("{{ host | slot_name }}_" + "x" * 70, ("127_0_0_21_" + "x" * 70)[:63]),
    ],
    ids=["default-rule", "long-slot-name"],
)
def test_recovery_into_a_folder_named_with_shell_syntax_builds_it_literally(
    hook: Hook,
    hook_config: Callable[..., Path],
    pg_primary: Any,
    folder: Path,
    rule: str | None,
    slot: str,
) -> None:
    """A whole online recovery (slot, emptied folder, pg_basebackup, settings) into the literal name."""
    if rule is not None:
        hook.config = hook_config(
            passfile=pg_primary.passfile, postgres={"connect_timeout": 2}, replication_slot=rule
        )
    target = folder / LITERAL_DIR
    slots = slot_names(pg_primary)
    try:
        err = hook.run(
            "recovery_1st_stage",
            *recovery_args(pg_primary, HOST, str(target)),
            codes=(0,),
            limit=60,
            same_slots=False,
        )
        assert (target / "PG_VERSION").exists() and (target / "standby.signal").exists()
        conf = (target / "postgresql.conf").read_text()
        quoted = str(target / "myrecovery.conf").replace("'", "''")
        assert f"include_if_exists = '{quoted}'" in conf.splitlines()
        assert "port = 5433" in conf.splitlines()
        assert f"primary_slot_name = '{slot}'" in (target / "myrecovery.conf").read_text()
        assert slot_names(pg_primary) - slots == {slot}
        assert sorted(os.listdir(folder)) == [LITERAL_DIR]  # nothing beside it: no word was split
        assert "step=basebackup " in err
    finally:
        shutil.rmtree(target, ignore_errors=True)
        for slot in slot_names(pg_primary) - slots:
            pg_primary.query("SELECT pg_drop_replication_slot(%s)", [slot])


@pytest.mark.parametrize(
    ("pgdata", "message"),
    [
        ("/tmp/x/../../etc", "path '/tmp/x/../../etc' climbs out with '..' (from a value, not the workflow)"),
        ("/", "refusing to remove the contents of '/': too close to /"),
        ("", "path is empty"),
        ("data", "path 'data' is not an absolute path"),
        ("/var/lib/postgresql", "refusing to remove the contents of '/var/lib/postgresql': too close to /"),
        ("/etc", "refusing to remove the contents of '/etc': too close to /"),
        (f"/tmp/{HOSTILE['newline']}", "contains a newline or NUL byte"),
    ],
)
def test_recovery_refuses_to_empty_a_dangerous_target(
    hook: Hook, pg_primary: Any, pgdata: str, message: str
) -> None:
    before = sorted(os.listdir("/etc"))
    err = hook.run("recovery_1st_stage", *recovery_args(pg_primary, HOST, pgdata))
    assert failed_step(err, "empty_target") and message in err
    assert "step=drop_created_slot " in err
    assert sorted(os.listdir("/etc")) == before


# ---- destinations of template and file steps: no `..` from an argument ---------------------

DOTDOT = """\
name: dotdot
params: [name]
steps:
  - id: write
    template: {{dest: "{folder}/conf.d/{{{{ name }}}}.conf", content: "x = 1\\n"}}
  - id: mark
    file: {{path: "{folder}/conf.d/{{{{ name }}}}.signal", state: touch}}
"""


@pytest.mark.parametrize("name", ["../../outside", "a/../../../etc/x", "../x"])
def test_template_and_file_destinations_cannot_climb_out_through_an_argument(
    hook: Hook, folder: Path, name: str
) -> None:
    (folder / "conf.d").mkdir()
    workflow = folder / "dotdot.yaml"
    workflow.write_text(DOTDOT.format(folder=folder))
    err = hook.run(str(workflow), name)
    assert failed_step(err, "write") and "climbs out with '..' (from a value, not the workflow)" in err
    assert sorted(p.name for p in folder.rglob("*")) == ["conf.d", "dotdot.yaml"]


def test_dotdot_written_in_the_workflow_itself_is_allowed(hook: Hook, folder: Path) -> None:
    (folder / "conf.d").mkdir()
    workflow = folder / "dotdot.yaml"
    workflow.write_text(DOTDOT.format(folder=f"{folder}/conf.d/.."))
    hook.run(str(workflow), "plain", codes=(0,))
    assert (folder / "conf.d" / "plain.conf").read_text() == "x = 1\n"
    assert (folder / "conf.d" / "plain.signal").exists()


def test_the_marker_check_sees_an_injection_when_there_is_one(hook: Hook, folder: Path) -> None:
    """Control: a workflow that opts out of quoting (`| trusted`) really runs the value, and the
    checks above would see it; so their silence means nothing ran."""
    workflow = folder / "unsafe.yaml"
    workflow.write_text(
        "name: unsafe\nparams: [host, value]\nsteps:\n"
        "  - id: remote\n    ssh: {host: '{{ host }}', command: 'echo {{ value | trusted }}'}\n"
    )
    code = main(["run", "--config", str(hook.config), str(workflow), HOST, HOSTILE["dollar"]])
    hook.capsys.readouterr()
    try:
        assert code == 0
        assert no_marker() == [str(MARKERS[0])]
    finally:
        MARKERS[0].unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("workflow", "args", "code"),
    [
        ("failover", lambda v, p: [1, v, v, v, 0, v, 0, 0, p, v, HOST, p], 0),
        ("follow_primary", lambda v, p: [1, v, p, v, 0, HOST, 0, 0, p, v], 0),
        ("recovery_1st_stage", lambda v, p: [v, HOST, f"/{v}", p, 1, 5433, HOST], 1),  # / is not writable
        ("remote_start", lambda v, p: [v, v], 1),
    ],
)
def test_every_workflow_as_pgpool_runs_it(
    hook: Hook, hook_app: Any, pg_primary: Any, workflow: str, args: Any, code: int
) -> None:
    """Through the installed wrapper, as the postgres user, every string argument hostile at once."""
    value = HOSTILE["dollar"] + HOSTILE["semicolon"] + HOSTILE["backtick"]
    slots = slot_names(pg_primary)
    proc = hook_app.run(
        "run", "--config", str(hook.config), workflow, *map(str, args(value, pg_primary.port))
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert no_marker() == []
    assert slot_names(pg_primary) == slots
    assert pg_primary.query("SELECT to_regclass(%s) IS NOT NULL", [CANARY]) == [(True,)]
