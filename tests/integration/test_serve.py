"""The resident runner for real: ``pgpool-hook serve`` and calls handed to it.

Each call is a real ``python -m engine`` process, as pgpool would start it; whether it
ran in a worker of the runner is read from the process tree (the worker's parent is
the runner), not from anything the runner says about itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proctools import processes_matching, unique_sleep, wait_no_process

REPO = Path(__file__).resolve().parents[2]


def _env(socket: Path | str, pythonpath: Path = REPO, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(pythonpath), PGPOOL_HOOK_SOCKET=str(socket), **extra)
    return env


class Runner:
    """One ``pgpool-hook serve`` process on a socket in a temporary folder."""

    def __init__(self, base: Path, app: Path = REPO) -> None:
        self.socket = base / "run" / "runner.sock"
        self.app = app
        self.log = base / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Runner:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "serve", "--socket", str(self.socket)],
                env=_env(self.socket, self.app),
                stdout=log,
                stderr=log,
                cwd="/",
            )
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not self.answers():
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < end, "the runner never listened:\n" + self.log.read_text()
            time.sleep(0.05)

    def answers(self) -> bool:
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--status", "--socket", str(self.socket)],
            env=_env(self.socket, self.app),
            capture_output=True,
        )
        return proc.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config and a workflows folder whose steps say which process ran them."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "config.yaml").write_text(
        f"workflows_dir: {tmp_path / 'workflows'}\nstate_dir: {tmp_path / 'state'}\n"
    )
    # $PPID of the step's shell is the process running the workflow; its parent is the
    # resident runner when the call was handed over
    (tmp_path / "workflows" / "who.yaml").write_text(
        "name: who\n"
        "params:\n"
        "  - {name: tag}\n"
        "steps:\n"
        "  - id: who\n"
        "    local:\n"
        '      command: ["sh", "-c", "echo \\"$PPID $(cut -d\\" \\" -f4 /proc/$PPID/stat) ${HOOK_TAG:-none} '
        '$(pwd) $(umask)\\" > {{ tag }}; echo to-stdout; echo to-stderr >&2"]\n'
    )
    (tmp_path / "workflows" / "fails.yaml").write_text(
        'name: fails\nsteps:\n  - id: boom\n    local: {command: ["false"]}\n'
    )
    return tmp_path


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path).start()
    yield r
    r.stop()


def call(
    site: Path, socket: Path | str, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", "--config", str(site / "config.yaml"), *args],
        env=_env(socket, **env),
        cwd=cwd or site,
        capture_output=True,
        text=True,
        timeout=60,
    )


def who(site: Path, name: str) -> dict[str, str]:
    worker, parent, tag, cwd, umask = (site / name).read_text().split()
    return {"worker": worker, "parent": parent, "tag": tag, "cwd": cwd, "umask": umask}


def history(site: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "history", "--json", "--config", str(site / "config.yaml")],
        env=_env("off"),
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_call_runs_in_a_worker_with_the_callers_streams_env_cwd_and_umask(
    site: Path, runner: Runner
) -> None:
    assert runner.proc is not None
    proc = subprocess.run(
        [
            "sh",
            "-c",
            f'umask 027; exec "$0" -m engine run --config config.yaml who {site}/served.txt',
            sys.executable,
        ],
        env=_env(runner.socket, HOOK_TAG="from-the-caller"),
        cwd=site,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    seen = who(site, "served.txt")
    assert seen["parent"] == str(runner.proc.pid)  # the worker is the runner's child
    assert seen["tag"] == "from-the-caller"
    assert seen["cwd"] == str(site)
    assert seen["umask"] == "0027"
    assert "to-stdout" in proc.stderr  # step output goes to the log on the caller's stderr
    assert "outcome=finished" in proc.stderr
    assert history(site)[0]["outcome"] == "succeeded"
    assert "went away" not in runner.log.read_text()  # a caller that got its code said so


def test_without_a_runner_or_with_it_turned_off_the_call_runs_in_its_own_process(
    site: Path, runner: Runner
) -> None:
    assert runner.proc is not None
    for socket, name in ((site / "nothing-here.sock", "absent.txt"), ("off", "off.txt")):
        proc = call(site, socket, "who", str(site / name))
        assert proc.returncode == 0, proc.stderr
        assert who(site, name)["parent"] != str(runner.proc.pid)


def test_exit_codes_and_messages_come_back_unchanged(site: Path, runner: Runner) -> None:
    failed = call(site, runner.socket, "fails")
    assert failed.returncode == 1
    assert "step=boom" in failed.stderr
    (site / "workflows" / "bad.yaml").write_text("name: bad\nsteps:\n  - id: x\n    lokal: {}\n")
    invalid = call(site, runner.socket, "bad")
    assert invalid.returncode == 2
    assert "bad.yaml:4:" in invalid.stderr
    assert "Traceback" not in invalid.stderr
    shown = call(site, runner.socket, "--dry-run", "who", "/tmp/x")
    assert shown.returncode == 0
    assert "sh -c" in shown.stdout  # the dry-run listing arrives on the caller's stdout


def _long_run_workflow(site: Path, marker: Path, sleep: str) -> None:
    (site / "workflows" / "long.yaml").write_text(
        "name: long\n"
        "steps:\n"
        "  - id: mark\n"
        f'    local: {{command: ["touch", "{marker}"]}}\n'
        "    undo: unmark\n"
        "  - id: wait\n"
        f'    local: {{command: ["sleep", "{sleep}"]}}\n'
        "    timeout: 120\n"
        "handlers:\n"
        "  - id: unmark\n"
        f'    local: {{command: ["rm", "-f", "{marker}"]}}\n'
    )


def _start_call(site: Path, runner: Runner, workflow: str, pattern: str) -> subprocess.Popen[str]:
    """A call of ``workflow`` in the background, returned once a process matching ``pattern`` runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--config", str(site / "config.yaml"), workflow],
        env=_env(runner.socket),
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 30
    while not processes_matching(pattern):
        assert time.monotonic() < end and proc.poll() is None, f"{workflow}: its step never started"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_stopped_caller_stops_its_run_and_the_run_rolls_back(site: Path, runner: Runner, how: str) -> None:
    """pgpool's SIGTERM reaches the worker; a caller killed outright gets its worker stopped too."""
    marker = site / "marker"
    sleep = unique_sleep()
    _long_run_workflow(site, marker, sleep)
    proc = _start_call(site, runner, "long", f"sleep {sleep}")
    assert marker.exists()
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    proc.wait(30)
    assert wait_no_process(f"sleep {sleep}", timeout=15) == []
    end = time.monotonic() + 15
    while marker.exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert not marker.exists()  # the undo handler ran
    if how == "sigterm":
        assert proc.returncode == 1
        assert "interrupted; rolled back" in (proc.stderr.read() if proc.stderr else "")
    assert history(site)[0]["outcome"] in ("rolled-back", "interrupted")
    went_away = "its caller went away; sent SIGTERM" in runner.log.read_text()
    assert went_away == (how == "sigkill")  # a forwarded SIGTERM is not a caller gone


