"""Whatever a file contains, loading and validation answer with problems, never an exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import source, validate
from engine.errors import Problem

KEYS = st.sampled_from(
    [
        "name",
        "steps",
        "handlers",
        "params",
        "vars",
        "id",
        "local",
        "exit",
        "sql",
        "ssh",
        "template",
        "file",
        "when",
        "needs",
        "undo",
        "on_error",
        "retry",
        "until",
        "command",
        "host",
        "statement",
        "dest",
        "content",
        "type",
        "default",
        "attempts",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["{{ x }}", "{{", "{% if %}", "steps.a.rc == 0", "a", "fail", "continue", "/tmp/x", "int"]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
STEP = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c"])},
    optional={k: VALUES for k in ("local", "exit", "when", "needs", "undo", "on_error", "retry", "template")},
)
DOCS = st.fixed_dictionaries(
    {"name": st.sampled_from(["t", "1", ""]), "steps": st.lists(STEP, max_size=4)},
    optional={"handlers": st.lists(STEP, max_size=2), "params": VALUES, "vars": VALUES},
)

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> list[Problem]:
    doc, problems = source.parse(text, "f.yaml")
    if not problems:
        validate.check_workflow("/tmp/f.yaml", doc, problems)
    assert all(isinstance(p, Problem) for p in problems)
    return problems


@FAST
@given(DOCS)
def test_random_workflows_never_raise(doc: dict) -> None:  # type: ignore[type-arg]
    check(yaml.safe_dump(doc))


@FAST
@given(st.text(max_size=200))
def test_random_text_never_raises(text: str) -> None:
    check(text)
