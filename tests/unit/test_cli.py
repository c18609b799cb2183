"""The pgpool-hook command: argument pass-through, hook names, exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import validate
from engine.cli import HOOK_NAMES, RUN_OPTIONS, _parse_run, _parser, _split_run, _workflow_path, main
from engine.errors import InvalidInput

from .helpers import dedent

SECRET = "s3cr3t-Pa55"

RECORD = """
name: {name}
params:
  - {{name: node_id, type: int}}
  - host
  - {{name: port, type: int, default: 5432}}
vars:
  greeting: hello
steps:
  - id: record
    template:
      dest: {out}
      content: "{{{{ node_id }}}}|{{{{ host }}}}|{{{{ port }}}}|{{{{ extra_args | join(',') }}}}|{{{{ greeting }}}}"
"""


class Site:
    def __init__(self, base: Path):
        self.base = base
        self.workflows = base / "workflows"
        self.workflows.mkdir()
        self.state = base / "state"
        self.out = base / "out.txt"
        self.config = base / "pgpool-hook.yaml"
        self.write_config()
        for name in ("failover", "follow_primary", "recovery_1st_stage", "remote_start"):
            self.workflow(name, RECORD.format(name=name, out=self.out))

    def write_config(self, **extra: Any) -> None:
        data = {
            "workflows_dir": str(self.workflows),
            "state_dir": str(self.state),
            "lock_timeout": 1,
            "secrets": {"pw": {"value": SECRET}},
            **extra,
        }
        self.config.write_text(yaml.safe_dump(data))

    def workflow(self, name: str, text: str) -> Path:
        path = self.workflows / f"{name}.yaml"
        path.write_text(dedent(text))
        return path

    def recorded(self) -> list[str]:
        return self.out.read_text().split("|")

    def journal(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.state / "journal.jsonl").read_text().splitlines()]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    s = Site(tmp_path)
    monkeypatch.setenv("PGPOOL_HOOK_CONFIG", str(s.config))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    return s


def run(capsys: pytest.CaptureFixture[str], argv: list[str], prog: str | None = None) -> tuple[int, str, str]:
    code = main(argv, prog=prog)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


# ---- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "recorded"),
    [
        (["0", "pg1"], ["0", "pg1", "5432", "", "hello"]),
        (["-1", "", "5433"], ["-1", "", "5433", "", "hello"]),
        ([" 1", "pg1", " 5432", "x"], ["1", "pg1", "5432", "x", "hello"]),  # pgpool 4.4 spaces
        (["1", "pg1", "", "", "-1"], ["1", "pg1", "5432", ",-1", "hello"]),  # empty int: default
        (["--", "pg1"], None),  # `--` is an argument like any other (and not an integer)
        (["1", "--", "", "-h", "--set", "x=y"], ["1", "--", "5432", "-h,--set,x=y", "hello"]),
        (["1", "a b$(touch x)"], ["1", "a b$(touch x)", "5432", "", "hello"]),
    ],
)
def test_arguments_reach_the_workflow_untouched(site, capsys, args, recorded) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, ["run", "failover", *args])
    if recorded is None:
        assert code == 2
        assert "error: <arguments>: argument 1 (node_id) must be an integer, got '--'" in err
        assert not site.out.exists()
    else:
        assert code == 0, err
        assert site.recorded() == recorded


def test_int_param_rejects_text(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, ["run", "failover", "-h", "pg1"])
    assert code == 2
    assert err.splitlines() == [
        "error: <arguments>: argument 1 (node_id) must be an integer, got '-h'",
        "hint: usage: pgpool-hook run failover node_id host port",
    ]


@pytest.mark.parametrize(
    ("prog", "workflow"),
    [
        ("failover.sh", "failover"),
        ("/etc/pgpool2/failover.sh", "failover"),
        ("follow_primary.sh", "follow_primary"),
        ("follow_primary", "follow_primary"),
        ("recovery_1st_stage", "recovery_1st_stage"),
        ("pgpool_remote_start", "remote_start"),
    ],
)
def test_dispatch_by_program_name(site, capsys, prog: str, workflow: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, ["3", "pg3"], prog=prog)
    assert code == 0, err
    assert site.recorded()[:2] == ["3", "pg3"]
    assert [e["workflow"] for e in site.journal() if e["event"] == "run_started"] == [workflow]


def test_hook_name_takes_options_before_the_arguments(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, ["--set", "vars.greeting=hey", "--dry-run", "-1", ""], prog="failover.sh")
    assert code == 0
    assert "|hey" in out and "-1||5432|" in out
    assert not site.out.exists()


def test_every_hook_name_maps_to_a_workflow() -> None:
    assert set(HOOK_NAMES.values()) == {"failover", "follow_primary", "recovery_1st_stage", "remote_start"}


# ---- invalid input: exit 2, a message, no traceback ------------------------------------


def test_broken_workflow_exits_2_before_anything_runs(site, capsys) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(
        "failover", "name: failover\nsteps:\n  - id: a\n    local: ['{{ nope }}']\n  - id: a\n    exit: 0\n"
    )
    code, _, err = run(capsys, ["run", "failover", "1"])
    assert code == 2
    assert f"error: {path}:4:13: steps[0].local[0]: undefined variable 'nope'" in err
    assert f"error: {path}:5:5: steps[1].id: duplicate step id 'a' (first at line 3)" in err
    assert "2 errors; nothing was run" in err
    assert not (site.state / "journal.jsonl").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("ssh:\n  prot: 22\n", ":2:3: ssh.prot: unknown key 'prot' (did you mean 'port'?)"),
        (
            "ssh:\n  host_key_policy: maybe\n",
            "ssh.host_key_policy: 'maybe' is not one of 'strict', 'accept-new', 'ignore'",
        ),
        ("- a\n", ":1:1: the config must be a YAML mapping of settings"),
        ("a: [\n", "not valid YAML"),
        ("lock_timeout: soon\n", "lock_timeout: expected number, got a string 'soon'"),
    ],
)
def test_broken_config_exits_2(site, capsys, config: str, message: str) -> None:  # type: ignore[no-untyped-def]
    site.config.write_text(config)
    code, _, err = run(capsys, ["run", "failover", "1", "h"])
    assert code == 2
    assert message in err
    assert "hint: fix the config file (see docs/configuration.md)" in err


def test_missing_config_file_exits_2(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, ["run", "--config", str(site.base / "nope.yaml"), "failover", "1", "h"])
    assert code == 2
    assert "nope.yaml: cannot read file: No such file or directory" in err


def test_unknown_workflow_name(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, ["run", "failovr", "1", "h"])
    assert code == 2
    assert (
        f"error: <arguments>: no workflow named 'failovr' in {site.workflows} (did you mean 'failover'?)"
        in err
    )


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("vars", "--set 'vars': expected KEY=VALUE, e.g. --set ssh.port=2222"),
        ("a..b=1", "--set 'a..b=1': the key must be dotted names"),
        ("ssh.prot=22", "--set: ssh.prot: unknown key 'prot' (did you mean 'port'?)"),
    ],
)
def test_bad_set_exits_2(site, capsys, pair: str, message: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, ["run", "--set", pair, "failover", "1", "h"])
    assert code == 2
    assert message in err


@pytest.mark.parametrize("argv", [["run"], ["run", "--config"], ["frobnicate"], ["schema", "nope"]])
def test_usage_errors_exit_2(site, capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert "usage: pgpool-hook" in err and "Traceback" not in err


def test_no_command_prints_help_and_exits_2(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, [])
    assert code == 2
    assert "usage: pgpool-hook" in out


# ---- run, --set, dry-run ---------------------------------------------------------------


def test_set_overrides_a_var_for_one_run(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, _ = run(capsys, ["run", "--set", "vars.greeting=bonjour", "failover", "1", "h"])
    assert code == 0
    assert site.recorded()[-1] == "bonjour"
    run(capsys, ["run", "failover", "1", "h"])
    assert site.recorded()[-1] == "hello"


def test_dry_run_shows_and_changes_nothing(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, ["run", "--dry-run", "failover", "-1", "", "", "x"])
    assert code == 0
    assert f"--- local:{site.out}" in out
    assert "    -1||5432|x|hello" in out
    assert "would run 1 step(s): 1 template on this host; nothing was changed" in out
    assert not site.out.exists() and not site.state.exists()


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ("  - id: a\n    local: ['true']\n", 0),
        ("  - id: a\n    local: ['false']\n", 1),
        ("  - id: a\n    exit: {code: 4, message: chosen}\n", 4),
        ("  - id: a\n    local: ['false']\n    undo: u\nhandlers:\n  - id: u\n    local: ['false']\n", 3),
    ],
)
def test_exit_codes_of_a_run(site, capsys, steps: str, code: int) -> None:  # type: ignore[no-untyped-def]
    site.workflow("w", "name: w\nsteps:\n" + steps)
    got, _, err = run(capsys, ["run", "w"])
    assert got == code, err
    finished = [e for e in site.journal() if e["event"] == "run_finished"]
    assert [e["exit_code"] for e in finished] == [code]


# ---- validate and schema ---------------------------------------------------------------


def test_validate_ok_and_broken(site, capsys) -> None:  # type: ignore[no-untyped-def]
    good = site.workflows / "failover.yaml"
    bad = site.workflow("bad", "name: bad\nsteps:\n  - id: a\n    local: [x]\n    retyr: 1\n")
    code, out, err = run(capsys, ["validate", str(good)])
    assert (code, out, err) == (0, f"ok: {good}\n", "")
    code, out, err = run(capsys, ["validate", str(good), str(bad)])
    assert code == 2
    assert out == f"ok: {good}\n"
    assert err.splitlines() == [
        f"error: {bad}:5:5: steps[0].retyr: unknown key 'retyr' (did you mean 'retry'?)",
        "1 error(s); fix them and run validate again",
    ]


def test_validate_without_files_checks_the_workflows_folder(site, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, ["validate"])
    assert code == 0
    assert out.splitlines() == [
        f"ok: {site.workflows / n}.yaml"
        for n in ("failover", "follow_primary", "recovery_1st_stage", "remote_start")
    ]


def test_validate_reports_a_broken_config_too(site, capsys) -> None:  # type: ignore[no-untyped-def]
    site.config.write_text("ssh: {prot: 1}\n")
    code, _, err = run(capsys, ["validate", str(site.workflows / "failover.yaml")])
    assert code == 2
    assert "ssh.prot: unknown key 'prot'" in err


@pytest.mark.parametrize("which", ["workflow", "config"])
def test_schema_prints_json(capsys, which: str) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, ["schema", which])
    doc = json.loads(out)
    assert code == 0
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["title"] == f"pgpool-hook {'workflow' if which == 'workflow' else 'configuration'}"


def test_workflow_schema_is_the_default_and_lists_every_step_kind(capsys) -> None:  # type: ignore[no-untyped-def]
    _, default, _ = run(capsys, ["schema"])
    code, out, _ = run(capsys, ["schema", "workflow"])
    assert (code, default) == (0, out)
    props = json.loads(out)["properties"]["steps"]["items"]["properties"]
    assert {"sql", "ssh", "template", "file", "local", "exit"} <= set(props)
    assert {"id", "when", "needs", "retry", "timeout", "on_error", "undo", "guard"} <= set(props)


# ---- secrets are masked everywhere ------------------------------------------------------

SECRET_WORKFLOW = """
name: w
params: [host]
steps:
  - id: show
    local: ["echo", "password={{{{ secrets.pw }}}}"]
  - id: conf
    template:
      dest: {dest}
      content: "password={{{{ secrets.pw }}}} host={{{{ host }}}}"
  - id: fail
    local: ["sh", "-c", "echo {{{{ secrets.pw | trusted }}}} >&2; exit 1"]
