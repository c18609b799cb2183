"""Validation: a table of broken workflows, each with the exact message and where it points."""

from __future__ import annotations

import os

import pytest

from engine import validate
from engine.config import shipped_workflows_dir
from engine.errors import InvalidInput

from .helpers import problems_of

HEAD = "name: t\nparams: [host, {name: node_id, type: int}]\nsteps:\n"
STEP = "  - id: a\n    local: [x]\n"

# (id, workflow text, [(line, column, yaml path, message fragment), ...]) - every problem, in order
BROKEN = [
    (
        "unknown-top-key",
        "name: t\nstep:\n  - id: a\n    local: [x]\n",
        [(1, 1, "", "'steps' is required"), (2, 1, "step", "unknown key 'step' (did you mean 'steps'?)")],
    ),
    (
        "unknown-step-key",
        HEAD + STEP + "    retyr: {attempts: 2}\n",
        [(6, 5, "steps[0].retyr", "unknown key 'retyr' (did you mean 'retry'?)")],
    ),
    (
        "unknown-kind",
        HEAD + "  - id: a\n    shell: [x]\n",
        [
            (
                5,
                5,
                "steps[0].shell",
                "unknown key 'shell'; allowed: description, exit, file, guard, id, local,",
            )
        ],
    ),
    (
        "no-kind",
        HEAD + "  - id: a\n    description: hi\n",
        [(4, 5, "steps[0]", "step 'a' has no kind: add one of sql, ssh, template, file, local, exit")],
    ),
    (
        "two-kinds",
        HEAD + STEP + "    exit: 0\n",
        [(6, 5, "steps[0].exit", "step 'a' has more than one kind (local and exit)")],
    ),
    ("missing-id", HEAD + "  - local: [x]\n", [(4, 5, "steps[0]", "'id' is required")]),
    ("missing-name", "steps:\n" + STEP, [(1, 1, "", "'name' is required")]),
    ("empty-steps", "name: t\nsteps: []\n", [(2, 1, "steps", "[] should be non-empty")]),
    (
        "timeout-not-a-number",
        HEAD + STEP + "    timeout: soon\n",
        [(6, 5, "steps[0].timeout", "expected number, got a string 'soon'")],
    ),
    (
        "attempts-quoted",
        HEAD + STEP + "    retry: {attempts: '3'}\n",
        [(6, 13, "steps[0].retry.attempts", "expected integer, got a string '3'")],
    ),
    (
        "zero-attempts",
        HEAD + STEP + "    retry: {attempts: 0}\n",
        [(6, 13, "steps[0].retry.attempts", "0 is less than the minimum of 1")],
    ),
    (
        "backoff-below-1",
        HEAD + STEP + "    retry: {backoff: 0.5}\n",
        [(6, 13, "steps[0].retry.backoff", "0.5 is less than the minimum of 1")],
    ),
    (
        "id-starts-with-digit",
        HEAD + "  - id: 1a\n    local: [x]\n",
        [
            (
                4,
                5,
                "steps[0].id",
                "'1a' is not a valid name (letters, digits and _; not starting with a digit)",
            )
        ],
    ),
    (
        "sql-without-host",
        HEAD + "  - id: a\n    sql: {statement: select 1}\n",
        [(5, 5, "steps[0].sql", "'host' is required")],
    ),
    (
        "mode-unquoted",
        HEAD + "  - id: a\n    file: {path: /tmp/x, mode: 644}\n",
        [(5, 26, "steps[0].file.mode", "expected string, got an integer 644")],
    ),
    (
        "exit-code-too-big",
        HEAD + "  - id: a\n    exit: 300\n",
        [(5, 5, "steps[0].exit", "300 is greater than the maximum of 255")],
    ),
    (
        "exit-code-too-big-in-mapping",
        HEAD + "  - id: a\n    exit: {code: 300}\n",
        [(5, 12, "steps[0].exit.code", "300 is greater than the maximum of 255")],
    ),
    (
        "local-option-typo",
        HEAD + "  - id: a\n    local: {command: x, shel: true}\n",
        [(5, 25, "steps[0].local.shel", "unknown key 'shel' (did you mean 'shell'?)")],
    ),
    (
        "local-command-not-a-list",
        HEAD + "  - id: a\n    local: 42\n",
        [(5, 5, "steps[0].local", "invalid value 42: Run a program on the hook's host.")],
    ),
    (
        "on-error-id-with-dash",
        HEAD + STEP + "    on_error: my-handler\n",
        [(6, 5, "steps[0].on_error", "invalid value 'my-handler': `fail` (default), `continue` (warn only)")],
    ),
    (
        "on-error-list-of-numbers",
        HEAD + STEP + "    on_error: [1]\n",
        [(6, 16, "steps[0].on_error[0]", "expected string, got an integer 1")],
    ),
    (
        "on-error-unknown-word",
        HEAD + STEP + "    on_error: ignore\n",
        [(6, 5, "steps[0].on_error", "unknown handler 'ignore'")],
    ),
    (
        "duplicate-ids",
        HEAD + STEP + "  - id: a\n    local: [y]\n",
        [(6, 5, "steps[1].id", "duplicate step id 'a' (first at line 4)")],
    ),
    (
        "needs-cycle",
        HEAD + STEP + "    needs: b\n  - id: b\n    local: [y]\n    needs: a\n",
        [(6, 5, "steps[0].needs", "`needs` forms a cycle: a -> b -> a")],
    ),
    (
        "needs-unknown",
        HEAD + "  - id: alpha\n    local: [x]\n  - id: b\n    local: [y]\n    needs: alpah\n",
        [(8, 5, "steps[1].needs", "unknown step 'alpah' (did you mean 'alpha'?)")],
    ),
    (
        "needs-a-handler",
        HEAD + STEP + "    needs: h\nhandlers:\n  - id: h\n    local: [y]\n",
        [(6, 5, "steps[0].needs", "'h' is a handler; steps can only need steps")],
    ),
    (
        "handler-with-needs",
        HEAD + STEP + "    undo: h\nhandlers:\n  - id: h\n    local: [y]\n    needs: a\n",
        [(10, 5, "handlers[0].needs", "handlers run on demand; `needs` only applies under `steps:`")],
    ),
    (
        "exit-as-handler",
        HEAD + STEP + "    on_error: stop\nhandlers:\n  - id: stop\n    exit: {code: 0}\n",
        [(9, 5, "handlers[0].exit", "an exit step cannot be a handler: it would not end the run")],
    ),
    (
        "undo-unknown",
        HEAD + STEP + "    undo: restor\nhandlers:\n  - id: restore\n    local: [y]\n",
        [(6, 5, "steps[0].undo", "unknown handler 'restor' (did you mean 'restore'?)")],
    ),
    (
        "undo-not-a-handler",
        HEAD + STEP + "    undo: b\n  - id: b\n    local: [y]\n",
        [(6, 5, "steps[0].undo", "'b' is a step under `steps:`; move it to `handlers:`")],
    ),
    (
        "fallback-unknown",
        HEAD + STEP + "    on_error: fallbak\nhandlers:\n  - id: fallback\n    local: [y]\n",
        [(6, 5, "steps[0].on_error", "unknown handler 'fallbak' (did you mean 'fallback'?)")],
    ),
    (
        "fallback-not-a-handler",
        HEAD + STEP + "    on_error: [b]\n  - id: b\n    local: [y]\n",
        [(6, 5, "steps[0].on_error", "'b' is a step under `steps:`; move it to `handlers:`")],
    ),
    (
        "jinja-syntax",
        HEAD + "  - id: a\n    local: ['{{ host }']\n",
        [(5, 13, "steps[0].local[0]", "Jinja2 syntax error: unexpected '}'")],
    ),
    (
        "jinja-syntax-in-when",
        HEAD + STEP + "    when: 'host =='\n",
        [(6, 5, "steps[0].when", "Jinja2 syntax error: unexpected ')'")],
    ),
    (
        "jinja-syntax-multiline",
        HEAD + "  - id: a\n    template:\n      dest: /tmp/x\n      content: |\n"
        "        line1\n        line2 {{ host\n        line3\n",
        [
            (
                10,
                None,
                "steps[0].template.content",
                "Jinja2 syntax error: expected token 'end of print statement'",
            )
        ],
    ),
    (
        "undefined-variable-typo",
        HEAD + "  - id: a\n    local: ['{{ hots }}']\n",
        [(5, 13, "steps[0].local[0]", "undefined variable 'hots' (did you mean 'host'?)")],
    ),
    (
        "undefined-variable",
        HEAD + "  - id: a\n    local: ['{{ zzz }}']\n",
        [
            (
                5,
                13,
                "steps[0].local[0]",
                "undefined variable 'zzz' (not a param, var, config key or step result)",
            )
        ],
    ),
    (
        "undefined-in-when",
        HEAD + STEP + "    when: node_idd == 1\n",
        [(6, 5, "steps[0].when", "undefined variable 'node_idd' (did you mean 'node_id'?)")],
    ),
    (
        "undefined-in-until",
        HEAD + STEP + "    retry: {attempts: 3, until: 'result.rc == 0 and zork'}\n",
        [(6, 26, "steps[0].retry.until", "undefined variable 'zork'")],
    ),
    (
        "var-uses-later-var",
        "name: t\nvars:\n  a: '{{ b }}'\n  b: x\nsteps:\n" + STEP,
        [(3, 3, "vars.a", "undefined variable 'b'")],
    ),
    (
        "var-uses-step-result",
        "name: t\nvars:\n  a: '{{ steps.a.stdout }}'\nsteps:\n" + STEP,
        [(3, 3, "vars.a", "steps.a is not a step that runs before this one")],
    ),
    (
        "lock-undefined",
        "name: t\nlock: 'x-{{ nod }}'\nsteps:\n" + STEP,
        [(2, 1, "lock", "undefined variable 'nod'")],
    ),
    (
        "later-step",
        HEAD + "  - id: a\n    local: ['{{ steps.b.stdout }}']\n  - id: b\n    local: [y]\n",
        [(5, 13, "steps[0].local[0]", "steps.b is not a step that runs before this one")],
    ),
    (
        "step-above-that-runs-later",
        HEAD
        + "  - id: a\n    local: [x]\n    needs: [c]\n"
        + "  - id: b\n    local: [y]\n"
        + "  - id: c\n    local: ['{{ steps.a.rc }}']\n    needs: []\n",
        [(10, 13, "steps[2].local[0]", "steps.a is not a step that runs before this one")],
    ),
    (
        "own-result-in-when",
        HEAD + STEP + "    when: steps.a.ok\n",
        [(6, 5, "steps[0].when", "steps.a is not a step that runs before this one")],
    ),
    (
        "sql-with-jinja",
        HEAD + "  - id: a\n    sql:\n      host: '{{ host }}'\n      statement: \"select '{{ host }}'\"\n",
        [
            (
                7,
                7,
                "steps[0].sql.statement",
                "SQL text cannot contain Jinja2; pass values in `params` and use %(name)s",
            )
        ],
    ),
    (
        "sql-jinja-in-statements",
        HEAD + "  - id: a\n    sql:\n      host: h\n      statements:\n"
        '        - select 1\n        - "select {% if true %}2{% endif %}"\n',
        [(9, 11, "steps[0].sql.statements[1]", "SQL text cannot contain Jinja2")],
    ),
    (
        "sql-statement-and-statements",
        HEAD + "  - id: a\n    sql: {host: h, statement: x, statements: [y]}\n",
        [(5, 5, "steps[0].sql", "give exactly one of `statement` or `statements`")],
    ),
    (
        "template-src-and-content",
        HEAD + "  - id: a\n    template: {content: x, dest: /tmp/x}\n    description: ok\n"
        "  - id: b\n    template: {dest: /tmp/y}\n",
        [
            (
                8,
                5,
                "steps[1].template",
                "give exactly one of `src` (a template file) or `content` (inline text)",
            )
        ],
    ),
    (
        "template-file-missing",
        HEAD + "  - id: a\n    template: {src: templates/none.j2, dest: /tmp/x}\n",
        [(5, 16, "steps[0].template.src", "template file ")],
    ),
    (
        "local-shell-syntax",
        HEAD + "  - id: a\n    local: 'echo hi; rm x'\n",
        [
            (
                5,
                5,
                "steps[0].local",
                "a string command with shell syntax needs `shell: true` (or give an argument list)",
            )
        ],
    ),
    (
        "local-unbalanced-quote",
        HEAD + STEP + '  - id: b\n    local: "echo it\'s"\n',
        [(7, 5, "steps[1].local", "cannot split the command into words: No closing quotation")],
    ),
    (
        "local-list-with-shell",
        HEAD + "  - id: a\n    local: {command: [echo, hi], shell: true}\n",
        [
            (
                5,
                34,
                "steps[0].local.shell",
                "shell: true needs a string command (a list is run without a shell)",
            )
        ],
    ),
    (
        "file-line-without-line",
        HEAD + "  - id: a\n    file: {path: /tmp/x, state: line}\n",
        [(5, 5, "steps[0].file", "state: line needs `line`")],
    ),
    (
        "file-bad-regexp",
        HEAD + "  - id: a\n    file: {path: /tmp/x, state: line, line: a, regexp: '('}\n",
        [(5, 48, "steps[0].file.regexp", "invalid regular expression: missing ), unterminated subpattern")],
    ),
    (
        "reserved-param",
        "name: t\nparams: [config]\nsteps:\n" + STEP,
        [(2, 10, "params[0]", "'config' is a reserved name")],
    ),
    (
        "duplicate-param",
        "name: t\nparams: [host, host]\nsteps:\n" + STEP,
        [(2, 16, "params[1]", "duplicate param 'host'")],
    ),
    (
        "param-bad-type",
        "name: t\nparams: [{name: n, type: integer}]\nsteps:\n" + STEP,
        [(2, 20, "params[0].type", "'integer' is not one of 'str', 'int', 'bool'")],
    ),
    (
        "negative-deadline",
        "name: t\ndeadline: -5\nsteps:\n" + STEP,
        [(2, 1, "deadline", "-5 is less than or equal to the minimum of 0")],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in BROKEN])
