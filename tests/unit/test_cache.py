"""The validation cache: used only when it is this user's and for this exact input."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import cache, validate
from engine.resume import fingerprint

WORKFLOW = """
name: cached
params: [host]
steps:
  - id: hello
    local: [echo, "{{ host }}"]
  - id: done
    exit: 0
"""


def _entries(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}-*.json"))


@pytest.fixture
def cached(write: Callable[..., str], tmp_path: Path) -> tuple[str, Path]:
    """A workflow that validated once with a cache folder: (its path, the one entry)."""
    path = write(WORKFLOW)
    folder = tmp_path / "state" / "cache"
    validate.load_workflow(path, cache_dir=str(folder))
    (entry,) = _entries(folder, "workflow")
    return path, entry


def test_a_workflow_entry_is_private_and_found_again(cached: tuple[str, Path]) -> None:
    path, entry = cached
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    fresh = validate.load_workflow(path)
    again = validate.load_workflow(path, cache_dir=str(entry.parent))
    assert again == fresh and again.digests is not None


def test_a_cached_workflow_brings_the_digests_resume_compares(cached: tuple[str, Path]) -> None:
    path, entry = cached
    again = validate.load_workflow(path, cache_dir=str(entry.parent))
    assert again.digests == fingerprint(validate.load_workflow(path))


def test_an_edit_means_a_full_check(cached: tuple[str, Path]) -> None:
    path, entry = cached
    Path(path).write_text(Path(path).read_text().replace("exit: 0", "exit: 1"))
    data = Path(path).read_bytes()
    assert cache.lookup(str(entry.parent), path, data) is None


@pytest.mark.parametrize("mode", [0o620, 0o602], ids=["group", "others"])
def test_an_entry_others_could_write_is_not_used(cached: tuple[str, Path], mode: int) -> None:
    path, entry = cached
    entry.chmod(mode)
    assert cache.lookup(str(entry.parent), path, Path(path).read_bytes()) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the entry to another user")
def test_an_entry_of_another_user_is_not_used(cached: tuple[str, Path]) -> None:
    path, entry = cached
    os.chown(entry, 65534, 65534)
    assert cache.lookup(str(entry.parent), path, Path(path).read_bytes()) is None


def test_an_entry_renamed_to_another_key_is_not_used(
    cached: tuple[str, Path], write: Callable[..., str]
) -> None:
    path, entry = cached
    other = write(WORKFLOW.replace("exit: 0", "exit: 3"), "other.yaml")
    validate.load_workflow(other, cache_dir=str(entry.parent))
    (other_entry,) = [e for e in _entries(entry.parent, "workflow") if e != entry]
    os.replace(entry, other_entry)  # the first workflow's model under the second's name
    assert cache.lookup(str(entry.parent), other, Path(other).read_bytes()) is None


def test_a_new_engine_means_a_full_check(cached: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path, entry = cached
    monkeypatch.setattr(cache, "_ENGINE_FINGERPRINT", "another engine")
    assert cache.lookup(str(entry.parent), path, Path(path).read_bytes()) is None
