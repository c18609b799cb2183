"""`--help` of the program and of every subcommand says what it does and shows an example."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from engine.cli import _parser, main


def subcommands() -> list[str]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("no subcommands")


def help_of(capsys: Any, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out: str = capsys.readouterr().out
    return out


def test_top_level_help_lists_every_command_with_examples(capsys: Any) -> None:
    out = help_of(capsys)
    assert "exit codes:" in out and "examples:" in out
    for name in subcommands():
        assert f"\n    {name} " in out, name
    for name in ("run", "validate", "graph", "history", "show"):
        assert f"pgpool-hook {name}" in out.split("examples:")[1], name


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_says_what_it_does_with_an_example(capsys: Any, name: str) -> None:
    out = help_of(capsys, name)
    usage, rest = out.split("\n\n", 1)
    assert usage.startswith(f"usage: pgpool-hook {name}")
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("positional arguments", "options")), f"{name} has no description"
    assert len(description.split()) >= 8, description
    assert "example" in out and f"pgpool-hook {name}" in out.split("example", 1)[1], f"{name}: no example"


def test_no_command_prints_help_and_exits_2(capsys: Any) -> None:
    assert main([]) == 2
    assert "usage: pgpool-hook" in capsys.readouterr().out
