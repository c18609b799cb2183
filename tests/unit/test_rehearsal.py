"""Rehearsal cases: the shipped ones pass, a wrong expectation fails readably, a bad file is exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main

from .helpers import dedent

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted((ROOT / "workflows" / "tests").glob("*.yaml"))
WORKFLOWS = ("failover", "follow_primary", "recovery_1st_stage", "remote_start")

FP_ARGS = '["2", "pg3", "5432", "/var/lib/postgresql/15/main", "1", "pg2", "0", "0", "5432", ""]'


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config: built-in defaults, whatever the machine has in /etc."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    monkeypatch.delenv("PGPOOL_HOOK_CONFIG", raising=False)
    return path


def rehearse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["test", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def case(tmp_path: Path, text: str, name: str = "case.yaml") -> str:
    path = tmp_path / "tests" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(dedent(text))
    return str(path)


def test_every_workflow_has_shipped_cases() -> None:
    names = {p.read_text().split("workflow:", 1)[1].split()[0] for p in CASES}
    assert names == set(WORKFLOWS)
    assert len(CASES) >= 19


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_shipped_case_passes(capsys: pytest.CaptureFixture[str], config: Path, path: Path) -> None:
    code, out, err = rehearse(capsys, "--config", str(config), str(path))
    assert code == 0, out + err
    assert out.startswith("ok    ")
    assert out.splitlines()[-1] == "1 case(s): 1 ok, 0 failed"


def test_without_arguments_every_case_in_the_workflows_tests_folder_runs(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, _ = rehearse(capsys, "--config", str(config))
    assert code == 0
    assert out.splitlines()[-1] == f"{len(CASES)} case(s): {len(CASES)} ok, 0 failed"


def test_a_wrong_sequence_fails_with_a_diff(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    path = case(
        tmp_path,
        f"""
        workflow: {ROOT}/workflows/follow_primary.yaml
        args: {FP_ARGS}
        results:
          create_slot: {{row: {{created: true}}}}
          rewind: {{fail: "exit status 1: could not connect"}}
        expect:
          steps: [node_status, checkpoint, create_slot, stop_node, rewind, clean_replslot]
          exit: 0
        """,
    )
    code, out, _ = rehearse(capsys, "--config", str(config), path)
    assert code == 1
    assert out.splitlines() == [
        f"FAIL  {path}",
        "      steps differ (- expected, + actual):",
        "          node_status",
        "          checkpoint",
        "          create_slot",
        "          stop_node",
        "          rewind",
        "        - clean_replslot",
        "        + drop_created_slot",
        "      exit code: expected 0, got 1",
        "      run ended: rolled-back exit=1: step rewind failed: exit status 1: could not connect; rolled back",
        "1 case(s): 0 ok, 1 failed",
    ]


def test_wrong_rendering_attempts_and_skips_are_reported(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    path = case(
        tmp_path,
        f"""
        workflow: {ROOT}/workflows/follow_primary.yaml
        args: {FP_ARGS}
        results:
          node_status: {{rc: 2}}
        expect:
          steps: [node_status, skip_stopped_node]
          skipped: [checkpoint]
          attempts: {{node_status: 2}}
          exit: 0
          rendered:
            node_status: {{command: {{contains: "-p 5433"}}}}
            skip_stopped_node: {{nope: 1}}
            create_slot: {{params: {{slot: pg3}}}}
        """,
    )
    code, out, _ = rehearse(capsys, "--config", str(config), path)
    assert code == 1
    assert "        - checkpoint" in out
    assert "      attempts of node_status: expected 2, got 1" in out
    assert "      rendered node_status.command: expected {'contains': '-p 5433'}, got [" in out
    assert "      rendered skip_stopped_node.nope: no such field; fields: code, message, " in out
    assert "      rendered create_slot: the step was never applied, so nothing was rendered" in out


def test_a_retried_step_takes_successive_results_and_the_last_repeats(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    path = case(
        tmp_path,
        f"""
        workflow: {ROOT}/workflows/remote_start.yaml
        args: [pg3, /var/lib/postgresql/15/main]
        results:
          verify_running: [{{rc: 3}}, {{error: "socket closed"}}, {{rc: 0}}, {{rc: 3}}]
        expect:
          steps: [start, verify_running]
          attempts: {{verify_running: 3}}
          exit: 0
        """,
    )
    assert rehearse(capsys, "--config", str(config), path)[0] == 0


def test_bad_arguments_are_the_run_exit_2(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    path = case(
        tmp_path,
        f"""
        workflow: {ROOT}/workflows/remote_start.yaml
        args: [pg3]
        expect: {{steps: [], exit: 2}}
        """,
    )
    assert rehearse(capsys, "--config", str(config), path)[0] == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "workflow: remote_start\nargs: [a, b]\nexpect: {steps: [start], exit: 0, stpes: []}\n",
            "case.yaml:3:35: expect.stpes: unknown key 'stpes' (did you mean 'steps'?)",
        ),
        (
            "workflow: remote_start\nargs: [a, b]\nresults:\n  strat: {rc: 0}\nexpect: {steps: [], exit: 0}\n",
            "case.yaml:4:3: results.strat: remote_start has no step 'strat' (did you mean 'start'?)",
        ),
        (
            "workflow: remote_start\nargs: [a, b]\nexpect:\n  steps: [start, verify]\n  exit: 0\n",
            "case.yaml:4:18: expect.steps[1]: remote_start has no step 'verify' (did you mean 'verify_running'?)",
        ),
        (
            "workflow: remote_strat\nargs: [a, b]\nexpect: {steps: [], exit: 0}\n",
            "case.yaml:1:1: workflow: no workflow named 'remote_strat'",
        ),
        (
            "workflow: remote_start\nargs: [a, b]\nresults:\n  start: {rc: zero}\nexpect: {steps: [], exit: 0}\n",
            "case.yaml:4:11: results.start.rc: expected integer, got a string 'zero'",
        ),
        (
            "workflow: remote_start\nargs: [a, b]\nset: {vars.start_timeout: 5, postgres.bindir: x}\n"
            "expect: {steps: [], exit: 0}\n",
            "case.yaml:3:30: set.postgres.bindir: unknown key 'bindir' (did you mean 'bin_dir'?)",
        ),
        ("workflow: [remote_start\n", "case.yaml:2:1: not valid YAML"),
    ],
)
def test_invalid_case_file_is_exit_2_with_file_and_line(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path, text: str, message: str
) -> None:
    wf = tmp_path / "remote_start.yaml"
    wf.write_text((ROOT / "workflows" / "remote_start.yaml").read_text())
    path = case(tmp_path, text)
    code, out, err = rehearse(capsys, "--config", str(config), path)
    assert code == 2
    assert out.splitlines()[0] == f"INVALID {path}"
    assert f"error: {tmp_path}/tests/{message}" in err, err


def test_no_cases_is_exit_2(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    code, _, err = rehearse(capsys, "--config", str(config), str(tmp_path / "none"))
    assert code == 2
    assert f"no rehearsal cases (*.yaml) in {tmp_path / 'none'}" in err


def test_rehearsal_touches_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection, no process, no file: the real apply of every kind would blow up here."""
    from engine.steps import KINDS

    for kind in KINDS.values():
        if not getattr(kind, "ends_run", False):
            monkeypatch.setattr(kind, "apply", lambda *a, **k: pytest.fail("a real apply ran"))
    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    code, out, _ = rehearse(capsys, "--config", str(cfg), str(ROOT / "workflows" / "tests"))
    assert code == 0, out
    assert not state.exists()


