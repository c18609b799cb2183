"""Fixtures of the unit tests (see ``helpers.py`` for the fakes they use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config

from .helpers import Harness, dedent


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., str]:
    """``write(yaml_text, name="wf.yaml") -> path`` of a file in a fresh folder."""

    def make(text: str, name: str = "wf.yaml") -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text), encoding="utf-8")
        return str(path)

    return make


@pytest.fixture
def harness(write: Callable[..., str]) -> Callable[..., Harness]:
    """``harness(yaml, script, args, config) -> Harness``: a Runner over a FakeKind and a FakeClock."""

    def make(
        text: str,
        script: dict[str, list[Any]] | None = None,
        args: list[str] | None = None,
        config: Config | None = None,
    ) -> Harness:
        return Harness(write(text), script, args, config)

    return make
