"""The validation cache: used only when it is this user's and for this exact input."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import cache, source, validate
from engine import config as config_mod
from engine.errors import InvalidInput
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


def test_a_fifo_in_place_of_an_entry_does_not_hang(cached: tuple[str, Path]) -> None:
    path, entry = cached
    entry.unlink()
    os.mkfifo(entry, 0o600)
    assert cache.lookup(str(entry.parent), path, Path(path).read_bytes()) is None


# ---- configs -----------------------------------------------------------------------------

SECRET = "n0t-in-the-cache"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pgpool-hook.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvars: {{greeting: hello}}\nlock_timeout: 7\n")
    return path


def _no_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> None:
        raise AssertionError(f"{path} was parsed again")

    monkeypatch.setattr("engine.source.load_file", refuse)


def _no_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr("engine.validate.schema_problems", refuse)


def test_a_config_that_passed_is_read_without_yaml(
    config_file: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = config_mod.load(str(config_file), remember=True)
    (entry,) = _entries(user_cache, "config")
    (passed,) = _entries(config_file.parent / "state" / "cache", "config")
    for path in (entry, passed):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    _no_yaml(monkeypatch)
    again = config_mod.load(str(config_file), remember=True)
    assert again == first and again.data["vars"] == {"greeting": "hello"}


def test_an_edited_config_is_checked_again(config_file: Path) -> None:
    config_mod.load(str(config_file), remember=True)
    config_file.write_text(config_file.read_text().replace("lock_timeout: 7", "lock_timeout: soon"))
    with pytest.raises(InvalidInput, match="lock_timeout: expected number"):
        config_mod.load(str(config_file), remember=True)


def test_overrides_are_part_of_what_is_remembered(config_file: Path) -> None:
    config_mod.load(str(config_file), remember=True)
    cfg = config_mod.load(str(config_file), config_mod.parse_set(["vars.greeting=hey"]), remember=True)
    assert cfg.data["vars"] == {"greeting": "hey"}
    assert config_mod.load(str(config_file), remember=True).data["vars"] == {"greeting": "hello"}


def test_a_config_is_remembered_only_by_a_real_run(config_file: Path, user_cache: Path) -> None:
    config_mod.load(str(config_file))
    assert _entries(user_cache, "config") == []


def test_a_secret_value_is_not_written_only_that_the_checks_passed(
    config_file: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text(config_file.read_text() + f"secrets: {{pw: {{value: {SECRET}}}}}\n")
    config_mod.load(str(config_file), remember=True)
    assert _entries(user_cache, "config") == []
    (passed,) = _entries(config_file.parent / "state" / "cache", "config")
    assert SECRET not in passed.read_text()
    _no_checks(monkeypatch)
    assert config_mod.load(str(config_file), remember=True).secrets == {"pw": SECRET}


def test_without_a_usable_home_the_checks_are_still_remembered(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # no folder can be made there
    config_mod.load(str(config_file), remember=True)
    _no_checks(monkeypatch)
    assert config_mod.load(str(config_file), remember=True).data["lock_timeout"] == 7


def test_settings_json_would_change_are_read_from_the_file(config_file: Path, user_cache: Path) -> None:
    config_file.write_text(config_file.read_text().replace("{greeting: hello}", "{1: one}"))
    config_mod.load(str(config_file), remember=True)
    assert config_mod.load(str(config_file), remember=True).data["vars"] == {1: "one"}


def test_a_config_entry_others_could_write_is_not_used(
    config_file: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_mod.load(str(config_file), remember=True)
    (entry,) = _entries(user_cache, "config")
    entry.write_text(entry.read_text().replace("hello", "forged"))
    assert config_mod.load(str(config_file), remember=True).data["vars"] == {"greeting": "forged"}
    entry.chmod(0o622)
    assert config_mod.load(str(config_file), remember=True).data["vars"] == {"greeting": "hello"}
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600  # written again


def test_the_user_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.user_dir() == str(tmp_path / ".cache" / "pgpool-hook")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.user_dir() == str(tmp_path / "xdg" / "pgpool-hook")


def test_every_file_the_checks_accept_is_read_whole() -> None:
    assert cache.READ_LIMIT > source.MAX_BYTES
