"""Property: whatever a workflow file holds, loading answers with a workflow or located problems.

Hypothesis starts from the shipped workflows and breaks them the ways editors and bad merges
do: keys deleted, duplicated or given another type, random YAML fragments inserted, lines
cut, random bytes.  Each result goes through the same code path as ``pgpool-hook validate``
(in-process) and through ``validate.load_workflow``, and must end as either a valid
workflow or an ``InvalidInput`` whose every problem names its file and line; never another
exception, an "internal error" or a hang (each example runs under a 10 s alarm).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import config, validate
from engine.cli import main
from engine.config import shipped_workflows_dir
from engine.errors import InvalidInput
from engine.model import Workflow

NAMES = ("failover", "follow_primary", "recovery_1st_stage", "remote_start")
SHIPPED = {
    n: open(os.path.join(shipped_workflows_dir(), n + ".yaml"), encoding="utf-8").read() for n in NAMES
}
EXAMPLES = os.path.join(os.path.dirname(shipped_workflows_dir()), "examples")
CONFIGS = {
    n: open(os.path.join(EXAMPLES, n), encoding="utf-8").read()
    for n in ("pgpool-hook.yaml", "pgpool-hook-rhel.yaml")
}
# problems about the file as a whole, which have no line to point at
WHOLE_FILE = ("file is larger than", "not UTF-8 text", "cannot read file")

FRAGMENTS = st.sampled_from(
    [
        "- id: x\n",
        "steps:\n",
        "  - id: promote\n    exit: 0\n",
        "    needs: [promote, verify_promoted]\n",
        "    retry: {attempts: '3', until: '{{'}\n",
        "    when: '{{ nope }}'\n",
        "    local: ['{{ steps.later.rc }}']\n",
        "    undo: ghost\n",
        "&a [*a]\n",
        "x: *undefined_alias\n",
        "!!python/object:os.system {}\n",
        "? [a, b]\n: c\n",
        "\t- tab\n",
        "key: value: other\n",
        "'unterminated\n",
        "{% raw %}\n",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "name: [\n",
        "\ufeff\n",
        "\x00\n",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["{{ x }}", "{{", "{% if %}", "steps.a.rc", "continue", "fail", "/tmp/x", "int", ""]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
)


@pytest.fixture(scope="module")
def folder() -> Iterator[str]:
    """A workflows folder with the shipped templates, so `src:` references resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(shipped_workflows_dir(), "templates"), os.path.join(tmp, "templates"))
        with open(os.path.join(tmp, "config.yaml"), "w") as fh:
            fh.write(f"state_dir: {tmp}/state\n")
        yield tmp


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"loading did not finish within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(folder: str, data: bytes) -> Workflow | InvalidInput:
    path = os.path.join(folder, "mutated.yaml")
    with open(path, "wb") as fh:
        fh.write(data)
    with alarm(10):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", "--config", os.path.join(folder, "config.yaml"), path])
        try:
            result: Workflow | InvalidInput = validate.load_workflow(path)
        except InvalidInput as exc:
            result = exc
    assert "internal error" not in err.getvalue() and "Traceback" not in err.getvalue()
    if isinstance(result, Workflow):
        assert code == 0, err.getvalue()
        assert result.steps
        return result
    assert code == 2, err.getvalue()
    assert result.problems
    for problem in result.problems:
        assert problem.file and problem.message, problem
        assert str(problem) in err.getvalue()
        if problem.file == path and not problem.message.startswith(WHOLE_FILE):
            assert problem.line is not None and problem.line >= 1, problem
    return result


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a loaded document."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, prefix + (i,))
    return out


def parent_and_key(doc: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


@st.composite
def tree_mutations(draw: st.DrawFn) -> bytes:
    """Delete, duplicate or retype keys and items of a shipped workflow, then dump it again."""
    doc = yaml.safe_load(SHIPPED[draw(st.sampled_from(NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_of(doc)
        if not paths:
            break
        parent, key = parent_and_key(doc, draw(st.sampled_from(paths)))
        action = draw(st.sampled_from(["delete", "retype", "duplicate", "rename"]))
        if action == "delete":
            del parent[key]
        elif action == "retype":
            parent[key] = draw(VALUES)
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, parent[key])
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(key)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8")


@st.composite
def text_mutations(draw: st.DrawFn, sources: dict[str, str] = SHIPPED) -> bytes:
    """Line-level damage: duplicated lines (duplicate keys), inserted fragments, cuts, bytes."""
    lines = sources[draw(st.sampled_from(sorted(sources)))].encode("utf-8").splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        action = draw(st.sampled_from(["duplicate", "fragment", "delete", "bytes", "truncate", "indent"]))
        if action == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif action == "fragment":
            indent = b" " * draw(st.sampled_from([0, 2, 4, 6]))
            lines.insert(i, indent + draw(FRAGMENTS).encode("utf-8"))
        elif action == "delete" and lines:
            del lines[i]
        elif action == "bytes":
            lines.insert(i, draw(st.binary(min_size=1, max_size=16)))
        elif action == "truncate" and lines:
            line = lines[i]
            lines[i] = line[: draw(st.integers(0, len(line)))]
        elif action == "indent" and lines:
            lines[i] = b" " * draw(st.integers(1, 3)) + lines[i]
    return b"".join(lines)


SETTINGS = settings(
    max_examples=60,
    deadline=None,  # the alarm bounds each example; wall-clock deadlines flake on a busy machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_workflows_are_valid_through_the_same_path(folder: str, name: str) -> None:
    assert isinstance(check(folder, SHIPPED[name].encode()), Workflow)


@SETTINGS
@given(data=tree_mutations())
def test_mutated_trees_give_a_workflow_or_located_problems(folder: str, data: bytes) -> None:
    check(folder, data)


@SETTINGS
@given(data=text_mutations())
def test_damaged_text_gives_a_workflow_or_located_problems(folder: str, data: bytes) -> None:
    check(folder, data)


@settings(SETTINGS, max_examples=40)
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_give_located_problems(folder: str, data: bytes) -> None:
    check(folder, data)


@SETTINGS
@given(data=text_mutations(CONFIGS))
def test_damaged_config_gives_a_config_or_located_problems(folder: str, data: bytes) -> None:
    """The same damage to the example configs: a Config, or InvalidInput naming file and line."""
    path = os.path.join(folder, "damaged-config.yaml")
    with open(path, "wb") as fh:
        fh.write(data)
    with alarm(10):
        try:
            config.load(path)
        except InvalidInput as exc:
            assert exc.problems
            for problem in exc.problems:
                assert problem.file == path and problem.message, problem
                if not problem.message.startswith(WHOLE_FILE):
                    assert problem.line is not None and problem.line >= 1, problem