def test_broken_workflow(write, text: str, expected: list[tuple[int, int | None, str, str]]) -> None:  # type: ignore[no-untyped-def]
    path = write(text)
    problems = problems_of(path)
    got = [(p.line, p.column, p.path, p.message) for p in problems]
    assert len(got) == len(expected), "\n".join(str(p) for p in problems)
    for (line, column, ypath, message), (eline, ecol, epath, efragment) in zip(got, expected, strict=True):
        assert (line, column, ypath) == (eline, ecol, epath), message
        assert efragment in message
    assert all(p.file == path for p in problems)


def test_problem_text_is_file_line_column_path_message(write) -> None:  # type: ignore[no-untyped-def]
    path = write(HEAD + "  - id: a\n    local: ['{{ hots }}']\n")
    with pytest.raises(InvalidInput) as info:
        validate.load_workflow(path)
    assert info.value.render().splitlines() == [
        f"error: {path}:5:13: steps[0].local[0]: undefined variable 'hots' (did you mean 'host'?)",
        "hint: run `pgpool-hook validate FILE` after editing",
    ]


def test_every_error_is_reported_at_once(write) -> None:  # type: ignore[no-untyped-def]
    path = write(
        HEAD
        + "  - id: a\n    local: ['{{ nope1 }}']\n"  # 4-5: undefined variable
        + "  - id: a\n    local: [y]\n"  # 6: duplicate id
        + "  - id: c\n    local: [z]\n    undo: ghost\n"  # 8-10: unknown handler
        + "  - id: d\n    local: [z]\n    needs: cc\n"  # 11-13: unknown need
    )
    problems = sorted(problems_of(path), key=lambda p: p.line or 0)
    assert [(p.line, p.message) for p in problems] == [
        (5, "undefined variable 'nope1' (not a param, var, config key or step result)"),
        (6, "duplicate step id 'a' (first at line 4)"),
        (10, "unknown handler 'ghost'"),
        (13, "unknown step 'cc' (did you mean 'c'?)"),
    ]
    with pytest.raises(InvalidInput) as info:
        validate.load_workflow(path)
    assert info.value.render().splitlines()[-2] == "4 errors; nothing was run"


