"""Fixtures for step-kind tests against the real sandbox services (tools in kindtools.py)."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kindtools import KindRunner, make_config
from proctools import ssh_settings

from engine.log import Logger
from engine.masking import Masker
from engine.runtime import Runtime


@pytest.fixture
def make_runner() -> Iterator[Callable[..., KindRunner]]:
    made: list[KindRunner] = []

    def make(**overrides: Any) -> KindRunner:
        cfg = make_config(**overrides)
        stream = io.StringIO()
        logger = Logger("test", "test", Masker([]), stream=stream)
        rt = Runtime(cfg, logger)
        runner = KindRunner(cfg, rt, stream)
        rt.stream = lambda s, line: runner.lines.append((time.monotonic(), s, line))  # type: ignore[method-assign]
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.rt.close()


@pytest.fixture
def local_runner(make_runner: Callable[..., KindRunner]) -> KindRunner:
    return make_runner()


@pytest.fixture
def ssh_runner(make_runner: Callable[..., KindRunner], sshd: Any) -> KindRunner:
    return make_runner(ssh=ssh_settings(sshd))


@pytest.fixture
def remote_dir(sandbox_base: Path) -> Path:
    """A fresh folder the ssh login user (postgres) owns; the tests, as root, can read it directly."""
    from sandbox.osuser import make_postgres_dir

    path = Path(tempfile.mkdtemp(prefix="remote-", dir=sandbox_base))
    make_postgres_dir(path, 0o755)
    return path