def test_the_example_in_the_docs_is_a_passing_case(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    import re

    example = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "rehearsal.md").read_text(), re.S)[0]
    path = tmp_path / "example.yaml"
    path.write_text(
        example.replace("workflow: follow_primary", f"workflow: {ROOT}/workflows/follow_primary.yaml")
    )
    code, out, err = rehearse(capsys, "--config", str(config), str(path))
    assert code == 0, out + err


def test_verbose_prints_the_rehearsed_run_log(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = rehearse(
        capsys, "--config", str(config), "-v", str(ROOT / "workflows" / "tests" / "remote_start_starts.yaml")
    )
    assert code == 0
    assert "      | " in out
    assert "step=verify_running attempt=1 outcome=failed exit status 3: pg_ctl: no server running" in out


def test_checked_in_case_schema_is_the_one_the_code_uses() -> None:
    import json

    from engine.rehearsal import CASE_SCHEMA

    path = ROOT / "schema" / "case.schema.json"
    assert json.loads(path.read_text()) == CASE_SCHEMA, (
        "schema/case.schema.json is stale: write json.dumps(engine.rehearsal.CASE_SCHEMA, indent=2) to it"
    )


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_shipped_case_names_its_schema_for_editors(path: Path) -> None:
    assert path.read_text().startswith("# yaml-language-server: $schema=../../schema/case.schema.json\n")