def test_schema_errors_are_all_reported(write) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "name: t\nsteps:\n  - id: a\n    local: [x]\n    timeout: x\n  - id: b\n    local: [y]\n    colour: red\n"
    )
    assert [(p.line, p.path) for p in problems_of(path)] == [(5, "steps[0].timeout"), (8, "steps[1].colour")]


TEMPLATES = {
    "bad.j2": "a {{ host }}\nb\n{% if %}\n",
    "undef.j2": "a {{ host }}\nb {{ nope }}\n",
    "later.j2": "{{ steps.b.stdout }}\n",
}


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("bad.j2", (3, "Jinja2 syntax error: Expected an expression, got 'end of statement block'")),
        ("undef.j2", (2, "undefined variable 'nope' (used by steps[0].template.src at {wf}:5)")),
        ("later.j2", (1, "steps.b is not a step that runs before this one")),
    ],
)
def test_template_file_problems(write, src: str, expected: tuple[int | None, str]) -> None:  # type: ignore[no-untyped-def]
    for name, text in TEMPLATES.items():
        write(text, f"templates/{name}")
    path = write(
        HEAD + f"  - id: a\n    template: {{src: templates/{src}, dest: /tmp/x}}\n  - id: b\n    local: [y]\n"
    )
    problems = problems_of(path)
    assert [(p.file, p.line, p.message) for p in problems] == [
        (os.path.join(os.path.dirname(path), "templates", src), expected[0], expected[1].format(wf=path))
    ]


