"""Loading YAML: every problem as ``file:line:column: message``, positions kept for later checks."""

from __future__ import annotations

import pytest

from engine import source, validate

from .helpers import parse

DEEP_FLOW = "a: " + "[" * 70 + "]" * 70 + "\n"
DEEP_BLOCK = "".join("  " * i + f"k{i}:\n" for i in range(70)) + "  " * 70 + "v: 1\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", "w.yaml:1:1: file is empty: expected a YAML mapping", id="empty"),
        pytest.param("  \n\n", "w.yaml:1:1: file is empty: expected a YAML mapping", id="blank"),
        pytest.param(
            "name: [a\nsteps: x\n",
            "w.yaml:2:6: not valid YAML: did not find expected ',' or ']'",
            id="not-yaml",
        ),
        pytest.param(
            "name: x\nsteps:\n\t- id: a\n",
            "w.yaml:3:1: not valid YAML: tab character: YAML indentation must use spaces",
            id="tab",
        ),
        pytest.param(
            "name: x\nsteps:\n  - id: a\n  \tlocal: x\n",
            "w.yaml:4:3: not valid YAML: tab character: YAML indentation must use spaces",
            id="tab-inside",
        ),
        pytest.param(
            "name: x\nsteps:\n  - id: a\n    local: [true]\n    id: b\n",
            "w.yaml:5:5: id: duplicate key (first defined at line 3)",
            id="duplicate-step-key",
        ),
        pytest.param(
            "name: x\nvars:\n  a: 1\n  b: 2\n  a: 3\n",
            "w.yaml:5:3: a: duplicate key (first defined at line 3)",
            id="duplicate-var",
        ),
        pytest.param(
            "a: 1\n---\nb: 2\n", "w.yaml:2:1: not valid YAML: but found another document", id="two-documents"
        ),
        pytest.param("? [a, b]\n: 1\n", "w.yaml:1:3: a mapping key must be a plain value", id="list-as-key"),
        pytest.param(
            "name: x\nsteps: [\x01]\n",
            "w.yaml:2:9: not valid YAML: character #x0001: control characters are not allowed",
            id="control-character",
        ),
        pytest.param(DEEP_FLOW, "w.yaml:1:68: nested too deeply (more than 64 levels)", id="deep-flow"),
        pytest.param(DEEP_BLOCK, "w.yaml:66:131: nested too deeply (more than 64 levels)", id="deep-block"),
    ],
)
def test_load_problems(text: str, expected: str) -> None:
    _, problems = source.parse(text, "w.yaml")
    assert [str(p) for p in problems] == [expected]


def test_huge_file_is_refused_before_parsing() -> None:
    text = "a: " + "x" * source.MAX_BYTES + "\n"
    doc, problems = source.parse(text, "w.yaml")
    assert doc is None
    assert [str(p) for p in problems] == ["w.yaml: file is larger than 1024 KiB"]


def test_huge_file_on_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * (2 * source.MAX_BYTES))
    doc, problems = source.load_file(str(path))
    assert doc is None
    assert [p.message for p in problems] == ["file is larger than 1024 KiB"]


def test_not_utf8(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    _, problems = source.load_file(str(path))
    assert [p.message for p in problems] == ["not UTF-8 text (byte 9)"]


def test_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, problems = source.load_file(str(tmp_path / "nope.yaml"))
    assert [p.message for p in problems] == ["cannot read file: No such file or directory"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "a workflow must be a YAML mapping, got a list"),
        ("hello\n", "a workflow must be a YAML mapping, got a string"),
        ("42\n", "a workflow must be a YAML mapping, got an integer"),
        ("# only a comment\n", "no content (only comments?): expected a YAML mapping"),
        ("~\n", "no content (only comments?): expected a YAML mapping"),
    ],
)
def test_workflow_must_be_a_mapping(write, text: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = write(text)
    doc, problems = source.load_file(path)
    assert problems == []
    validate.check_workflow(path, doc, problems)
    assert [str(p) for p in problems] == [f"{path}:1:1: {expected}"]


def test_positions_of_keys_and_items() -> None:
    doc, problems = parse(
        """
        name: x
        steps:
          - id: a
            local: [echo, hi]
          - id: b
        """
    )
    assert problems == []
    assert isinstance(doc, source.Map)
    assert doc.key_pos == {"name": (1, 1), "steps": (2, 1)}
    assert doc["steps"].item_pos == [(3, 5), (5, 5)]
    assert source.locate(doc, ["steps", 0, "local", 1]) == (4, 19)
    assert source.locate(doc, ["steps", 1, "missing"]) == (5, 5)
    assert source.path_text(["steps", 0, "local", 1]) == "steps[0].local[1]"


def test_dates_stay_strings_and_plain_drops_positions() -> None:
    doc, problems = parse("d: 2024-01-01\nn: [1, {a: b}]\n")
    assert problems == []
    plain = source.plain(doc)
    assert plain == {"d": "2024-01-01", "n": [1, {"a": "b"}]}
    assert type(plain) is dict and type(plain["n"]) is list and type(plain["n"][1]) is dict


def test_all_duplicate_keys_reported_at_once() -> None:
    _, problems = parse("a: 1\nb: 2\na: 3\nc:\n  x: 1\n  x: 2\n")
    assert problems == [
        "w.yaml:3:1: a: duplicate key (first defined at line 1)",
        "w.yaml:6:3: x: duplicate key (first defined at line 5)",
    ]
