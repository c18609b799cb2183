"""``file`` steps (touch, present, absent, line, empty) locally and over SFTP; results checked on disk."""

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
    if request.param == "local":
        return request.getfixturevalue("local_runner"), tmp_path, {}
    return request.getfixturevalue("ssh_runner"), request.getfixturevalue("remote_dir"), {"host": HOST}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_touch_and_present(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    signal = folder / "standby.signal"
    action, made = runner.run("file", {"path": str(signal), "state": "touch", **extra})
    assert made.changed and signal.read_bytes() == b"" and mode_of(signal) == 0o600
    if extra:
        assert owner_name(signal) == "postgres"
    assert not runner.apply("file", {"path": str(signal), "state": "present", **extra}).changed
    chmod = runner.apply("file", {"path": str(signal), "state": "present", "mode": "0640", **extra})
    assert chmod.changed and mode_of(signal) == 0o640
    runner.revert("file", action, made)  # undo of a created file removes it
    assert not signal.exists()
    assert os.listdir(folder) == []


def test_absent_and_revert(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    target = folder / "recovery.done"
    target.write_text("keep me\n")
    action, gone = runner.run("file", {"path": str(target), "state": "absent", **extra})
    assert gone.changed and not target.exists()
    assert not runner.apply("file", {"path": str(target), "state": "absent", **extra}).changed
    runner.revert("file", action, gone)
    assert target.read_text() == "keep me\n"
    (folder / "adir").mkdir()
    failure = runner.fail("file", {"path": str(folder / "adir"), "state": "absent", **extra})
    assert "is a folder" in str(failure) and (folder / "adir").is_dir()


def test_line_leaves_exactly_one_include(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    conf = folder / "postgresql.conf"
    conf.write_text(
        "port = 5432\n"
        "include_if_exists = '/old/a.conf'\n"
        "shared_buffers = 128MB\n"
        "include_if_exists = '/old/b.conf'\n"
        "include_if_exists = 'myrecovery.conf'\n"
    )
    os.chmod(conf, 0o640)
    if extra:
        os.chown(conf, *_postgres_ids())  # the ssh login user's own file, as in a real PGDATA
    line = "include_if_exists = '{{ file }}'"
    body = {
        "path": str(conf),
        "state": "line",
        "line": line,
        "regexp": "^\\s*include_if_exists\\s*=",
        **extra,
    }
    action, edited = runner.run("file", body, file="myrecovery.conf")
    assert edited.changed
    assert conf.read_text() == (
        "port = 5432\ninclude_if_exists = 'myrecovery.conf'\nshared_buffers = 128MB\n"
    )
    assert mode_of(conf) == 0o640  # the file keeps its mode
    assert not runner.apply("file", body, file="myrecovery.conf").changed  # idempotent
    port = runner.apply("file", {"path": str(conf), "state": "line", "line": "port = 5433", "regexp": "^port\\s*=",
                                 **extra})  # fmt: skip
    assert port.changed and conf.read_text().splitlines()[0] == "port = 5433"
    runner.revert("file", action, edited)  # back to the original, duplicates and all
    assert conf.read_text().count("include_if_exists") == 3
    # a missing file is an error unless create: true
    missing = folder / "new.conf"
    assert "does not exist" in str(runner.fail("file", {"path": str(missing), "state": "line", "line": "a = 1",
                                                        **extra}))  # fmt: skip
    runner.apply("file", {"path": str(missing), "state": "line", "line": "a = 1", "create": True, **extra})
    assert missing.read_text() == "a = 1\n"


def test_empty_removes_contents_without_following_symlinks(
    where: tuple[KindRunner, Path, dict[str, Any]],
) -> None:
    runner, folder, extra = where
    slots = folder / "pg_replslot"
    (slots / "node_1" / "deep").mkdir(parents=True)
    (slots / "node_1" / "state").write_text("x")
    (slots / "node_1" / "deep" / "f").write_text("x")
    (slots / ".hidden").write_text("x")
    outside = folder / "outside"
    outside.mkdir()
    (outside / "precious").write_text("do not delete")
    (slots / "link").symlink_to(outside)
    (slots / "link2").symlink_to(outside / "precious")
    if extra:  # the ssh login user must own what it removes
        for root, dirs, files in os.walk(folder):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), *_postgres_ids())
    out = runner.apply("file", {"path": str(slots), "state": "empty", **extra})
    assert out.data["removed"] == 4
    assert slots.is_dir() and os.listdir(slots) == []
    assert (outside / "precious").read_text() == "do not delete"
    assert not runner.apply("file", {"path": str(slots), "state": "empty", **extra}).changed
    fresh = folder / "archive"
    runner.apply("file", {"path": str(fresh), "state": "empty", "mode": "0700", **extra})
    assert fresh.is_dir() and mode_of(fresh) == 0o700


@pytest.mark.parametrize(
    "bad", ["/", "", "relative/dir", "/var/lib", "/var/lib/", "//", "/tmp", "/var/lib/postgresql"]
)
def test_empty_refuses_dangerous_paths(local_runner: KindRunner, bad: str) -> None:
    before = sorted(os.listdir("/var/lib"))
    with pytest.raises(StepFailure) as info:
        local_runner.apply("file", {"path": "{{ p }}", "state": "empty"}, p=bad)
    assert any(word in str(info.value) for word in ("refusing", "empty", "not an absolute path"))
    assert sorted(os.listdir("/var/lib")) == before


def test_empty_refuses_dangerous_paths_over_sftp(ssh_runner: KindRunner) -> None:
    for bad in ["/", "", "/var/lib"]:
        with pytest.raises(StepFailure):
            ssh_runner.apply("file", {"path": "{{ p }}", "state": "empty", "host": HOST}, p=bad)
    assert ssh_runner.rt.ssh_pool.connections_opened == 0  # refused before touching the node


def _postgres_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def test_reverts_restore_the_previous_mode(where: tuple[KindRunner, Path, dict[str, Any]]) -> None:
    runner, folder, extra = where
    secret = folder / "pcppass"
    secret.write_text("host:9898:pgpool:pw\n")
    os.chmod(secret, 0o600)
    conf = folder / "postgresql.conf"
    conf.write_text("port = 5432\n")
    os.chmod(conf, 0o644)
    if extra:
        for path in (secret, conf):
            os.chown(path, *_postgres_ids())
    removed = runner.run("file", {"path": str(secret), "state": "absent", **extra})
    runner.revert("file", *removed)
    assert secret.read_text() == "host:9898:pgpool:pw\n" and mode_of(secret) == 0o600
    chmod = runner.run("file", {"path": str(conf), "state": "present", "mode": "0600", **extra})
    assert mode_of(conf) == 0o600
    runner.revert("file", *chmod)
    assert mode_of(conf) == 0o644
    line = runner.run("file", {"path": str(conf), "state": "line", "line": "port = 5433", "regexp": "^port",
                               "mode": "0640", **extra})  # fmt: skip
    runner.revert("file", *line)
    assert conf.read_text() == "port = 5432\n" and mode_of(conf) == 0o644
