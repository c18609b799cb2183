"""``template`` steps writing files locally and over SFTP; results checked on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from kindtools import KindRunner, owner_name

from engine.errors import StepFailure

HOST = "127.0.0.11"


# the sftp variant gets the integration marker explicitly: it reaches sshd via getfixturevalue
@pytest.fixture(params=["local", pytest.param("sftp", marks=pytest.mark.integration)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[KindRunner, Path, dict[str, Any]]:
    """(runner, folder, extra body fields): the same checks locally and on a node over SFTP."""
    if request.param == "local":
        return request.getfixturevalue("local_runner"), tmp_path, {}
    runner = request.getfixturevalue("ssh_runner")
    return runner, request.getfixturevalue("remote_dir"), {"host": HOST}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(set(os.listdir(folder)) - keep)


CONTENT = "primary_conninfo = 'host={{ host }} port={{ port }}'\nprimary_slot_name = {{ slot | pgquote }}\n"


def test_write_mode_and_idempotence(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    dest = folder / "myrecovery.conf"
    body = {"dest": str(dest), "content": CONTENT, "mode": "0600", **extra}
    first = runner.apply("template", body, host="10.0.0.2", port=5432, slot="it's")
    assert first.changed and first.data == {"changed": True, "dest": str(dest), "created": True}
    assert dest.read_text() == "primary_conninfo = 'host=10.0.0.2 port=5432'\nprimary_slot_name = 'it''s'\n"
    assert mode_of(dest) == 0o600
    assert leftovers(folder, {"myrecovery.conf"}) == []  # no temporary file left behind
    if extra:
        assert owner_name(dest) == "postgres"  # written by the ssh login user
    inode = os.stat(dest).st_ino
    again = runner.apply("template", body, host="10.0.0.2", port=5432, slot="it's")
    assert not again.changed and again.data["changed"] is False
    assert os.stat(dest).st_ino == inode  # untouched
    # same content but another mode: rewritten with the new mode
    chmod = runner.apply("template", {**body, "mode": "0640"}, host="10.0.0.2", port=5432, slot="it's")
    assert chmod.changed and mode_of(dest) == 0o640


def test_atomic_replace_keeps_mode_and_revert_restores(
    where: tuple[KindRunner, Path, dict[str, Any]],
) -> None:
    runner, folder, extra = where
    dest = folder / "postgresql.auto.conf"
    dest.write_text("old = 1\n")
    os.chmod(dest, 0o604)
    if extra:
        os.chown(dest, *_postgres_ids())
    inode = os.stat(dest).st_ino
    body = {"dest": str(dest), "content": "new = {{ n }}\n", **extra}
    action, outcome = runner.run("template", body, n=2)
    assert dest.read_text() == "new = 2\n"
    assert os.stat(dest).st_ino != inode  # replaced by rename, never rewritten in place
    assert mode_of(dest) == 0o604  # mode None keeps the existing file's mode
    reverted = runner.revert("template", action, outcome)
    assert reverted.ok and dest.read_text() == "old = 1\n" and mode_of(dest) == 0o604
    assert leftovers(folder, {"postgresql.auto.conf"}) == []


def test_revert_of_a_created_file_removes_it(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    dest = folder / "fresh.conf"
    action, outcome = runner.run("template", {"dest": str(dest), "content": "x\n", **extra})
    assert dest.read_text() == "x\n" and mode_of(dest) == 0o644
    runner.revert("template", action, outcome)
    assert not dest.exists()


def test_missing_folder_fails_cleanly(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    dest = folder / "no-such-dir" / "x.conf"
    # locally an OSError (an "errored" step), over SFTP a StepFailure naming the folder
    with pytest.raises((FileNotFoundError, StepFailure)) as info:
        runner.apply("template", {"dest": str(dest), "content": "x", **extra})
    assert "no-such-dir" in str(info.value)
    assert not (folder / "no-such-dir").exists()


def _postgres_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def test_revert_restores_the_previous_mode_too(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    dest = folder / "recovery.conf"
    dest.write_text("old\n")
    os.chmod(dest, 0o644)
    if extra:
        os.chown(dest, *_postgres_ids())
    action, outcome = runner.run("template", {"dest": str(dest), "content": "new\n", "mode": "0600", **extra})
    assert mode_of(dest) == 0o600
    runner.revert("template", action, outcome)
    assert dest.read_text() == "old\n" and mode_of(dest) == 0o644