VALID = [
    (
        "handlers-and-fallbacks",
        HEAD + STEP + "    on_error: [h1, h2]\n    undo: h1\nhandlers:\n  - id: h1\n    local: [y]\n"
        "  - id: h2\n    local: ['{{ steps.a.rc }}']\n",
    ),
    (
        "earlier-step-result",
        HEAD + STEP + "  - id: b\n    when: steps.a.rc == 0 and node_id >= 0\n    local: [y]\n",
    ),
    ("until-uses-result", HEAD + STEP + "    retry: {attempts: 3, until: 'result.rc == 0 and steps.a.ok'}\n"),
    (
        "builtins",
        HEAD + "  - id: a\n    local: ['{{ config.ssh.user }}', '{{ run_id }}', '{{ workflow.name }}',"
        " '{{ replication_slot(host=host) }}', '{{ extra_args | length }}', '{{ params.host }}']\n",
    ),
    (
        "vars-in-order",
        "name: t\nparams: [host]\nvars:\n  a: '{{ host }}'\n  b: '{{ a }}-x'\nsteps:\n"
        "  - id: s\n    local: ['{{ b }}']\n",
    ),
    ("loop-variable", HEAD + "  - id: a\n    local: ['{% for x in [1, 2] %}{{ x }}{% endfor %}']\n"),
    (
        "needs-and-steps-above",
        HEAD
        + "  - id: a\n    local: [x]\n"
        + "  - id: b\n    local: [y]\n    needs: []\n"
        + "  - id: c\n    local: ['{{ steps.a.rc }}{{ steps.b.rc }}']\n    needs: [b]\n",
    ),
    (
        "local-string-with-filter",
        HEAD + "  - id: a\n    local: 'pg_isready -h {{ host | trusted }} -p 5432'\n",
    ),
    (
        "needs-dag",
        HEAD + STEP + "  - id: b\n    local: [y]\n    needs: []\n  - id: c\n    local: [z]\n"
        "    needs: [a, b]\n",
    ),
]


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in VALID])
def test_valid_workflow(write, text: str) -> None:  # type: ignore[no-untyped-def]
    assert [str(p) for p in problems_of(write(text))] == []


