"""`pgpool-hook history` and `show` over journals written by real runs of small local workflows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main

from .helpers import dedent

SECRET = "hist-S3cret!"

GOOD = """
name: good
params: [{name: node_id, type: int}, node_host]
steps:
  - id: hello
    local: ["echo", "hello {{ node_host }}"]
  - id: flag
    file: {path: "{{ extra_args[0] }}", state: touch}
"""

BAD = """
name: bad
params: [{name: target_node_id, type: int}, target_host]
steps:
  - id: skipped
    when: target_node_id < 0
    local: ["true"]
  - id: flag
    file: {path: "{{ extra_args[0] }}", state: touch}
    undo: cleanup
  - id: poll
    local: ["sh", "-c", "echo nope >&2; exit 3"]
    retry: {attempts: 3, delay: 0}
  - id: never
    local: ["true"]
handlers:
  - id: cleanup
    local: ["echo", "cleaning up"]
"""

FALLBACK = """
name: fallback
params: [host]
steps:
  - id: first_try
    local: ["false"]
    on_error: second_try
  - id: secret
    local: ["echo", "{{ secrets.pw }}"]
  - id: leave
    exit: {code: 3, message: "leaving on purpose"}
handlers:
  - id: second_try
    local: ["true"]
"""


class Site:
    def __init__(self, base: Path, capsys: Any):
        self.base = base
        self.capsys = capsys
        self.state = base / "state"
        self.config = base / "pgpool-hook.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "workflows_dir": str(base),
                    "state_dir": str(self.state),
                    "secrets": {"pw": {"value": SECRET}},
                }
            )
        )
        for name, text in (("good", GOOD), ("bad", BAD), ("fallback", FALLBACK)):
            (base / f"{name}.yaml").write_text(dedent(text))

    def cli(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([argv[0], "--config", str(self.config), *argv[1:]])
        out, err = self.capsys.readouterr()
        return code, out, err

    def run(self, *argv: str) -> str:
        code, _, _ = self.cli("run", *argv)
        events = self.journal()
        started = [e for e in events if e["event"] == "run_started"]
        return str(started[-1]["run"])

    def journal(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.state / "journal.jsonl").read_text().splitlines()]


@pytest.fixture
def site(tmp_path: Path, capsys: Any) -> Site:
    return Site(tmp_path, capsys)


def test_history_of_an_empty_journal_says_so(site: Site) -> None:
    code, out, _ = site.cli("history")
    assert code == 0
    assert out.startswith("no runs recorded in ")


def test_history_lists_runs_newest_first_with_node_outcome_and_duration(site: Site) -> None:
    good = site.run("good", "1", "pg1", str(site.base / "flag1"))
    bad = site.run("bad", "2", "pg2", str(site.base / "flag2"))
    exited = site.run("fallback", "pg3")
    code, out, _ = site.cli("history")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["STARTED", "(UTC)", "RUN"]
    assert [r.split()[2] for r in rows] == [exited, bad, good]
    assert "good" in rows[2] and "1 (pg1)" in rows[2] and "succeeded" in rows[2]
    assert "bad" in rows[1] and "2 (pg2)" in rows[1] and "rolled-back" in rows[1]
    assert "fallback" in rows[0] and " pg3 " in rows[0] and "exited 3" in rows[0]
    assert rows[2].rstrip().endswith("s")  # a duration


def test_history_filters_and_limits(site: Site) -> None:
    site.run("good", "1", "pg1", str(site.base / "f1"))
    newest = site.run("good", "2", "pg2", str(site.base / "f2"))
    site.run("bad", "2", "pg2", str(site.base / "f3"))
    _, out, _ = site.cli("history", "--workflow", "good", "--limit", "1")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[2] == newest
    assert lines[2] == "(1 older run(s) not shown; use --limit)"
    _, out, _ = site.cli("history", "--workflow", "nope")
    assert "no runs of workflow 'nope'" in out


def test_show_a_failed_run_step_by_step_with_rollback(site: Site) -> None:
    flag = site.base / "flag"
    run_id = site.run("bad", "2", "pg2", str(flag))
    assert not flag.exists()  # really rolled back
    code, out, _ = site.cli("show", run_id[:6])
    assert code == 0
    assert out.startswith(f"run {run_id}: bad (")
    assert "arguments: 2 pg2 " in out
    assert "skipped (when: target_node_id < 0 was false)" in out
    assert "2. flag (file): succeeded, 1 attempt" in out
    assert "| local:" in out and "touch" in out
    assert "3. poll (local): FAILED, 3 attempts" in out
    assert "attempt 3: failed after" in out and "exit status 3: nope" in out
    assert "result: rc 3" in out
    assert "error: exit status 3: nope" in out
    assert "stderr| nope" in out
    assert "never" not in out  # not reached
    rollback = out.split("rollback, newest first: flag", 1)[1]
    assert "flag: built-in restored" in rollback
    assert "cleanup (local): undo, succeeded, 1 attempt" in rollback
    assert "outcome: rolled-back, exit code 1" in out
    assert "failed step: poll" in out


def test_show_marks_fallbacks_and_exits_and_keeps_secrets_masked(site: Site) -> None:
    run_id = site.run("fallback", "pg3")
    _, out, _ = site.cli("show", run_id)
    assert "1. first_try (local): FAILED" in out
    assert "↳ second_try (local): fallback, succeeded" in out
    assert "$ echo '********'" in out or "$ echo ********" in out
    assert SECRET not in out
    assert "outcome: exited 3, exit code 3" in out
    assert "leaving on purpose" in out


def test_a_run_killed_after_it_started_is_unfinished(site: Site) -> None:
    run_id = site.run("good", "1", "pg1", str(site.base / "flag"))
    journal = site.state / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # run_started, then a torn line
    _, out, _ = site.cli("history")
    assert "unfinished" in out.splitlines()[1] and run_id in out
    _, out, _ = site.cli("show", run_id)
    assert "outcome: unfinished" in out
    assert "no rollback ran" in out


def test_unknown_and_ambiguous_run_ids_exit_2_and_say_what_to_do(site: Site) -> None:
    code, _, err = site.cli("show", "abc")
    assert code == 2 and "the journal has no runs yet" in err and "--config" in err
    site.run("good", "1", "pg1", str(site.base / "f1"))
    code, _, err = site.cli("show", "zzzz")
    assert code == 2
    assert "no run with id 'zzzz'" in err and "pgpool-hook history" in err
    # two runs whose ids share a prefix
    events = site.journal()
    events += [dict(e, run="ab" + e["run"][2:]) for e in events] + [
        dict(e, run="ab" + e["run"][2:][::-1]) for e in events
    ]
    (site.state / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    code, _, err = site.cli("show", "ab")
    assert code == 2 and "matches 2 runs" in err and "more characters" in err


def test_history_uses_the_state_dir_of_the_config(site: Site, tmp_path: Path) -> None:
    site.run("good", "1", "pg1", str(site.base / "f1"))
    other = tmp_path / "other.yaml"
    other.write_text(f"state_dir: {tmp_path / 'elsewhere'}\n")
    site.capsys.readouterr()
    assert main(["history", "--config", str(other)]) == 0
    assert "no runs recorded in " + os.path.join(str(tmp_path / "elsewhere"), "journal.jsonl") in (
        site.capsys.readouterr().out
    )


def test_an_unreadable_journal_says_who_can_read_it(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import journal

    def denied(state_dir: str) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(journal, "runs", denied)
    code, _, err = site.cli("history")
    assert code == 2
    assert "cannot read the journal: Permission denied" in err and "sudo -u postgres" in err


def test_show_cuts_long_rendered_text_unless_full(site: Site) -> None:
    lines = "\n".join(f"line {i}" for i in range(30))
    (site.base / "long.yaml").write_text(
        dedent(
            f"""
            name: long
            params: [dest]
            steps:
              - id: write
                template:
                  dest: "{{{{ dest }}}}"
                  content: {json.dumps(lines)}
            """
        )
    )
    run_id = site.run("long", str(site.base / "out.conf"))
    _, out, _ = site.cli("show", run_id)
    assert "| line 10" in out and "| line 11" not in out
    assert "… 19 more line(s) (--full shows them)" in out
    _, out, _ = site.cli("show", "--full", run_id)
    assert "| line 29" in out and "more line(s)" not in out


def test_show_says_when_a_failed_step_did_not_stop_the_run(site: Site) -> None:
    (site.base / "goes_on.yaml").write_text(
        dedent(
            """
            name: goes_on
            steps:
              - id: rescued
                local: ["false"]
                on_error: plan_b
              - id: warn_only
                local: ["false"]
                on_error: continue
            handlers:
              - id: plan_b
                local: ["true"]
            """
        )
    )
    run_id = site.run("goes_on")
    _, out, _ = site.cli("show", run_id)
    rescued = out.split("1. rescued")[1].split("2. warn_only")[0]
    assert "→ recovered by fallback plan_b; the run went on" in rescued
    assert "→ warn-only (on_error: continue); the run went on" in out.split("2. warn_only")[1]
    assert "outcome: succeeded, exit code 0" in out
    _, out, _ = site.cli("show", site.run("bad", "2", "pg2", str(site.base / "flag")))
    assert "went on" not in out


def test_history_json_for_monitoring(site: Site) -> None:
    good = site.run("good", "1", "pg1", str(site.base / "f1"))
    bad = site.run("bad", "2", "pg2", str(site.base / "f2"))
    code, out, _ = site.cli("history", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["run"] for r in records] == [bad, good]
    assert records[0]["outcome"] == "rolled-back" and records[0]["exit_code"] == 1
    assert records[0]["failed_step"] == "poll" and records[0]["node"] == "2 (pg2)"
    assert records[1]["outcome"] == "succeeded" and records[1]["args"][:2] == ["1", "pg1"]
    assert records[1]["started"].endswith("Z") and "T" in records[1]["started"]
    _, out, _ = site.cli("history", "--json", "--workflow", "nope")
    assert out == ""


def test_show_says_where_a_run_started_with_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    wf = tmp_path / "fr.yaml"
    wf.write_text('name: fr\nsteps:\n  - id: a\n    local: ["true"]\n  - id: b\n    local: ["true"]\n')
    assert main(["run", "--config", str(config), "--from", "b", str(wf)]) == 0
    capsys.readouterr()
    assert main(["history", "--config", str(config), "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out.splitlines()[0])["run"]
    assert main(["show", "--config", str(config), run_id]) == 0
    assert "started at step b (run --from); skipped: a" in capsys.readouterr().out
