"""The hand-over request to the resident runner keeps every argument and variable intact."""

from __future__ import annotations

import os

import pytest

from engine import launch


def test_a_request_round_trips_awkward_arguments_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOL_HOOK_TEST_SPACES", "a b\tc")
    monkeypatch.setenv("PGPOOL_HOOK_TEST_EQUALS", "x=y=z")
    os.environb[b"PGPOOL_HOOK_TEST_BYTES"] = b"\xff\xfe"
    try:
        argv = ["/usr/bin/failover.sh", "run", "-1", "", "  spaced ", "--set", "vars.x=é", "\n"]
        data = launch.encode_request(argv, "12")
        assert data.startswith(launch.MAGIC)
        assert int.from_bytes(data[4:8], "big") == len(data) - 8
        request = launch.decode_request(data[8:])
    finally:
        del os.environb[b"PGPOOL_HOOK_TEST_BYTES"]
    assert request["argv"] == argv
    assert request["fds"] == "12"
    assert request["cwd"] == os.getcwd()
    env = request["env"]
    assert isinstance(env, dict)
    assert env[b"PGPOOL_HOOK_TEST_SPACES"] == b"a b\tc"
    assert env[b"PGPOOL_HOOK_TEST_EQUALS"] == b"x=y=z"
    assert env[b"PGPOOL_HOOK_TEST_BYTES"] == b"\xff\xfe"
    umask = os.umask(0)
    os.umask(umask)
    assert request["umask"] == umask


@pytest.mark.parametrize(
    ("value", "expected"), [("", None), ("off", None), ("none", None), ("/x/y.sock", "/x/y.sock")]
)
def test_the_socket_can_be_moved_or_turned_off(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None
) -> None:
    monkeypatch.setenv(launch.SOCKET_ENV, value)
    assert launch.socket_path() == expected


def test_no_runner_means_the_call_runs_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv(launch.SOCKET_ENV, os.path.join(tmp_path, "absent.sock"))
    assert launch.handoff(["pgpool-hook", "validate"]) is None