def test_model_built_from_a_valid_workflow(write) -> None:  # type: ignore[no-untyped-def]
    wf = validate.load_workflow(
        write(
            "name: t\nparams: [host, {name: port, type: int, default: 5432}]\ndeadline: 30\nextra_args: false\n"
            "steps:\n"
            "  - id: a\n    local: [x]\n    retry: {attempts: 4, delay: 2, backoff: 3, max_delay: 10}\n"
            "    timeout: 5\n    on_error: h\n    undo: [h]\n"
            "  - id: b\n    local: [y]\n    on_error: continue\n    guard: true\n"
            "handlers:\n  - id: h\n    local: [z]\n"
        )
    )
    a, b = wf.steps
    assert (wf.deadline, wf.extra_args, wf.lock_timeout) == (30, False, 0)
    assert [(p.name, p.type, p.required, p.default) for p in wf.params] == [
        ("host", "str", True, None),
        ("port", "int", False, 5432),
    ]
    assert (a.retry.attempts, a.retry.delay, a.retry.backoff, a.retry.max_delay) == (4, 2, 3, 10)
    assert (a.on_error, a.fallbacks, a.undo, a.timeout, a.line, a.needs) == (
        "fallback",
        ("h",),
        ("h",),
        5,
        6,
        (),
    )
    assert (b.on_error, b.guard, b.needs, b.explicit_needs, b.line) == ("continue", True, ("a",), False, 12)
    assert wf.handlers["h"].handler is True and wf.handlers["h"].needs == ()


@pytest.mark.parametrize("name", ["failover", "follow_primary", "recovery_1st_stage", "remote_start"])
def test_shipped_workflows_validate(name: str) -> None:
    path = os.path.join(shipped_workflows_dir(), name + ".yaml")
    assert validate.load_workflow(path).name == name


def test_resolve_workflow_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "failover.yaml").write_text("name: failover\n")
    assert validate.resolve_workflow_path("failover", str(tmp_path)) == str(tmp_path / "failover.yaml")
    assert validate.resolve_workflow_path("./x.yaml", str(tmp_path)) == "./x.yaml"
    with pytest.raises(InvalidInput) as info:
        validate.resolve_workflow_path("failovr", str(tmp_path))
    assert f"no workflow named 'failovr' in {tmp_path} (did you mean 'failover'?)" in info.value.render()


def test_deeply_nested_expression_is_a_problem_not_a_crash(write) -> None:  # type: ignore[no-untyped-def]
    path = write(HEAD + "  - id: a\n    when: '" + "(" * 3000 + "1" + ")" * 3000 + "'\n    exit: 0\n")
    assert [(p.line, p.path, p.message) for p in problems_of(path)] == [
        (5, "steps[0].when", "Jinja2 expression nested too deeply")
    ]
