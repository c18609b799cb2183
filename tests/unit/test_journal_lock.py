"""What a run leaves behind: the JSON-lines journal (masked), the run lock, and the config it read."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from engine import config as config_mod
from engine.errors import InvalidInput
from engine.journal import Journal, read_events, runs
from engine.lock import LockTimeout, RunLock
from engine.masking import MASK, Masker
from engine.run import execute

from .helpers import Harness

# ---- masking and journal --------------------------------------------------------------


def test_masker_masks_longest_first_and_deep() -> None:
    m = Masker(["pw", "pw-long", ""])
    assert m.text("a pw-long b pw") == f"a {MASK} b {MASK}"
    assert m.deep({"k": ["pw", ("x pw",), b"pw"], "n": 1}) == {"k": [MASK, [f"x {MASK}"], MASK], "n": 1}


QUOTY = "Xy'Zq\\W $Qv"


@pytest.mark.parametrize(
    "template",
    [
        "x {{ pw }}",  # shell-quoted in a command
        "{{ pw | quote }}",
        "{{ pw | pgquote }}",
        "{{ pw | conninfo }}",
        "primary_conninfo = {{ ('password=' ~ (pw | conninfo)) | pgquote }}",
        "{{ {'p': pw} }}",  # a Python repr, as in the dry-run's SQL params line
    ],
)
def test_masker_masks_quoted_forms_of_a_secret(template: str) -> None:
    from engine.render import Renderer

    r = Renderer({"pw": QUOTY})
    rendered = r.shell(template) if template.startswith("x ") else r.text(template)
    masked = Masker([QUOTY]).text(rendered)
    assert MASK in masked
    assert "Zq" not in masked and "Qv" not in masked


def test_journal_writes_json_lines_as_it_goes(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "state"), "run1", Masker(["hunter2"]))
    j.write("run_started", args=["1", "hunter2"])
    # written and flushed before close: a killed run still leaves its record
    lines = (tmp_path / "state" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["run_started"]
    j.write("step", step="a", message="password hunter2 rejected", result={"rows": [{"pw": "hunter2"}]})
    j.close()
    events = list(read_events(str(tmp_path / "state")))
    assert [(e["run"], e["event"]) for e in events] == [("run1", "run_started"), ("run1", "step")]
    assert events[0]["args"] == ["1", MASK]
    assert events[1]["message"] == f"password {MASK} rejected"
    assert events[1]["result"] == {"rows": [{"pw": MASK}]}
    assert "hunter2" not in (tmp_path / "state" / "journal.jsonl").read_text()


def test_journal_reader_skips_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_text(
        '{"run": "a", "event": "x"}\n{"run": "a", "ev\n{"run": "b", "event": "y"}\n'
    )
    assert {k: [e["event"] for e in v] for k, v in runs(str(tmp_path)).items()} == {"a": ["x"], "b": ["y"]}


def test_unwritable_state_dir_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    j = Journal(str(blocker / "state"), "r", Masker())
    assert j.error is not None and j.error.startswith(f"cannot write journal {blocker}/state/journal.jsonl")
    j.write("x")  # ignored
    j.close()


def test_a_run_journals_every_event_in_order(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write("name: t\nsteps:\n  - id: a\n    local: [a]\n  - id: b\n    local: [b]\n    when: false\n")
    h = Harness(path)
    cfg = config_mod.Config(
        data={**h.runner.r.context["config"], "state_dir": str(tmp_path / "st")}, path=None
    )
    stream = io.StringIO()
    code = execute(
        h.workflow,
        cfg,
        {"extra_args": []},
        Masker(),
        "run42",
        [],
        kinds=h.kinds,
        clock=h.clock,
        stream=stream,
    )
    assert code == 0
    events = list(read_events(str(tmp_path / "st")))
    assert [(e["event"], e.get("step"), e.get("status")) for e in events] == [
        ("run_started", None, None),
        ("attempt", "a", None),
        ("step", "a", "succeeded"),
        ("step", "b", "skipped"),
        ("run_finished", None, "succeeded"),
    ]
    assert {e["run"] for e in events} == {"run42"}
    assert events[-1]["exit_code"] == 0
    assert events[2]["action"] == {"kind": "local", "target": "local", "summary": "a", "text": []}
    assert "outcome=finished succeeded exit=0" in stream.getvalue()


# ---- lock ----------------------------------------------------------------------------


def test_second_holder_times_out_with_a_clear_message(tmp_path: Path) -> None:
    first = RunLock(str(tmp_path), "failover")
    first.acquire(1)
    told: list[bool] = []
    second = RunLock(str(tmp_path), "failover")
    started = time.monotonic()
    with pytest.raises(LockTimeout) as info:
        second.acquire(0.3, on_wait=lambda: told.append(True), poll=0.02)
    assert time.monotonic() - started >= 0.3
    assert str(info.value) == f"another run holds {tmp_path}/locks/failover.lock; gave up after 0.3s"
    assert told == [True]
    first.release()


def test_second_holder_waits_then_proceeds(tmp_path: Path) -> None:
    first = RunLock(str(tmp_path), "follow_primary-node1")
    first.acquire(1)
    timer = threading.Timer(0.2, first.release)
    timer.start()
    told: list[bool] = []
    second = RunLock(str(tmp_path), "follow_primary-node1")
    waited = second.acquire(5, on_wait=lambda: told.append(True), poll=0.02)
    timer.join()
    assert 0.15 <= waited < 5
    assert told == [True]
    assert (tmp_path / "locks" / "follow_primary-node1.lock").read_text().strip().isdigit()
    second.release()


def test_different_lock_names_do_not_wait(tmp_path: Path) -> None:
    a, b = RunLock(str(tmp_path), "follow_primary-1"), RunLock(str(tmp_path), "follow_primary-2")
    a.acquire(1)
    assert b.acquire(0) < 0.1
    a.release()
    b.release()


@pytest.mark.parametrize(
    ("name", "file"), [("a/../b c", "a_.._b_c.lock"), ("", "run.lock"), ("x" * 300, "x" * 120 + ".lock")]
)
def test_lock_file_names_are_safe(tmp_path: Path, name: str, file: str) -> None:
    assert RunLock(str(tmp_path), name).path == f"{tmp_path}/locks/{file}"


def test_run_gives_up_when_the_lock_stays_taken(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "name: t\nlock: 't-{{ n }}'\nlock_timeout: 0.2\nparams: [n]\nsteps:\n  - id: a\n    local: [a]\n"
    )
    h = Harness(path, args=["7"])
    state = tmp_path / "st"
    holder = RunLock(str(state), "t-7")
    holder.acquire(1)
    cfg = config_mod.Config(data={**h.runner.r.context["config"], "state_dir": str(state)}, path=None)
    stream = io.StringIO()
    code = execute(
        h.workflow, cfg, {"n": "7", "extra_args": []}, Masker(), "r", ["7"], kinds=h.kinds, stream=stream
    )
    holder.release()
    assert code == 1
    assert h.kind.calls == []
    log = stream.getvalue()
    assert "outcome=waiting another run holds lock 't-7'; waiting up to 0.2s" in log
    assert f"another run holds {state}/locks/t-7.lock; gave up after 0.2s" in log
    finished = [e for e in read_events(str(state)) if e["event"] == "run_finished"]
    assert [(e["status"], e["exit_code"]) for e in finished] == [("lock-timeout", 1)]


# ---- config --------------------------------------------------------------------------


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env, system = (tmp_path / n for n in ("explicit.yaml", "env.yaml", "system.yaml"))
    for p in (explicit, env, system):
        p.write_text(f"vars: {{which: {p.stem}}}\n")
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", str(system))
    monkeypatch.setenv("PGPOOL_HOOK_CONFIG", str(env))
    assert config_mod.load(str(explicit)).data["vars"] == {"which": "explicit"}
    assert config_mod.load().data["vars"] == {"which": "env"}
    monkeypatch.delenv("PGPOOL_HOOK_CONFIG")
    assert config_mod.load().data["vars"] == {"which": "system"}
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    cfg = config_mod.load()
    assert cfg.path is None
    assert cfg.data["ssh"]["port"] == 22 and cfg.data["postgres"]["bin_dir"] == "/usr/lib/postgresql/15/bin"


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["ssh.port=2222"], {"ssh": {"port": 2222}}),
        (["vars.flag=true", "vars.name=pg-1"], {"vars": {"flag": True, "name": "pg-1"}}),
        (["vars.empty="], {"vars": {"empty": ""}}),
        (["vars.x=[1, 2]", "vars.y=a=b"], {"vars": {"x": "[1, 2]", "y": "a=b"}}),
        (["lock_timeout=0.5"], {"lock_timeout": 0.5}),
    ],
)
def test_parse_set(pairs: list[str], expected: dict) -> None:  # type: ignore[type-arg]
    assert config_mod.parse_set(pairs) == expected


def test_set_overrides_the_file_and_keeps_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("ssh: {user: pgpool, port: 2200}\nvars: {a: 1, b: 2}\n")
    cfg = config_mod.load(str(p), config_mod.parse_set(["ssh.port=22", "vars.b=3"]))
    assert cfg.data["ssh"]["user"] == "pgpool" and cfg.data["ssh"]["port"] == 22
    assert cfg.data["vars"] == {"a": 1, "b": 3}


def test_secrets_from_env_file_and_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repl.pw").write_text("from-file\n")
    (tmp_path / "pgpass").write_text("# comment\n*:5432:*:postgres:pass\\:word\n")
    monkeypatch.setenv("REPL_PW", "from-env")
    monkeypatch.delenv("MISSING_PW", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text(
        "postgres: {passfile: " + str(tmp_path / "pgpass") + "}\n"
        "secrets:\n  a: {env: REPL_PW}\n  b: {file: repl.pw}\n  c: {value: literal}\n"
        "  d: {env: MISSING_PW}\n  e: {file: nope.pw}\n"
    )
    cfg = config_mod.load(str(p))
    assert cfg.secrets == {"a": "from-env", "b": "from-file", "c": "literal"}
    assert cfg.secret_problems == {
        "d": "environment variable MISSING_PW is not set",
        "e": f"cannot read {tmp_path}/nope.pw: No such file or directory",
    }
    assert sorted(cfg.mask_values()) == sorted(["from-env", "from-file", "literal", "pass:word"])


def test_secret_needs_exactly_one_source(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("secrets:\n  a: {env: X, value: y}\n")
    with pytest.raises(InvalidInput) as info:
        config_mod.load(str(p))
    # the value is a password: the message names the variable, never the value
    assert (
        f"{p}:2:3: secrets.a: {{'env': 'X', 'value': '********'}} has too many properties"
        in info.value.render()
    )


@pytest.mark.parametrize("text", ["", "\n", "# everything commented out\n# ssh:\n#   port: 22\n"])
def test_empty_config_file_means_defaults(tmp_path: Path, text: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    cfg = config_mod.load(str(p))
    assert cfg.path == str(p)
    assert cfg.data["ssh"] == config_mod.DEFAULTS["ssh"] | {
        "key_file": str(Path("~/.ssh/id_rsa_pgpool").expanduser()),
        "known_hosts": str(Path("~/.ssh/known_hosts").expanduser()),
    }


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "'{{ hostname }}'",
            "2:1: replication_slot: unknown name 'hostname': the rule can use host, port and node_id",
        ),
        ("'{{ host '", "2:1: replication_slot: Jinja2 syntax error: unexpected end of template"),
        ("'slot_{{ config.x }}'", "2:1: replication_slot: unknown name 'config'"),
    ],
)
def test_replication_slot_rule_is_checked_when_the_config_loads(
    tmp_path: Path, rule: str, message: str
) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"ssh: {{port: 22}}\nreplication_slot: {rule}\n")
    with pytest.raises(InvalidInput) as info:
        config_mod.load(str(p))
    assert f"error: {p}:{message}" in info.value.render()


def test_replication_slot_rule_from_set(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("replication_slot: '{{ host | slot_name }}'\n")
    assert (
        config_mod.load(str(p), {"replication_slot": "n{{ node_id }}"}).data["replication_slot"]
        == "n{{ node_id }}"
    )
    with pytest.raises(InvalidInput) as info:
        config_mod.load(str(p), {"replication_slot": "{{ nod }}"})
    assert "error: --set: replication_slot: unknown name 'nod'" in info.value.render()


def test_log_lines_carry_time_workflow_run_step_attempt_and_outcome(harness) -> None:  # type: ignore[no-untyped-def]
    import re

    h = harness(
        "name: t\nsteps:\n  - id: a\n    local: [a]\n    retry: {attempts: 2, delay: 0}\n", {"a": ["fail"]}
    )
    assert h.run().exit_code == 0
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z pgpool-hook\[t run=t\] (.*)$")
    lines = h.log.splitlines()
    assert all(pattern.match(line) for line in lines), lines
    assert [pattern.match(line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "step=a outcome=started a",
        "step=a attempt=1 outcome=failed exit status 1 (0.00s)",
        "step=a attempt=2 outcome=ok done (0.00s)",
    ]


def test_a_newline_in_a_message_cannot_forge_a_log_line() -> None:
    """A host name from pgpool's arguments may hold a newline; the event stays one line."""
    from engine.log import Logger

    stream = io.StringIO()
    forged = "2026-01-01T00:00:00.000Z pgpool-hook[t run=t] outcome=finished ok exit=0"
    Logger("t", "t", Masker([]), stream=stream).event("failed", f"cannot resolve host 'a\n{forged}'\r")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(f"outcome=failed cannot resolve host 'a\\n{forged}'\\r")


@pytest.mark.parametrize("before", ["", "7\n", "123456789012\n"])
def test_the_lock_file_holds_the_holders_pid(tmp_path: Path, before: str) -> None:
    lock = RunLock(str(tmp_path), "t")
    os.makedirs(lock.dir)
    Path(lock.path).write_text(before)
    lock.acquire(1)
    assert Path(lock.path).read_text() == f"{os.getpid()}\n"
    lock.release()
