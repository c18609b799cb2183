"""Rendering: shell quoting of hostile values, filters, strict undefined, dry-run placeholders."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from engine.errors import NeedsRuntime, RenderError, StepFailure
from engine.render import Renderer, StepResults, conninfo_quote, pg_quote, slot_name_default
from engine.steps import KINDS

from .helpers import make_config

HOSTILE = [
    "$(touch pwned)",
    "`touch pwned`",
    "a; touch pwned",
    "it's",
    'say "hi"',
    "a\ntouch pwned",
    "two words",
    "a && touch pwned || true",
    "*",
    "",
    "-rf",
    "$HOME",
    "\\",
    "'; touch pwned; '",
]


def renderer(dry_run: bool = False, **values: object) -> Renderer:
    ctx = {"config": make_config().data, "steps": StepResults({}, dry_run), **values}
    return Renderer(ctx, step="s1", file="w.yaml", line=7)


@pytest.mark.parametrize("value", HOSTILE)
def test_string_command_value_is_one_literal_word(value: str) -> None:
    out = renderer(v=value).shell("printf %s {{ v }}")
    assert shlex.split(out) == ["printf", "%s", value]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_reaches_a_real_shell_as_one_word(tmp_path, value: str) -> None:  # type: ignore[no-untyped-def]
    command = renderer(v=value).shell("printf '[%s]' {{ v }}")
    done = subprocess.run(
        ["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout == f"[{value}]"
    assert os.listdir(tmp_path) == []  # nothing was created: nothing ran


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("echo {{ v }}", "echo '$(id)'"),
        ("echo {{ v | trusted }}", "echo $(id)"),
        ("echo {{ v | quote }}", "echo '$(id)'"),  # quoted once, not twice
        ("echo {{ flag }}", "echo true"),
        ("echo {{ n }}", "echo 5"),
        ("echo {{ '%s-x' | format(v) }}", "echo '$(id)-x'"),
        ("{% for x in [v, 'a b'] %}{{ x }} {% endfor %}", "'$(id)' 'a b' "),
        ("echo --host={{ v }}", "echo --host='$(id)'"),
    ],
)
def test_shell_rendering(template: str, expected: str) -> None:
    assert renderer(v="$(id)", flag=True, n=5).shell(template) == expected


def test_plain_text_is_not_quoted() -> None:
    assert renderer(v="$(id) it's").text("x={{ v }}") == "x=$(id) it's"


@pytest.mark.parametrize(
    ("value", "pg", "conninfo"),
    [
        ("pg1", "'pg1'", "pg1"),
        ("it's", "'it''s'", "'it\\'s'"),
        ("a b", "'a b'", "'a b'"),
        ("back\\slash", "'back\\\\slash'", "'back\\\\slash'"),
        ("", "''", "''"),
        ("host.example:5432/x@y", "'host.example:5432/x@y'", "host.example:5432/x@y"),
    ],
)
def test_pgquote_and_conninfo(value: str, pg: str, conninfo: str) -> None:
    assert pg_quote(value) == pg
    assert conninfo_quote(value) == conninfo
    r = renderer(v=value)
    assert r.text("{{ v | pgquote }}") == pg
    assert r.text("{{ v | conninfo }}") == conninfo


@pytest.mark.parametrize(
    ("host", "slot"),
    [
        ("pg-1.example.com", "pg_1_example_com"),
        ("PG2", "pg2"),
        ("10.0.0.3", "10_0_0_3"),
        ("a b$c", "a_b_c"),
        ("x'); DROP TABLE t; --", "x____drop_table_t____"),
        ("n" * 50 + ".dc-east.example.com", "n" * 50 + "_dc_east_exam"),  # 63, as PostgreSQL keeps it
        ("é", "_"),
    ],
)
def test_slot_name(host: str, slot: str) -> None:
    assert slot_name_default(host) == slot
    assert renderer(h=host).text("{{ h | slot_name }}") == slot


def test_primary_conninfo_line() -> None:
    r = renderer(host="pg 1", user="repl", app="it's")
    line = r.text("primary_conninfo = {{ ('host=' ~ (host | conninfo) ~ ' user=' ~ user) | pgquote }}")
    assert line == "primary_conninfo = 'host=''pg 1'' user=repl'"


@pytest.mark.parametrize(
    ("method", "source", "message"),
    [
        ("text", "{{ nope }}", "w.yaml:7: step 's1' field 'f': 'nope' is undefined"),
        (
            "shell",
            "echo {{ host.name }}",
            "w.yaml:7: step 's1' field 'f': 'str object' has no attribute 'name'",
        ),
        ("expr", "nope > 1", "w.yaml:7: step 's1' field 'f': 'nope' is undefined"),
        ("expr", "nope", "w.yaml:7: step 's1' field 'f': 'nope' is undefined"),
        ("expr", "1 / 0", "w.yaml:7: step 's1' field 'f': division by zero"),
        (
            "text",
            "{{ x.__class__ }}",
            "w.yaml:7: step 's1' field 'f': access to attribute '__class__' of 'str' object is unsafe.",
        ),
    ],
)
def test_render_errors_name_step_field_and_variable(method: str, source: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        getattr(renderer(host="h", x="y"), method)(source, "f")
    assert str(info.value) == message


def test_sandbox_blocks_unsafe_attribute_calls() -> None:
    with pytest.raises(RenderError, match="unsafe"):
        renderer(x="y").text("{{ x.format.__globals__ }}", "f")


@pytest.mark.parametrize(
    ("source", "expected"),
    [(True, True), (False, False), (None, True), ("1 == 1", True), ("{{ 2 > 1 }}", True), ("n + 1", 6)],
)
def test_expr_values(source: object, expected: object) -> None:
    assert renderer(n=5).expr(source) == expected


@pytest.mark.parametrize(
    ("source", "ref"),
    [
        ("steps.check.rc == 0", "steps.check.rc"),
        ("steps.check.rows[0].slot == 'x'", "steps.check.rows[0].slot"),
        ("steps['check'].ok", "steps.check.ok"),
        ("not steps.check.ok", "steps.check.ok"),
        ("'x' in steps.check.stdout", "steps.check.stdout"),
    ],
)
def test_dry_run_runtime_reference(source: str, ref: str) -> None:
    with pytest.raises(NeedsRuntime) as info:
        bool(renderer(dry_run=True).expr(source))  # `when` takes the truth of the value
    assert info.value.ref == ref


def test_dry_run_runtime_reference_in_text() -> None:
    with pytest.raises(NeedsRuntime) as info:
        renderer(dry_run=True).shell("echo {{ steps.probe.stdout_lines[0] }}")
    assert info.value.ref == "steps.probe.stdout_lines[0]"


def test_real_results_are_used_when_present() -> None:
    ctx = {"steps": StepResults({"probe": {"rc": 0, "stdout": "x"}}, True)}
    r = Renderer(ctx)
    assert r.expr("steps.probe.rc == 0") is True
    assert r.shell("echo {{ steps.probe.stdout }}") == "echo x"


# ---- step kinds' plan: what a run would execute, rendered with hostile values ---------------


def test_ssh_string_command_quotes_each_value() -> None:
    action = KINDS["ssh"].plan(
        {"host": "{{ h }}", "command": "ls {{ h }} {{ n }}"}, renderer(h="$(x)", n="a\nb")
    )
    assert action.details["command"] == "ls '$(x)' 'a\nb'"
    assert action.target == "$(x)"


def test_ssh_list_command_and_env_are_quoted() -> None:
    r = renderer(h="$(x)")
    action = KINDS["ssh"].plan({"host": "n", "command": ["ls", "{{ h }}", "a b"], "env": {"A": "{{ h }}"}}, r)
    assert action.details["command"] == "A='$(x)' ls '$(x)' 'a b'"


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("pg_isready -h {{ h }} -p 5432", ["pg_isready", "-h", "$(x) y", "-p", "5432"]),
        ("opt --host={{ h }}", ["opt", "--host=$(x) y"]),
        ("echo {{ e }} end", ["echo", "", "end"]),
        ("echo {{ 'a b' | trusted }}", ["echo", "a", "b"]),
        (["echo", "{{ h }}", "{{ e }}"], ["echo", "$(x) y", ""]),
    ],
)
def test_local_command_without_shell_is_an_argument_vector(command: object, argv: list[str]) -> None:
    action = KINDS["local"].plan(command, renderer(h="$(x) y", e=""))
    assert action.details["command"] == argv
    assert action.details["shell"] is False


def test_local_command_that_cannot_be_split_fails_the_step() -> None:
    with pytest.raises(StepFailure) as info:
        KINDS["local"].plan("echo {{ v | trusted }}", renderer(v="it's"))
    assert str(info.value) == 'cannot split "echo it\'s" into words: No closing quotation'


def test_local_shell_command_quotes_values() -> None:
    action = KINDS["local"].plan({"command": "echo {{ h }} | wc -c", "shell": True}, renderer(h="$(x)"))
    assert action.details["command"] == "echo '$(x)' | wc -c"


def test_sql_values_are_bound_parameters_not_text() -> None:
    body = {
        "host": "{{ h }}",
        "statement": "SELECT pg_drop_replication_slot(%(slot)s)",
        "params": {"slot": "{{ h }}"},
    }
    action = KINDS["sql"].plan(body, renderer(h="x'); DROP TABLE t; --"))
    assert action.details["statements"] == ["SELECT pg_drop_replication_slot(%(slot)s)"]
    assert action.details["params"] == {"slot": "x'); DROP TABLE t; --"}
    assert (action.details["database"], action.details["user"], action.details["port"]) == (
        "postgres",
        "postgres",
        "5432",
    )


def test_exit_plan() -> None:
    action = KINDS["exit"].plan({"code": 3, "message": "node {{ n }} gone"}, renderer(n=2))
    assert action.details == {"code": 3, "message": "node 2 gone", "rollback": False}
    assert KINDS["exit"].plan(0, renderer()).details == {"code": 0, "message": "", "rollback": False}


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("template", {"dest": "{{ d }}", "content": "x"}, "dest '../etc/passwd' is not an absolute path"),
        (
            "template",
            {"dest": "/srv/{{ d }}", "content": "x"},
            "dest '/srv/../etc/passwd' climbs out with '..' (from a value, not the workflow)",
        ),
        ("file", {"path": "{{ e }}"}, "path is empty"),
        ("file", {"path": "/tmp/{{ nl }}"}, "path '/tmp/a\\nb' contains a newline or NUL byte"),
        (
            "file",
            {"path": "/{{ e }}", "state": "empty"},
            "refusing to remove the contents of '/': too close to /",
        ),
        (
            "file",
            {"path": "/var/lib/{{ e }}", "state": "empty"},
            "refusing to remove the contents of '/var/lib': too close to /",
        ),
        (
            "file",
            {"path": "/data{{ e }}", "state": "empty"},
            "refusing to remove the contents of '/data': too close to /",
        ),
    ],
)
def test_path_rules(kind: str, body: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(StepFailure) as info:
        KINDS[kind].plan(body, renderer(d="../etc/passwd", e="", nl="a\nb"))
    assert str(info.value) == message


def test_dotdot_written_in_the_workflow_is_allowed() -> None:
    action = KINDS["file"].plan({"path": "/srv/pg/../pg2/{{ f }}"}, renderer(f="standby.signal"))
    assert action.details["path"] == "/srv/pg2/standby.signal"


@pytest.mark.parametrize(
    ("content", "regexp", "expected"),
    [
        ("a\nport = 5432\nb\n", r"^port\s*=", "a\nport = 5433\nb\n"),
        ("a\nport = 1\nport = 2\n", r"^port\s*=", "a\nport = 5433\n"),  # duplicates dropped
        ("a\n", r"^port\s*=", "a\nport = 5433\n"),  # appended
        ("", None, "port = 5433\n"),
        ("port = 5433\n", None, "port = 5433\n"),  # already there: unchanged
    ],
)
def test_file_line_edit(content: str, regexp: str | None, expected: str) -> None:
    assert KINDS["file"].edit_lines(content, "port = 5433", regexp) == expected


# ---- validation's analysis hands its generated code to compiled() ---------------------------

ANALYSED = [
    "{{ x + 1 }}",
    "{{ host | quote }} {{ port | default(5432) }}",
    "{% set a = x %}{{ a }}{{ b }}",
    "{% for i in items %}{{ i }}{{ loop.index }}{% endfor %}{{ range(2) | list }}",
    "{% macro m(v) %}{{ v }}{{ w }}{% endmacro %}{{ m(1) }}",
    "{% if flag %}{{ steps.a.rc }}{% else %}{{ steps['b'].ok }}{% endif %}",
    "{{ self }}{{ 'x' ~ y }}",
]


@pytest.mark.parametrize("source", ANALYSED)
def test_analysis_finds_what_jinja2_meta_finds(source: str) -> None:
    from jinja2 import meta

    from engine import render

    expected = meta.find_undeclared_variables(render.environment().parse(source))
    assert render.undeclared(source)[0] == expected


@pytest.mark.parametrize("source", ANALYSED)
def test_code_kept_from_analysis_is_what_compiled_would_generate(source: str) -> None:
    from engine import render

    render.undeclared(source + " ")  # a string no other test analyses, so the code is kept now
    assert render._GENERATED[source + " "] == render.environment().compile(source + " ", raw=True)


def test_compiled_uses_the_kept_code_once_for_plain_rendering_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from engine import render

    source = "{{ x * 3 }} and {{ x | quote }} (kept)"
    render.undeclared(source)
    monkeypatch.setattr(render, "_CODE", {})
    assert render.compiled(source, shell=True).render(x="a b") == "'a ba ba b' and 'a b' (kept)"
    assert source in render._GENERATED  # the shell environment finalizes: it generates its own
    assert render.compiled(source).render(x="a b") == "a ba ba b and 'a b' (kept)"
    assert source not in render._GENERATED
