"""Every class of bad input, through the command as pgpool runs it: exit 2, located, nothing ran.

Each broken workflow starts with a step that would create a marker file, and each broken
config or argument list is given to a workflow that would; the marker must stay absent and
no run may be journaled.  Messages are checked for the file, line and field they name.
(The finer cases of each class are tables in test_source.py, test_validate.py and
test_context.py; this file proves the classes end to end.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine import source, validate
from engine.cli import main
from engine.validate import MAX_STEPS

TOUCH = "  - id: first\n    local: [touch, '{m}']\n"
HEAD = "name: w\nparams: [host, {name: node_id, type: int}]\nsteps:\n" + TOUCH


class Site:
    def __init__(self, base: Path):
        self.base = base
        self.workflows = base / "workflows"
        (self.workflows / "templates").mkdir(parents=True)
        self.state = base / "state"
        self.marker = base / "marker"
        self.config = base / "pgpool-hook.yaml"
        self.config.write_text(f"workflows_dir: {self.workflows}\nstate_dir: {self.state}\nlock_timeout: 1\n")

    def workflow(self, text: str, name: str = "w.yaml") -> Path:
        path = self.workflows / name
        path.write_text(text.replace("{m}", str(self.marker)))
        return path

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        code = main(["run", "--config", str(self.config), *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in err
        return code, err

    def nothing_ran(self) -> bool:
        return not self.marker.exists() and not (self.state / "journal.jsonl").exists()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.delenv("PGPOOL_HOOK_CONFIG", raising=False)
    return Site(tmp_path)


DEEP = "name: w\nsteps:\n" + TOUCH + "vars:\n  v: " + "[" * 70 + "]" * 70 + "\n"
BOMB_VARS = "vars:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)
BOMB = "name: w\nsteps:\n" + TOUCH + BOMB_VARS
LONG_CYCLE = (  # needs through 499 steps back to the first: once a RecursionError, exit 1
    "name: w\nsteps:\n"
    + TOUCH.replace("]\n", "]\n    needs: [s0]\n")
    + "".join(f"  - {{id: s{i}, local: [x], needs: [s{i + 1}]}}\n" for i in range(498))
    + "  - {id: s498, local: [x], needs: [s0]}\n"
)

# (id, workflow text, (line, column or None, yaml path, message fragment)); {m} is the marker
WORKFLOWS = [
    ("empty", "", (1, 1, "", "file is empty: expected a YAML mapping")),
    ("only-comments", "# name: w\n", (1, 1, "", "no content (only comments?): expected a YAML mapping")),
    ("not-yaml", HEAD + "  - id: b\n    local: [x\n", (8, 1, "", "not valid YAML")),
    (
        "not-a-mapping",
        "- id: first\n  local: [touch, '{m}']\n",
        (1, 1, "", "must be a YAML mapping, got a list"),
    ),
    (
        "tab",
        HEAD + "  - id: b\n\tlocal: [x]\n",
        (7, 1, "", "tab character: YAML indentation must use spaces"),
    ),
    (
        "duplicate-key",
        HEAD + "  - id: b\n    local: [x]\n    local: [y]\n",
        (8, 5, "local", "duplicate key (first defined at line 7)"),
    ),
    (
        "unknown-key",
        HEAD + "  - id: b\n    local: [x]\n    retyr: {attempts: 2}\n",
        (8, 5, "steps[1].retyr", "unknown key 'retyr' (did you mean 'retry'?)"),
    ),
    (
        "wrong-type",
        HEAD + "  - id: b\n    local: [x]\n    timeout: soon\n",
        (8, 5, "steps[1].timeout", "expected number, got a string 'soon'"),
    ),
    (
        "unknown-kind",
        HEAD + "  - id: b\n    shell: [x]\n",
        (7, 5, "steps[1].shell", "unknown key 'shell'; allowed: description, exit, file"),
    ),
    ("missing-id", HEAD + "  - local: [x]\n", (6, 5, "steps[1]", "'id' is required")),
    (
        "missing-sql-host",
        HEAD + "  - id: b\n    sql: {statement: CHECKPOINT}\n",
        (7, 5, "steps[1].sql", "'host' is required"),
    ),
    (
        "duplicate-id",
        HEAD + "  - id: first\n    local: [x]\n",
        (6, 5, "steps[1].id", "duplicate step id 'first' (first at line 4)"),
    ),
    (
        "needs-cycle",
        HEAD + "  - id: b\n    local: [x]\n    needs: c\n  - id: c\n    local: [y]\n    needs: b\n",
        (8, 5, "steps[1].needs", "`needs` forms a cycle: b -> c -> b"),
    ),
    (
        "undefined-variable",
        HEAD + "  - id: b\n    local: ['{{ hots }}']\n",
        (7, 13, "steps[1].local[0]", "undefined variable 'hots' (did you mean 'host'?)"),
    ),
    (
        "jinja-syntax",
        HEAD + "  - id: b\n    local: ['{{ host }']\n",
        (7, 13, "steps[1].local[0]", "Jinja2 syntax error: unexpected '}'"),
    ),
    (
        "template-missing",
        HEAD + "  - id: b\n    template: {src: templates/gone.j2, dest: /tmp/x}\n",
        (7, 16, "steps[1].template.src", "gone.j2 not found"),
    ),
    ("deeply-nested", DEEP, (6, 69, "", "nested too deeply (more than 64 levels)")),
    ("alias-bomb", BOMB, (6, 7, "", "too many values (more than 100000")),
    (
        "too-many-steps",
        "name: w\nsteps:\n" + TOUCH + "".join(f"  - {{id: s{i}, local: [x]}}\n" for i in range(MAX_STEPS)),
        (2, 1, "steps", f"{MAX_STEPS + 1} items; at most {MAX_STEPS}"),
    ),
    ("long-needs-cycle", LONG_CYCLE, (6, 26, "steps[1].needs", "`needs` forms a cycle: s0 -> s1 -> s2 -> ")),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in WORKFLOWS])
def test_broken_workflow_is_located_exits_2_and_runs_nothing(site, capsys, text, expected) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(text)
    line, column, field, fragment = expected
    start = time.monotonic()
    code, err = site.run(capsys, str(path), "pg1", "1")
    assert time.monotonic() - start < 5
    assert code == 2, err
    where = f"{path}:{line}" + (f":{column}" if column else "")
    first = err.splitlines()[0]
    assert first.startswith(f"error: {where}:"), err
    assert (f" {field}: " in first) if field else True, err
    assert fragment in first, err
    assert site.nothing_ran()
    # `validate` says the same, and exits 2 too
    assert main(["validate", "--config", str(site.config), str(path)]) == 2
    assert first in capsys.readouterr().err


def test_jinja_syntax_error_in_a_template_file_names_the_templates_own_line(site, capsys) -> None:  # type: ignore[no-untyped-def]
    (site.workflows / "templates" / "bad.j2").write_text("# settings\nport = {{ node_id }}\nhost = {{ host\n")
    path = site.workflow(HEAD + "  - id: b\n    template: {src: templates/bad.j2, dest: /tmp/x}\n")
    code, err = site.run(capsys, str(path), "pg1", "1")
    assert code == 2
    template = site.workflows / "templates" / "bad.j2"
    assert err.splitlines()[0].startswith(f"error: {template}:3: Jinja2 syntax error"), err
    assert site.nothing_ran()


def test_undefined_variable_in_a_template_file_names_its_line_and_the_step_using_it(site, capsys) -> None:  # type: ignore[no-untyped-def]
    (site.workflows / "templates" / "undef.j2").write_text("# settings\nhost = {{ hots }}\n")
    path = site.workflow(HEAD + "  - id: b\n    template: {src: templates/undef.j2, dest: /tmp/x}\n")
    code, err = site.run(capsys, str(path), "pg1", "1")
    assert code == 2
    template = site.workflows / "templates" / "undef.j2"
    assert (
        f"error: {template}:2: undefined variable 'hots' (used by steps[1].template.src at {path}:7)" in err
    )
    assert site.nothing_ran()


def test_file_over_the_size_limit_is_refused_unread(site, capsys) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(HEAD + "# " + "x" * source.MAX_BYTES + "\n")
    code, err = site.run(capsys, str(path), "pg1", "1")
    assert code == 2
    assert f"error: {path}: file is larger than 1024 KiB" in err
    assert site.nothing_ran()


def test_huge_but_allowed_workflow_validates_quickly(site) -> None:  # type: ignore[no-untyped-def]
    body = "".join(
        f"  - {{id: s{i}, local: [echo, '{{{{ host }}}}'], needs: [s{i + 1}]}}\n" for i in range(498)
    )
    path = site.workflow(
        "name: w\nparams: [host]\nsteps:\n" + body + "  - {id: s498, local: [x], needs: []}\n"
    )
    start = time.monotonic()
    assert len(validate.load_workflow(str(path)).steps) == 499
    assert time.monotonic() - start < 5


# ---- the config file ---------------------------------------------------------------------

GOOD = "name: w\nparams: [host, {name: node_id, type: int}]\nsteps:\n" + TOUCH

# (id, config text, (line, column or None, yaml path, message fragment))
CONFIGS = [
    ("not-yaml", "ssh:\n  port: [22\n", (3, 1, "", "not valid YAML")),
    ("not-a-mapping", "- ssh\n", (1, 1, "", "the config must be a YAML mapping of settings")),
    ("tab", "ssh:\n\tport: 22\n", (2, 1, "", "tab character: YAML indentation must use spaces")),
    (
        "duplicate-key",
        "ssh:\n  port: 22\n  port: 2222\n",
        (3, 3, "port", "duplicate key (first defined at line 4)"),  # +2: the base settings
    ),
    ("unknown-key", "ssh:\n  prot: 22\n", (2, 3, "ssh.prot", "unknown key 'prot' (did you mean 'port'?)")),
    (
        "unknown-section",
        "postgre:\n  port: 1\n",
        (1, 1, "postgre", "unknown key 'postgre' (did you mean 'postgres'?)"),
    ),
    ("wrong-type", "lock_timeout: soon\n", (1, 1, "lock_timeout", "expected number, got a string 'soon'")),
    (
        "wrong-enum",
        "ssh: {host_key_policy: maybe}\n",
        (1, 7, "ssh.host_key_policy", "'maybe' is not one of"),
    ),
    (
        "secret-without-source",
        "secrets:\n  pw: {}\n",
        (2, 3, "secrets.pw", "{} should be non-empty"),
    ),
    (
        "slot-rule-undefined",
        "replication_slot: '{{ hots }}'\n",
        (1, 1, "replication_slot", "unknown name 'hots': the rule can use host, port and node_id"),
    ),
    ("slot-rule-syntax", "replication_slot: '{{ host '\n", (1, 1, "replication_slot", "Jinja2 syntax error")),
    (
        "deeply-nested",
        "vars:\n  v: " + "[" * 70 + "]" * 70 + "\n",
        (2, 69, "", "nested too deeply (more than 64 levels)"),
    ),
    ("alias-bomb", BOMB_VARS, (2, 7, "", "too many values (more than 100000")),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in CONFIGS])
def test_broken_config_is_located_exits_2_and_runs_nothing(site, capsys, text, expected) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(GOOD)
    base = f"workflows_dir: {site.workflows}\nstate_dir: {site.state}\n"
    site.config.write_text(text if text.startswith(("-", "\t")) else base + text)
    offset = 0 if text.startswith(("-", "\t")) else 2
    line, column, field, fragment = expected
    code, err = site.run(capsys, str(path), "pg1", "1")
    assert code == 2, err
    where = f"{site.config}:{line + offset}" + (f":{column}" if column else "")
    first = err.splitlines()[0]
    assert first.startswith(f"error: {where}:"), err
    assert (f" {field}: " in first) if field else True, err
    assert fragment in first, err
    assert "hint: fix the config file" in err
    assert site.nothing_ran()


def test_empty_config_file_means_the_defaults(site, capsys) -> None:  # type: ignore[no-untyped-def]
    """Unlike a workflow, an empty config is valid: every setting has a default (docs/configuration.md)."""
    site.config.write_text("")
    assert main(["validate", "--config", str(site.config), str(site.workflow(GOOD))]) == 0


def test_config_over_the_size_limit(site, capsys) -> None:  # type: ignore[no-untyped-def]
    site.config.write_text("vars: {}\n# " + "x" * source.MAX_BYTES + "\n")
    code, err = site.run(capsys, str(site.workflow(GOOD)), "pg1", "1")
    assert code == 2
    assert f"error: {site.config}: file is larger than 1024 KiB" in err
    assert site.nothing_ran()


# ---- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "w takes 2 arguments (host node_id); got 0"),
        (["pg1"], "w takes 2 arguments (host node_id); got 1"),
        (["pg1", "x"], "argument 2 (node_id) must be an integer, got 'x'"),
        (["pg1", "1.0"], "argument 2 (node_id) must be an integer, got '1.0'"),
        (["pg1", "\u0661"], "argument 2 (node_id) must be an integer, got '\u0661'"),  # Arabic-Indic 1
        (["pg1", "1e3"], "argument 2 (node_id) must be an integer, got '1e3'"),
        (["h" * 4097, "1"], "argument 1 (host) is longer than 4096 characters"),
        (["a\x00b", "1"], "argument 1 (host) contains a NUL byte"),
    ],
)
def test_bad_arguments_exit_2_and_run_nothing(site, capsys, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, err = site.run(capsys, str(site.workflow(GOOD)), *args)
    assert code == 2
    assert err.splitlines() == [
        f"error: <arguments>: {message}",
        "hint: usage: pgpool-hook run w host node_id",
    ]
    assert site.nothing_ran()


def test_too_many_arguments_when_the_workflow_says_so(site, capsys) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(GOOD.replace("steps:", "extra_args: false\nsteps:"))
    code, err = site.run(capsys, str(path), "pg1", "1", "surplus")
    assert code == 2
    assert "error: <arguments>: w takes at most 2 arguments (host node_id); got 3" in err
    assert site.nothing_ran()


@pytest.mark.parametrize(
    ("args", "recorded"),
    [
        (["pg1", "-1"], "pg1|-1"),  # pgpool's "no such node"
        (["", ""], "|None"),  # pgpool's unknown host and id: empty strings (an empty int is its default)
        (["hé中-ñ", " 2"], "hé中-ñ|2"),  # unicode kept; pgpool 4.4's leading space dropped from numbers
        (["h" * 4096, "1"], "h" * 4096 + "|1"),
        (["pg1", "1", "surplus", ""], "pg1|1"),  # extra arguments tolerated by default
    ],
)
def test_odd_but_valid_arguments_reach_the_workflow_literally(site, capsys, args, recorded) -> None:  # type: ignore[no-untyped-def]
    out = site.base / "out"
    path = site.workflow(
        "name: w\nparams: [host, {name: node_id, type: int}]\nsteps:\n"
        f"  - id: record\n    template: {{dest: '{out}', content: '{{{{ host }}}}|{{{{ node_id }}}}'}}\n"
    )
    code, err = site.run(capsys, str(path), *args)
    assert code == 0, err
    assert out.read_text() == recorded


def test_var_that_cannot_be_rendered_for_these_arguments_is_located_in_a_dry_run(site, capsys) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(
        GOOD.replace("steps:", "vars:\n  ports: {pg1: 5432}\n  port: '{{ ports[host] }}'\nsteps:")
    )
    code = main(["run", "--dry-run", "--config", str(site.config), str(path), "pg9", "1"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines()[0] == f"error: {path}:5: vars.port: 'dict object' has no attribute 'pg9'"
    assert site.nothing_ran()


def test_var_that_cannot_be_rendered_stops_a_real_run_before_any_step(site, capsys) -> None:  # type: ignore[no-untyped-def]
    path = site.workflow(
        GOOD.replace("steps:", "vars:\n  ports: {pg1: 5432}\n  port: '{{ ports[host] }}'\nsteps:")
    )
    code = main(["run", "--config", str(site.config), str(path), "pg9", "1"])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert f"{path}:5: field 'vars.port': 'dict object' has no attribute 'pg9'" in err
    assert not site.marker.exists()
