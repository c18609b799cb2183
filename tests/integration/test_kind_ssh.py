"""``ssh`` steps and the SSH transport against a real OpenSSH server (login user postgres)."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kindtools import KindRunner
from proctools import processes_matching, ssh_settings, unique_sleep, wait_no_process

from engine.errors import Interrupted

HOST = "127.0.0.11"
OTHER_HOST = "127.0.0.12"


def accepted_logins(sshd: Any) -> int:
    return sshd.log_text().count("Accepted publickey for postgres")


def test_exit_status_stdout_and_stderr(ssh_runner: KindRunner) -> None:
    body = {"host": HOST, "command": "echo out; echo err >&2; id -un; exit 3"}
    failure = ssh_runner.fail("ssh", body)
    assert failure.data["rc"] == 3
    assert failure.data["stdout"] == "out\npostgres\n"  # the pgid marker line is stripped
    assert failure.data["stderr"] == "err\n"
    assert "exit status 3: err" in str(failure)
    ok = ssh_runner.apply("ssh", {**body, "ok_codes": [3]})
    assert ok.ok and ok.data["rc"] == 3 and ok.data["stdout_lines"] == ["out", "postgres"]


def test_lines_stream_in_order_while_the_command_runs(ssh_runner: KindRunner) -> None:
    start = time.monotonic()
    out = ssh_runner.apply(
        "ssh", {"host": HOST, "command": "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done; echo done >&2"}
    )
    end = time.monotonic()
    stdout = [(t, line) for t, s, line in ssh_runner.lines if s == "stdout"]
    assert [line for _, line in stdout] == ["line1", "line2", "line3", "line4", "line5"]
    assert [line for _, s, line in ssh_runner.lines if s == "stderr"] == ["done"]
    # the first line arrived while the command was still running, not all at the end
    assert stdout[0][0] - start < end - start - 0.5
    assert stdout[-1][0] - stdout[0][0] > 0.6
    assert out.data["stdout_lines"] == ["line1", "line2", "line3", "line4", "line5"]


def test_one_connection_per_host_reused_by_every_step(
    ssh_runner: KindRunner, sshd: Any, remote_dir: Path
) -> None:
    before = accepted_logins(sshd)
    for i in range(4):
        assert ssh_runner.apply("ssh", {"host": HOST, "command": f"echo {i}"}).data["stdout"] == f"{i}\n"
    fs = ssh_runner.rt.fs(HOST)
    fs.write_atomic(f"{remote_dir}/x", b"x", None)  # SFTP rides on the same connection
    assert fs.read(f"{remote_dir}/x") == b"x"
    pool = ssh_runner.rt.ssh_pool
    assert pool.connections_opened == 1
    assert pool.connected() == [f"postgres@{HOST}:{sshd.port}"]
    ssh_runner.apply("ssh", {"host": OTHER_HOST, "command": "true"})
    assert pool.connections_opened == 2
    deadline = time.monotonic() + 3
    while accepted_logins(sshd) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert accepted_logins(sshd) - before == 2  # sshd saw exactly two logins for six operations


def test_timeout_kills_the_remote_process_group(ssh_runner: KindRunner) -> None:
    fg, bg = unique_sleep(), unique_sleep()
    start = time.monotonic()
    failure = ssh_runner.fail(
        "ssh", {"host": HOST, "command": f"sleep {bg} & echo started; sleep {fg}; wait"}, timeout=1
    )
    elapsed = time.monotonic() - start
    assert failure.timed_out and "remote command killed" in str(failure)
    assert elapsed < 4
    assert wait_no_process(f"sleep {fg}") == []
    assert wait_no_process(f"sleep {bg}") == []  # the background child too: the whole group
    # the connection is still usable afterwards
    assert (
        ssh_runner.apply("ssh", {"host": HOST, "command": "echo still-here"}).data["stdout"] == "still-here\n"
    )
    assert ssh_runner.rt.ssh_pool.connections_opened == 1


def test_a_command_ignoring_sigterm_is_killed(ssh_runner: KindRunner) -> None:
    arg = unique_sleep()
    start = time.monotonic()
    failure = ssh_runner.fail("ssh", {"host": HOST, "command": f"trap '' TERM; sleep {arg}"}, timeout=0.5)
    assert failure.timed_out
    assert wait_no_process(f"sleep {arg}") == []  # SIGKILL after the grace period
    assert time.monotonic() - start < 5


def test_interrupted_runner_kills_the_remote_command(ssh_runner: KindRunner) -> None:
    arg = unique_sleep()
    pool = ssh_runner.rt.ssh_pool

    def on_line(stream: str, line: str) -> None:
        if line == "started":
            assert processes_matching(f"sleep {arg}")  # really running remotely
            raise Interrupted("SIGTERM")

    with pytest.raises(Interrupted):
        pool.run(HOST, f"echo started; sleep {arg}", timeout=None, on_line=on_line)
    assert wait_no_process(f"sleep {arg}") == []


def test_dropped_connection_fails_the_step_and_the_next_attempt_reconnects(ssh_runner: KindRunner) -> None:
    # $PPID of the login shell is this connection's sshd session process: killing it drops the connection
    failure = ssh_runner.fail(
        "ssh", {"host": HOST, "command": "echo before; kill -9 $PPID; sleep 5"}, timeout=10
    )
    assert "connection lost" in str(failure)
    again = ssh_runner.apply("ssh", {"host": HOST, "command": "echo after"})
    assert again.data["stdout"] == "after\n"
    assert ssh_runner.rt.ssh_pool.connections_opened == 2


HOSTILE = [
    "$(touch {m})",
    "`touch {m}`",
    "; touch {m}",
    "x && touch {m}",
    "| touch {m}",
    "' ; touch {m}; echo '",
    '" ; touch {m}; echo "',
    "a\ntouch {m}",
    "two  words  {m}",
    "$HOME {m} * ?",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_arguments_arrive_literally_and_run_nothing(ssh_runner: KindRunner, template: str) -> None:
    marker = f"/tmp/pgpool-hook-pwned-{uuid.uuid4().hex}"
    value = template.format(m=marker)
    string = ssh_runner.apply("ssh", {"host": HOST, "command": "printf '%s\\n' {{ v }}"}, v=value)
    listed = ssh_runner.apply("ssh", {"host": HOST, "command": ["printf", "%s\\n", "{{ v }}"]}, v=value)
    assert string.data["stdout"] == value + "\n"
    assert listed.data["stdout"] == value + "\n"
    assert not Path(marker).exists()


def test_env_values_are_quoted(ssh_runner: KindRunner) -> None:
    value = "$(id) ; 'x' \"y\""
    out = ssh_runner.apply(
        "ssh",
        {"host": HOST, "command": "sh -c 'printf %s \"$GREETING\"'", "env": {"GREETING": "{{ v }}"}},
        v=value,
    )
    assert out.data["stdout"] == value


# ---- connecting ------------------------------------------------------------------------


def test_connection_refused_fails_fast(make_runner: Any, sshd: Any) -> None:
    runner = make_runner(ssh=ssh_settings(sshd, port=1))
    start = time.monotonic()
    failure = runner.fail("ssh", {"host": HOST, "command": "true"})
    assert time.monotonic() - start < 1
    assert str(failure) == f"ssh postgres@{HOST}:1: connection refused"


def test_silent_listener_fails_within_the_connect_timeout(make_runner: Any, sshd: Any) -> None:
    with socket.socket() as listener:  # accepts TCP (kernel backlog) and never says a word
        listener.bind((HOST, 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        runner = make_runner(ssh=ssh_settings(sshd, port=port, connect_timeout=1))
        start = time.monotonic()
        failure = runner.fail("ssh", {"host": HOST, "command": "true"}, timeout=30)
        elapsed = time.monotonic() - start
    assert 0.8 < elapsed < 3, elapsed
    assert "did not speak SSH within 1s" in str(failure)


def test_strict_policy_rejects_an_unknown_host_key(make_runner: Any, sshd: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    runner = make_runner(ssh=ssh_settings(sshd, known_hosts=str(empty)))
    failure = runner.fail("ssh", {"host": HOST, "command": "touch /tmp/should-not-run"})
    assert "host key verification failed" in str(failure) and "not in" in str(failure)
    assert empty.read_text() == ""


def test_changed_host_key_is_rejected_even_with_accept_new(
    make_runner: Any, sshd: Any, tmp_path: Path
) -> None:
    import paramiko

    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.key_file))  # any ed25519 key but the host's
    known = tmp_path / "known_hosts"
    known.write_text(f"[{HOST}]:{sshd.port} ssh-ed25519 {other.get_base64()}\n")
    runner = make_runner(ssh=ssh_settings(sshd, known_hosts=str(known), host_key_policy="accept-new"))
    failure = runner.fail("ssh", {"host": HOST, "command": "true"})
    assert "host key verification failed" in str(failure) and "CHANGED" in str(failure)


def test_accept_new_remembers_an_unknown_host(make_runner: Any, sshd: Any, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    runner = make_runner(ssh=ssh_settings(sshd, known_hosts=str(known), host_key_policy="accept-new"))
    assert runner.apply("ssh", {"host": HOST, "command": "echo hi"}).data["stdout"] == "hi\n"
    host_pub = Path(f"{sshd.host_key_file}.pub").read_text().split()[1]
    assert known.read_text() == f"[{HOST}]:{sshd.port} ssh-ed25519 {host_pub}\n"
    # and a strict client now trusts it
    strict = make_runner(ssh=ssh_settings(sshd, known_hosts=str(known)))
    assert strict.apply("ssh", {"host": HOST, "command": "echo ok"}).ok


def test_wrong_key_fails_authentication_without_prompting(
    make_runner: Any, sshd: Any, tmp_path: Path
) -> None:
    import paramiko

    key = tmp_path / "stranger"
    paramiko.Ed25519Key  # noqa: B018 - ed25519 generation is not in paramiko; use ssh-keygen
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    runner = make_runner(ssh=ssh_settings(sshd, key_file=str(key)))
    failure = runner.fail("ssh", {"host": HOST, "command": "true"})
    assert str(failure) == f"ssh postgres@{HOST}:{sshd.port}: authentication failed with key {key}"


def test_ignore_policy_connects_and_saves_nothing(make_runner: Any, sshd: Any, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    runner = make_runner(ssh=ssh_settings(sshd, known_hosts=str(known), host_key_policy="ignore"))
    assert runner.apply("ssh", {"host": HOST, "command": "echo hi"}).data["stdout"] == "hi\n"
    assert known.read_text() == ""
