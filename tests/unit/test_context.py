"""Binding pgpool's positional arguments to typed params, and the context expressions see."""

from __future__ import annotations

import pytest

from engine import context
from engine.errors import InvalidInput, RenderError
from engine.model import Param, Workflow

from .helpers import make_config


def workflow(*params: Param, extra_args: bool = True, vars: dict | None = None) -> Workflow:  # type: ignore[type-arg]
    return Workflow(
        name="f",
        path="/tmp/f.yaml",
        description="",
        params=params,
        vars=vars or {},
        steps=(),
        handlers={},
        extra_args=extra_args,
    )


FAILOVER_LIKE = workflow(
    Param("node_id", "int"),
    Param("host"),
    Param("port", "int"),
    Param("flag", "bool", default=False, required=False),
    extra_args=False,
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["1", "h", "5432"], {"node_id": 1, "host": "h", "port": 5432, "flag": False}),
        ([" 1", "h", " 5432 "], {"node_id": 1, "host": "h", "port": 5432, "flag": False}),  # pgpool 4.4: " 1"
        (["-1", "", "5432"], {"node_id": -1, "host": "", "port": 5432, "flag": False}),  # unknown host: ""
        (
            ["", "h", ""],
            {"node_id": None, "host": "h", "port": None, "flag": False},
        ),  # empty int: the default
        (["+3", " h ", "0"], {"node_id": 3, "host": " h ", "port": 0, "flag": False}),  # strings kept exactly
        (["1", "hé中 $(x)", "1"], {"node_id": 1, "host": "hé中 $(x)", "port": 1, "flag": False}),
        (["1", "h" * 4096, "1"], {"node_id": 1, "host": "h" * 4096, "port": 1, "flag": False}),
        (["1", "h", "1", "yes"], {"node_id": 1, "host": "h", "port": 1, "flag": True}),
        (["1", "h", "1", " OFF"], {"node_id": 1, "host": "h", "port": 1, "flag": False}),
        (["1", "h", "1", ""], {"node_id": 1, "host": "h", "port": 1, "flag": False}),
    ],
)
def test_bind_ok(args: list[str], expected: dict) -> None:  # type: ignore[type-arg]
    values = context.bind_params(FAILOVER_LIKE, args)
    assert values == {**expected, "extra_args": []}


USAGE = "hint: usage: pgpool-hook run f node_id host port flag"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1"], "f takes 3 to 4 arguments (node_id host port flag); got 1"),
        ([], "f takes 3 to 4 arguments (node_id host port flag); got 0"),
        (["1", "h", "1", "yes", "extra"], "f takes at most 4 arguments (node_id host port flag); got 5"),
        (["x", "h", "1"], "argument 1 (node_id) must be an integer, got 'x'"),
        (["1.5", "h", "1"], "argument 1 (node_id) must be an integer, got '1.5'"),
        (["1", "h", "0x10"], "argument 3 (port) must be an integer, got '0x10'"),
        (["1_0", "h", "1"], "argument 1 (node_id) must be an integer, got '1_0'"),
        (["\uff11", "h", "1"], "argument 1 (node_id) must be an integer, got '\uff11'"),  # fullwidth 1
        (["1", "h" * 4097, "1"], "argument 2 (host) is longer than 4096 characters"),
        (["1", "a\x00b", "1"], "argument 2 (host) contains a NUL byte"),
        (["1", "h", "1", "maybe"], "argument 4 (flag) must be true or false, got 'maybe'"),
    ],
)
def test_bind_rejects(args: list[str], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        context.bind_params(FAILOVER_LIKE, args)
    assert info.value.render().splitlines() == [f"error: <arguments>: {message}", USAGE]


def test_every_bad_argument_reported_at_once() -> None:
    with pytest.raises(InvalidInput) as info:
        context.bind_params(FAILOVER_LIKE, ["x", "h", "y"])
    assert [p.message for p in info.value.problems] == [
        "argument 1 (node_id) must be an integer, got 'x'",
        "argument 3 (port) must be an integer, got 'y'",
    ]


def test_extra_arguments_tolerated_by_default() -> None:
    wf = workflow(Param("a"), Param("b", "int"))
    assert context.bind_params(wf, ["x", "2", "-1", "", "--"]) == {
        "a": "x",
        "b": 2,
        "extra_args": ["-1", "", "--"],
    }


def test_exact_count_message_without_optional_params() -> None:
    with pytest.raises(InvalidInput) as info:
        context.bind_params(workflow(Param("a"), Param("b")), ["x"])
    assert info.value.problems[0].message == "f takes 2 arguments (a b); got 1"


def test_build_exposes_params_config_and_vars_in_order() -> None:
    wf = workflow(Param("host"), vars={"a": "{{ host }}-a", "b": "{{ a }}-b", "n": 3, "l": ["{{ host }}", 1]})
    cfg = make_config(vars={"b": "over-{{ a }}"})
    params = context.bind_params(wf, ["pg1"])
    ctx, r = context.build(wf, cfg, params, dry_run=False, run_id="r1")
    assert (ctx["a"], ctx["b"], ctx["n"], ctx["l"]) == ("pg1-a", "over-pg1-a", 3, ["pg1", 1])
    assert ctx["params"] == {"host": "pg1", "extra_args": []}
    assert (ctx["run_id"], ctx["dry_run"], ctx["workflow"]["name"]) == ("r1", False, "f")
    assert r.text("{{ config.postgres.superuser }}@{{ host }}") == "postgres@pg1"


@pytest.mark.parametrize(
    ("rule", "call", "expected"),
    [
        (None, "replication_slot(host='PG-1.example.com')", "pg_1_example_com"),
        (None, "replication_slot(host='10.0.0.2')", "10_0_0_2"),
        ("node_{{ node_id }}", "replication_slot(host='h', node_id=2)", "node_2"),
        ("{{ host | slot_name }}_{{ port }}", "replication_slot(host='a.b', port=5433)", "a_b_5433"),
        ("Slot-{{ host }}", "replication_slot(host='x y')", "slot_x_y"),  # always a valid slot name
    ],
)
def test_replication_slot_rule(rule: str | None, call: str, expected: str) -> None:
    cfg = make_config(**({"replication_slot": rule} if rule else {}))
    _, r = context.build(workflow(), cfg, {}, dry_run=False)
    assert r.expr(call) == expected


def test_secrets_view_names_the_missing_secret() -> None:
    cfg = make_config()
    cfg.secrets = {"repl": "s3cret"}
    cfg.secret_problems = {"gone": "environment variable GONE is not set"}
    _, r = context.build(workflow(), cfg, {}, dry_run=False)
    assert r.text("{{ secrets.repl }}") == "s3cret"
    with pytest.raises(RenderError, match="secret 'gone': environment variable GONE is not set"):
        r.text("{{ secrets.gone }}")
    with pytest.raises(RenderError, match="no secret named 'other' in the config"):
        r.text("{{ secrets['other'] }}")


def test_var_using_a_step_result_fails_in_dry_run() -> None:
    wf = workflow(vars={"x": "{{ steps.a.stdout }}"})
    with pytest.raises(RenderError, match=r"vars.x cannot use step results \(steps.a.stdout\)"):
        context.build(wf, make_config(), {}, dry_run=True)