"""


def test_secret_never_appears_in_stderr_journal_or_dry_run(site, capsys) -> None:  # type: ignore[no-untyped-def]
    dest = site.base / "conf"
    site.workflow("w", SECRET_WORKFLOW.format(dest=dest))
    code, out, err = run(capsys, ["run", "--dry-run", "w", "pg1"])
    assert code == 0
    assert "password=********" in out
    assert SECRET not in out + err
    code, out, err = run(capsys, ["run", "w", "pg1"])
    assert code == 1
    assert not dest.exists()  # the template step was rolled back: the file did not exist before
    journal = (site.state / "journal.jsonl").read_text()
    assert "stdout| password=********" in err
    assert "stderr| ********" in err
    assert SECRET not in err + out + journal
    assert "********" in journal


def test_output_to_a_closed_pipe_is_not_an_internal_error() -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "schema"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that already left
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 1
    assert err == ""


# ---- the start of a hook -----------------------------------------------------------------

RUN_ARGVS = [
    ["run", "failover"],
    ["run", "failover", "0", "pg1", "-1", "", "--set", "x=y", "--", "-h", "--help"],
    ["run", "--config", "c.yaml", "--dry-run", "--diff", "wf.yaml", "1"],
    ["run", "--config=c.yaml", "--config", "d.yaml", "failover"],
    ["run", "--config=", "failover", "1"],
    ["run", "--config", "", "failover"],
    ["run", "--set", "a=1", "--set=b=2", "--set", "c=", "--from", "stop", "follow_primary", "3"],
    ["run", "--from=stop", "a=b", "--dry-run"],
    ["run", "", "1"],
]


def _argparse(argv: list[str]) -> dict[str, Any]:
    head, hook_args = _split_run(argv)
    opts = _parser().parse_args(head)
    if hook_args is not None:
        opts.args = hook_args
    return vars(opts)


@pytest.mark.parametrize("argv", RUN_ARGVS)
def test_run_is_parsed_as_argparse_parses_it(argv: list[str]) -> None:
    fast = _parse_run(argv)
    assert fast is not None
    assert vars(fast) == _argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["validate"],
        ["run"],
        ["run", "--config"],
        ["run", "--dry-run"],
        ["run", "--help", "failover"],
        ["run", "--conf", "c.yaml", "failover"],  # an abbreviation argparse takes
        ["run", "--config", "-c", "failover"],
        ["run", "--dry-run=yes", "failover"],
        ["run", "--", "failover"],
        ["run", "-", "failover"],
    ],
)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert _parse_run(argv) is None


def test_the_hand_parser_knows_every_option_of_run() -> None:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    options = {
        name: (action.dest, action.nargs != 0)
        for action in sub.choices["run"]._actions
        for name in action.option_strings
        if action.dest != "help"
    }
    assert options == RUN_OPTIONS


def test_a_warm_run_imports_only_what_it_uses(site: Site, tmp_path: Path) -> None:
    """What a hook's start costs: none of these on a warm run of a step that renders nothing."""
    heavy = ["argparse", "yaml", "jsonschema", "jinja2", "hashlib", "uuid", "subprocess", "difflib"]
    heavy += ["engine.validate", "engine.source", "engine.resume", "paramiko", "psycopg"]
    site.config.write_text(f"workflows_dir: {site.workflows}\nstate_dir: {site.state}\n")
    site.workflow("noop", "name: noop\nsteps:\n  - id: done\n    exit: {code: 0, message: nothing}\n")
    code = (
        "import sys\nfrom engine.cli import main\n"
        f"assert main(['run', 'noop']) == 0\nprint(sorted(set({heavy!r}) & set(sys.modules)))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    for _ in range(2):  # the first run fills the caches
        proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["failover", "only_yml", "nope", "x.yaml", "sub/wf", "wf.yml"])
def test_a_workflow_is_found_where_validate_finds_it(site: Site, name: str) -> None:
    (site.workflows / "only_yml.yml").write_text("name: only_yml\n")
    try:
        expected = validate.resolve_workflow_path(name, str(site.workflows))
    except InvalidInput as exc:
        with pytest.raises(InvalidInput, match=re.escape(exc.problems[0].message)):
            _workflow_path(name, str(site.workflows))
    else:
        assert _workflow_path(name, str(site.workflows)) == expected
