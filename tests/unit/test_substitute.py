"""The no-compile path for plain substitutions answers exactly as Jinja2 would.

Every source the fast path takes is also rendered through Jinja2 itself, with the same
values: same text, or the same exception with the same message; and validation finds the
same names in it as Jinja2's own analysis does.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import meta, nodes

from engine import render, substitute
from engine.render import RuntimeRef, StepResults


class Box:
    ok = True
    _hidden = "secret"

    def __str__(self) -> str:
        return "box's str"


CONTEXT: dict[str, Any] = {
    "h": "10.0.0.1",
    "d": "/var/lib/postgresql/15/main",
    "q": "it's $(touch x)",
    "n": 5,
    "flag": True,
    "off": False,
    "nothing": None,
    "m": {"ok": True, "rc": 0, "inner": {"x": "a b"}, "items": [1]},
    "box": Box(),
    "steps": StepResults({"done": {"ok": True, "rc": 0}}, True),
    "params": {"h": "10.0.0.1"},
}
NAMES = [*CONTEXT, "missing", "range", "namespace", "true", "None", "not", "self", "result", "loop", "_x"]
ATTRS = ["ok", "rc", "inner", "x", "items", "upper", "__class__", "_hidden", "done", "probe", "missing"]


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        value = fn(*args)
    except Exception as exc:  # the comparison is of what each side raises
        return "raised", (type(exc), getattr(exc, "message", None) or str(exc), getattr(exc, "ref", None))
    if isinstance(value, RuntimeRef):
        return "runtime", value._ref
    return "value", re.sub(r" at 0x[0-9a-f]+", "", repr(value))  # the same object, or an equal one


def _paths(names: list[str]) -> st.SearchStrategy[str]:
    attrs = st.lists(st.sampled_from(ATTRS), max_size=3)
    return st.builds(lambda name, more: ".".join([name, *more]), st.sampled_from(names), attrs)


def _sources(names: list[str], blanks: list[str], texts: list[str]) -> st.SearchStrategy[str]:
    space = st.sampled_from(blanks)
    block = st.builds(lambda a, p, b: "{{" + a + p + b + "}}", space, _paths(names), space)
    return st.lists(st.one_of(block, st.sampled_from(texts)), max_size=6).map("".join)


# mostly what the fast path takes; and anything near it, which it must leave to Jinja2 or get right
likely = _sources(
    [n for n in NAMES if n not in substitute._RESERVED],
    ["", " ", "  ", "\t"],
    ["ls ", "/", "}", "}}", " x ", "\n", "'", "$(id)", "a\tb"],
)
nearby = _sources(NAMES, ["", " ", "\t", "\n", "-", "+"], ["{", "}}", "{{", "{%", "{#", "\r\n", "{{ 1 }}"])
sources = likely | nearby
paths = _paths(NAMES)


@settings(max_examples=400, deadline=None)
@given(source=sources, shell=st.booleans())
def test_substitution_renders_as_jinja2(source: str, shell: bool) -> None:
    parts = substitute.split(source)
    if parts is None:
        return
    fast = substitute.Substitution(render.environment(shell), parts)
    assert _outcome(fast.render, CONTEXT) == _outcome(render.compiled(source, shell).render, CONTEXT)


@settings(max_examples=300, deadline=None)
@given(
    source=st.builds(
        lambda a, p, b: a + p + b, st.sampled_from(["", " ", "\t"]), paths, st.sampled_from(["", " ", "\n"])
    )
    | st.text(max_size=8)
)
def test_path_expression_evaluates_as_jinja2(source: str) -> None:
    path = substitute.expression_path(source)
    if path is None:
        return
    env = render.environment()
    fast = substitute.PathExpression(env, path)
    slow = env.compile_expression(source, undefined_to_none=False)
    assert _outcome(fast, CONTEXT) == _outcome(slow, CONTEXT)


def _jinja_undeclared(source: str, expression: bool) -> tuple[set[str], set[str]]:
    ast = render.environment().parse("{{ (" + source + ") }}" if expression else source)
    steps = {
        n.attr
        for n in ast.find_all(nodes.Getattr)
        if isinstance(n.node, nodes.Name) and n.node.name == "steps"  # type: ignore[attr-defined]
    }
    return set(meta.find_undeclared_variables(ast)), steps


@settings(max_examples=300, deadline=None)
@given(source=sources)
def test_names_found_without_parsing_are_jinja2s(source: str) -> None:
    if substitute.split(source) is not None:
        assert render.undeclared(source) == _jinja_undeclared(source, False)
    if substitute.expression_path(source) is not None:
        assert render.undeclared(source, expression=True) == _jinja_undeclared(source, True)


@pytest.mark.parametrize(
    "source",
    [
        "{{ h }}",
        "ls {{ d }}/1",
        "{{ m.inner.x }}:{{ n }}",
        "plain",
        "",
        "a }} b",
        "{{\th\t}}",
        "{{ steps.s1.ok }}",
    ],
)
def test_plain_substitutions_take_the_fast_path(source: str) -> None:
    assert substitute.split(source) is not None


@pytest.mark.parametrize(
    "source",
    [
        "{{ h | quote }}",
        "{{ x + 1 }}",
        "{{ m['ok'] }}",
        "{{ true }}",
        "{{- h }}",
        "{{ h -}}",
        "{% if h %}x{% endif %}",
        "{# c #}",
        "a\r\n{{ h }}",
        "{{ h\n}}",
        "{{ h.0 }}",
        "{{ h }",
        "{{ self }}",
        "{{ é }}",
    ],
)
def test_anything_else_goes_to_jinja2(source: str) -> None:
    assert substitute.split(source) is None


def test_undeclared_results_are_callers_own_copies() -> None:
    names, steps = render.undeclared("{{ steps.a.ok }}{{ h }}")
    names.add("changed")
    steps.clear()
    assert render.undeclared("{{ steps.a.ok }}{{ h }}") == ({"steps", "h"}, {"a"})