def test_stopping_the_runner_lets_running_hooks_finish(site: Path, runner: Runner) -> None:
    assert runner.proc is not None
    pause = f"1.{time.time_ns() % 10**6:06d}"  # a unique sleep argument, for pgrep
    (site / "workflows" / "slow.yaml").write_text(
        f'name: slow\nsteps:\n  - id: s\n    local: {{command: ["sleep", "{pause}"]}}\n'
    )
    proc = _start_call(site, runner, "slow", f"sleep {pause}")
    runner.stop()
    assert not runner.socket.exists()
    assert proc.wait(30) == 0
    assert history(site)[0]["outcome"] == "succeeded"
    started = [json.loads(line) for line in (site / "state" / "journal.jsonl").read_text().splitlines()]
    assert [e["runner"] for e in started if e["event"] == "run_started"] == [runner.proc.pid]


def test_changed_engine_files_make_calls_run_locally_until_the_runner_restarted(
    tmp_path: Path, site: Path
) -> None:
    app = tmp_path / "app"
    shutil.copytree(REPO / "engine", app / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    r = Runner(tmp_path, app).start()
    try:
        assert r.proc is not None

        def run_with_app(name: str) -> str:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "engine",
                    "run",
                    "--config",
                    str(site / "config.yaml"),
                    "who",
                    str(site / name),
                ],
                env=_env(r.socket, app),
                cwd=site,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            return who(site, name)["parent"]

        assert run_with_app("before.txt") == str(r.proc.pid)
        module = app / "engine" / "interpreter.py"
        module.write_text(module.read_text() + "\n# changed\n")
        assert run_with_app("during.txt") != str(r.proc.pid)  # refused: run by the caller itself
        # the same process, started again with the new code: wait for its second "listening"
        end = time.monotonic() + 30
        while r.log.read_text().count("listening on") < 2:
            assert time.monotonic() < end, r.log.read_text()
            time.sleep(0.05)
        r.wait_listening()
        assert r.proc.poll() is None
        assert run_with_app("after.txt") == str(r.proc.pid)
        assert "starting again with the new code" in r.log.read_text()
        # a call from another copy of the engine is never served by this one
        assert who(site, "after.txt")
        proc = call(site, r.socket, "who", str(site / "other.txt"))
        assert proc.returncode == 0
        assert who(site, "other.txt")["parent"] != str(r.proc.pid)
    finally:
        r.stop()


