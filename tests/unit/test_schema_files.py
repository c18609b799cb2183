"""The checked-in JSON Schemas are what `pgpool-hook schema` prints, and everything shipped fits them.

Editors read `schema/*.schema.json` through the `yaml-language-server` comment at the
top of each workflow and example config; a schema file that lags behind the code
would complete keys that no longer exist, or flag valid ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.yaml"))
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
CONFIGS = sorted((ROOT / "examples").glob("*.yaml"))


def printed(capsys: Any, which: str) -> str:
    assert main(["schema", which]) == 0
    out: str = capsys.readouterr().out
    return out


@pytest.mark.parametrize("which", ["workflow", "config"])
def test_checked_in_schema_is_what_the_command_prints(capsys: Any, which: str) -> None:
    path = ROOT / "schema" / f"{which}.schema.json"
    assert path.read_text() == printed(capsys, which), (
        f"{path.relative_to(ROOT)} is stale: run `pgpool-hook schema {which} > {path.relative_to(ROOT)}`"
    )


@pytest.mark.parametrize("which", ["workflow", "config"])
def test_schema_is_a_valid_json_schema(capsys: Any, which: str) -> None:
    Draft202012Validator.check_schema(json.loads(printed(capsys, which)))


def _check(capsys: Any, which: str, path: Path) -> None:
    schema = json.loads(printed(capsys, which))
    text = path.read_text()
    rel = "../" * (len(path.relative_to(ROOT).parts) - 1)
    assert text.startswith(f"# yaml-language-server: $schema={rel}schema/{which}.schema.json\n"), (
        f"{path.relative_to(ROOT)} should start with the yaml-language-server schema comment"
    )
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(yaml.safe_load(text))]
    assert errors == []


def test_there_is_something_to_check() -> None:
    assert len(WORKFLOWS) >= 4
    assert CONFIGS


@pytest.mark.parametrize("path", WORKFLOWS + RECIPES, ids=lambda p: p.name)
def test_shipped_workflows_fit_the_schema(capsys: Any, path: Path) -> None:
    _check(capsys, "workflow", path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_fit_the_schema(capsys: Any, path: Path) -> None:
    _check(capsys, "config", path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    from engine import config as config_mod

    assert config_mod.load(str(path)).path == str(path)
