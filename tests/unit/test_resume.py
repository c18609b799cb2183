"""resume RUN_ID and run --from STEP: real runs of local/file/exit steps in a temporary site."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main
from engine.lock import RunLock

from .helpers import dedent

# Five steps; each appends its name to out.txt, so a step that ran twice shows twice.
# s3 fails until the flag file exists; s4 reads s1's result. s2 keeps its change on rollback.
WORKFLOW = """
name: five
params: [node]
vars:
  out: "{out}"
  flag: "{flag}"
steps:
  - id: s1
    local: {{command: "echo s1-{{{{ node }}}} | tee -a {{{{ out }}}}", shell: true}}
  - id: s2
    file: {{path: "{touched}", state: touch, revert: false}}
  - id: s3
    local: {{command: "test -e {{{{ flag }}}} && echo s3 >> {{{{ out }}}}", shell: true}}
  - id: s4
    local: {{command: "echo s4 {{{{ steps.s1.stdout | trim }}}} >> {{{{ out }}}}", shell: true}}
  - id: s5
    local: {{command: "echo s5 >> {{{{ out }}}}", shell: true}}
"""


class Site:
    def __init__(self, base: Path):
        self.base = base
        self.workflows = base / "workflows"
        self.workflows.mkdir()
        self.state = base / "state"
        self.out = base / "out.txt"
        self.flag = base / "flag"
        self.config = base / "pgpool-hook.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {"workflows_dir": str(self.workflows), "state_dir": str(self.state), "lock_timeout": 1}
            )
        )
        self.path = self.workflows / "five.yaml"
        self.path.write_text(dedent(WORKFLOW.format(out=self.out, flag=self.flag, touched=base / "touched")))

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def journal(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.state / "journal.jsonl").read_text().splitlines()]

    def runs(self) -> list[dict[str, Any]]:
        return [e for e in self.journal() if e["event"] == "run_started"]

    def edit(self, old: str, new: str) -> None:
        text = self.path.read_text()
        assert old in text
        self.path.write_text(text.replace(old, new))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    s = Site(tmp_path)
    monkeypatch.setenv("PGPOOL_HOOK_CONFIG", str(s.config))
    return s


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def failed_run(site: Site, capsys: pytest.CaptureFixture[str]) -> str:
    code, err = cli(capsys, "run", "five", "n1")
    assert code == 1, err
    assert site.lines() == ["s1-n1"]
    return str(site.runs()[-1]["run"])


def test_run_started_records_what_resume_needs(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "run", "--set", "vars.flag=/nonexistent", "five", "n1")
    started = site.runs()[-1]
    assert started["config"] == str(site.config)
    assert started["overrides"] == {"vars": {"flag": "/nonexistent"}}
    assert list(started["step_digests"]) == ["s1", "s2", "s3", "s4", "s5"]
    assert len(started["workflow_digest"]) == 16
    assert started["from_step"] is None and started["resumed_from"] is None


def test_resume_skips_done_steps_and_restores_their_results(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    rid = failed_run(site, capsys)
    site.flag.touch()  # fix what made s3 fail
    code, err = cli(capsys, "resume", rid)
    assert code == 0, err
    # s1 did not run again (one line), s3 to s5 ran, and s4 read s1's restored result
    assert site.lines() == ["s1-n1", "s3", "s4 s1-n1", "s5"]
    assert f"outcome=resuming run {rid} from step s3" in err
    assert f"workflow unchanged since run {rid}" in err
    started = site.runs()[-1]
    assert (started["resumed_from"], started["done"], started["args"]) == (rid, ["s1", "s2"], ["n1"])
    steps = [e["step"] for e in site.journal() if e["event"] == "step" and e["run"] == started["run"]]
    assert steps == ["s3", "s4", "s5"]


def test_resume_of_a_resume_keeps_the_first_results(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    rid = failed_run(site, capsys)
    site.flag.touch()
    site.edit("echo s5 >> {{ out }}", "exit 7")  # s5 fails now: a change after the failed step
    code, err = cli(capsys, "resume", rid)
    assert code == 1
    assert "only in steps that run again (s5): safe to resume" in err
    second = str(site.runs()[-1]["run"])
    site.edit("exit 7", "echo s5 {{ steps.s1.stdout | trim }} >> {{ out }}")
    code, err = cli(capsys, "resume", second)
    assert code == 0, err
    # the third run ran only s5, which still read s1's result from the first run
    assert site.lines() == ["s1-n1", "s3", "s4 s1-n1", "s5 s1-n1"]
    assert site.runs()[-1]["done"] == ["s1", "s2", "s3", "s4"]


def test_resume_refused_when_a_done_step_changed(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    rid = failed_run(site, capsys)
    site.edit("echo s1-", "echo S1-")
    code, err = cli(capsys, "resume", rid)
    assert code == 2
    assert f"step s1 changed since run {rid} (its definition, or its `needs`" in err
    assert "it would be skipped as already done, so the change would never take effect" in err
    assert site.lines() == ["s1-n1"]
    assert len(site.runs()) == 1  # nothing ran, not even a run_started


def test_resume_allowed_after_editing_a_later_step(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    rid = failed_run(site, capsys)
    site.edit("echo s5 >>", "echo s5-edited >>")
    site.flag.touch()
    code, err = cli(capsys, "resume", rid)
    assert code == 0, err
    assert site.lines() == ["s1-n1", "s3", "s4 s1-n1", "s5-edited"]
    assert f"workflow changed since run {rid} only in steps that run again (s5): safe to resume" in err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "id: s2",
            "id: s2b",
            "step s2 was done in run {rid} but is no longer in the workflow (removed or renamed)",
        ),
        (
            "  - id: s2\n    file:",
            "  - id: s0\n    local: [echo, s0]\n  - id: s2\n    file:",
            "step s2 changed since run {rid}",  # it now follows s0: its implicit needs changed
        ),
    ],
)
def test_resume_refused_when_done_steps_were_renamed_or_reordered(
    site: Site, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    rid = failed_run(site, capsys)
    site.edit(old, new)
    code, err = cli(capsys, "resume", rid)
    assert code == 2
    assert message.format(rid=rid) in err


def test_resume_refused_when_done_steps_swap_order(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    rid = failed_run(site, capsys)
    text = site.path.read_text()
    s1 = text[text.index("  - id: s1") : text.index("  - id: s2")]
    s2 = text[text.index("  - id: s2") : text.index("  - id: s3")]
    site.path.write_text(text.replace(s1 + s2, s2 + s1))
    code, err = cli(capsys, "resume", rid)
    assert code == 2
    assert f"the order of the steps done in run {rid} changed (s1, s2 -> s2, s1)" in err


def test_resume_refuses_succeeded_unknown_and_running_runs(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli(capsys, "resume", "nosuchrun")
    assert code == 2
    assert "no run 'nosuchrun'" in err
    site.flag.touch()
    assert cli(capsys, "run", "five", "n1")[0] == 0
    rid = str(site.runs()[-1]["run"])
    code, err = cli(capsys, "resume", rid)
    assert code == 2
    assert f"run {rid} ended with exit 0 (succeeded): there is nothing to resume" in err
    code, err = cli(capsys, "resume", "nosuchrun")
    assert "no run with id 'nosuchrun'" in err
    # a run that is still going: run_started without run_finished, and its lock held
    with (site.state / "journal.jsonl").open("a") as fh:
        fh.write(
            json.dumps({"run": "live1", "event": "run_started", "workflow": "five", "lock": "five"}) + "\n"
        )
    lock = RunLock(str(site.state), "five")
    lock.acquire(1)
    try:
        code, err = cli(capsys, "resume", "live1")
    finally:
        lock.release()
    assert code == 2
    assert "run live1 is still running" in err


def test_resume_reruns_a_step_the_rollback_undid(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.edit(
        "state: touch, revert: false}\n",
        "state: touch, revert: false}\n    undo: forget\n",
    )
    site.path.write_text(
        site.path.read_text()
        + "handlers:\n  - id: forget\n    local: {command: 'echo undo >> {{ out }}', shell: true}\n"
    )
    rid = failed_run_lines(site, capsys, ["s1-n1", "undo"])
    site.flag.touch()
    code, err = cli(capsys, "resume", rid)
    assert code == 0, err
    assert f"run again because the rollback of run {rid} undid them: s2" in err
    assert site.runs()[-1]["done"] == ["s1"]


def failed_run_lines(site: Site, capsys: pytest.CaptureFixture[str], lines: list[str]) -> str:
    code, err = cli(capsys, "run", "five", "n1")
    assert code == 1, err
    assert site.lines() == lines
    return str(site.runs()[-1]["run"])


# ---- run --from ------------------------------------------------------------------------


def test_from_starts_at_the_named_step(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.edit("{{ steps.s1.stdout | trim }}", "direct")
    code, err = cli(capsys, "run", "--from", "s4", "five", "n1")
    assert code == 0, err
    assert site.lines() == ["s4 direct", "s5"]
    assert "--from s4: treating as done without running: s1, s2, s3" in err
    started = site.runs()[-1]
    assert (started["from_step"], started["done"]) == ("s4", ["s1", "s2", "s3"])


def test_from_refuses_when_a_later_step_reads_a_skipped_result(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli(capsys, "run", "--from", "s3", "five", "n1")
    assert code == 2
    assert (
        "s4: step s4 reads steps.s1, but --from s3 skips s1, so it has no result; start at s1 or earlier"
        in err
    )
    assert not site.out.exists() and not (site.state / "journal.jsonl").exists()


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("s33", "five has no step 's33' (did you mean 's3'?)"),
        ("zzz", "five has no step 'zzz'; its steps: s1, s2"),
    ],
)
def test_from_an_unknown_step(
    site: Site, capsys: pytest.CaptureFixture[str], step: str, message: str
) -> None:
    code, err = cli(capsys, "run", "--from", step, "five", "n1")
    assert code == 2
    assert message in err


def test_from_follows_needs_not_only_file_order(tmp_path: Path) -> None:
    from engine import resume, validate

    path = tmp_path / "w.yaml"
    path.write_text(
        dedent(
            """
            name: w
            steps:
              - {id: a, local: ["true"], needs: [c]}
              - {id: b, local: ["true"], needs: []}
              - {id: c, local: ["true"], needs: [b]}
              - {id: d, local: ["true"], needs: [b]}
            """
        )
    )
    wf = validate.load_workflow(str(path))
    assert resume.from_step(wf, "c").done == {"b"}  # a needs c, so it still runs after it
    assert resume.from_step(wf, "d").done == {"a", "b", "c"}


def test_from_on_the_shipped_follow_primary() -> None:
    from engine import resume, validate

    root = Path(__file__).resolve().parents[2]
    wf = validate.load_workflow(str(root / "workflows" / "follow_primary.yaml"))
    assert resume.from_step(wf, "rewind").done == {
        "node_status",
        "skip_stopped_node",
        "checkpoint",
        "create_slot",
        "stop_node",
    }
    assert resume.from_step(wf, "node_status").done == set()


def test_resume_does_not_run_past_a_deliberate_exit(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.edit(
        "  - id: s3\n",
        "  - id: stop\n    when: node == 'halt'\n    exit: {code: 4, message: halted}\n  - id: s3\n",
    )
    code, err = cli(capsys, "run", "five", "halt")
    assert code == 4, err
    rid = str(site.runs()[-1]["run"])
    site.flag.touch()
    code, err = cli(capsys, "resume", rid)
    assert code == 4, err  # the exit step decided again, with the same arguments
    assert site.lines() == ["s1-halt"]
    assert site.runs()[-1]["done"] == ["s1", "s2"]


def test_resume_refused_when_a_step_is_inserted_before_done_steps(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    rid = failed_run(site, capsys)
    site.edit("steps:\n", "steps:\n  - id: fence\n    local: [echo, fence]\n    needs: []\n")
    code, err = cli(capsys, "resume", rid)
    assert code == 2
    assert f"step fence is new since run {rid} and comes before s1, s2, done in that run" in err


def test_resume_reuses_overrides_but_not_masked_secrets(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first run looks for the flag somewhere else (--set), and fails at s3
    code, _ = cli(capsys, "run", "--set", f"vars.flag={site.base / 'other'}", "five", "n1")
    assert code == 1
    rid = str(site.runs()[-1]["run"])
    site.flag.touch()  # the default flag: not what the run looks for
    assert cli(capsys, "resume", rid)[0] == 1  # same --set again: still failing
    assert site.runs()[-1]["overrides"] == {"vars": {"flag": str(site.base / "other")}}
    (site.base / "other").touch()
    assert cli(capsys, "resume", str(site.runs()[-1]["run"]))[0] == 0
    # a --set value that is a secret is masked in the journal: resume wants it again
    site.config.write_text(site.config.read_text() + "secrets: {pw: {value: hunter2hunter2}}\n")
    code, _ = cli(capsys, "run", "--set", "vars.flag=hunter2hunter2", "five", "n1")
    assert code == 1
    rid = str(site.runs()[-1]["run"])
    code, err = cli(capsys, "resume", rid)
    assert code == 2
    assert "was started with --set values that are secrets (masked in the journal)" in err
    code, err = cli(capsys, "resume", "--set", f"vars.flag={site.flag}", rid)
    assert code == 0, err