def test_one_runner_per_socket_and_status(tmp_path: Path, runner: Runner) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--socket", str(runner.socket)],
        env=_env(runner.socket),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert "already listens" in second.stderr
    assert runner.answers()
    runner.stop()
    assert not runner.answers()


def test_garbage_on_the_socket_changes_nothing_and_the_runner_keeps_serving(
    site: Path, runner: Runner
) -> None:
    import socket as sockets

    assert runner.proc is not None
    for junk in (b"", b"GET / HTTP/1.0\r\n\r\n", b"PGH1\xff\xff\xff\xff", b"PGH1\x00\x00\x00\x10short"):
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
            s.connect(str(runner.socket))
            s.sendall(junk)
            s.shutdown(sockets.SHUT_WR)
            s.settimeout(10)
            assert s.recv(100) == b""  # nothing runs, nothing is said
    assert runner.proc.poll() is None
    proc = call(site, runner.socket, "who", str(site / "after-junk.txt"))
    assert proc.returncode == 0, proc.stderr
    assert who(site, "after-junk.txt")["parent"] == str(runner.proc.pid)


def test_a_runner_killed_outright_leaves_its_running_hooks_to_finish(site: Path, runner: Runner) -> None:
    """The worker reports its exit code to its caller itself, so kill -9 of the runner costs
    nothing but the runner; the next call runs in its own process."""
    assert runner.proc is not None
    pause = f"1.{time.time_ns() % 10**6:06d}"
    (site / "workflows" / "slow.yaml").write_text(
        f'name: slow\nsteps:\n  - id: s\n    local: {{command: ["sleep", "{pause}"]}}\n'
        "  - id: after\n    local: {command: [touch, after]}\n"
    )
    proc = _start_call(site, runner, "slow", f"sleep {pause}")
    runner.proc.kill()
    runner.proc.wait(10)
    assert proc.wait(30) == 0
    assert (site / "after").exists()  # the run went on to its last step
    assert history(site)[0]["outcome"] == "succeeded"
    alone = call(site, runner.socket, "who", str(site / "alone.txt"))  # a stale socket file: nobody answers
    assert alone.returncode == 0, alone.stderr
    assert who(site, "alone.txt")["parent"] != str(runner.proc.pid)
