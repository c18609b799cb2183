"""The recipes in docs/recipes.md are real: every file in examples/recipes validates and
previews, every example config validates the shipped workflows, and every YAML excerpt
on the page is copied verbatim from one of those files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
CONFIGS = sorted((ROOT / "examples").glob("*.yaml"))
FAILOVER_ARGS = ["0", "pg1", "5432", "/var/lib/postgresql/15/main", "1", "pg2", "0", "0", "5432"]
FAILOVER_ARGS += ["/var/lib/postgresql/15/main", "pg1", "5432"]


def test_there_are_recipes() -> None:
    assert {p.name for p in RECIPES} >= {
        "failover_fenced.yaml",
        "failover_notify.yaml",
        "failover_sql_promote.yaml",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_previews(capsys: Any, tmp_path: Path, path: Path) -> None:
    assert main(["validate", str(path)]) == 0
    config = tmp_path / "c.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nsecrets: {{chat_webhook: {{value: https://chat.invalid/x}}}}\n"
    )
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--dry-run", str(path), *FAILOVER_ARGS]) == 0
    out = capsys.readouterr().out
    assert "[5] promote" in out or "[4] promote" in out
    assert "https://chat.invalid" not in out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates_the_shipped_workflows(capsys: Any, path: Path) -> None:
    assert main(["validate", "--config", str(path)]) == 0
    assert capsys.readouterr().out.count("ok: ") == 4


def test_every_yaml_excerpt_in_recipes_md_is_copied_from_an_example() -> None:
    sources = [p.read_text() for p in RECIPES + CONFIGS]
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "recipes.md").read_text(), re.S)
    assert len(blocks) >= 7
    for block in blocks:
        assert any(block in text for text in sources), f"not in examples/: {block[:80]!r}"
