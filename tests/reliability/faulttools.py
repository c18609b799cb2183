"""Tools for fault tests: run the real runner as a subprocess and read what it left behind.

A :class:`Scenario` is one workflow file plus one config file in a test's own folder (its
own ``state_dir``, hence its own journal and locks).  The runner is started exactly as pgpool
starts a hook: ``python -m engine run ...`` in its own process group, its log on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctools import processes_matching
from proctools import ssh_settings as shared_ssh_settings

REPO = Path(__file__).resolve().parents[2]
NODE_HOST = "127.0.0.21"  # pg_primary's address; the session sshd listens there too
TMP_MARK = ".pgpool-hook."  # what write_atomic puts in its temporary file names


def ssh_settings(sshd: Any, **extra: Any) -> dict[str, Any]:
    """The shared ssh settings with a shorter connect timeout: fault tests wait on it."""
    return shared_ssh_settings(sshd, **{"connect_timeout": 2, **extra})


SHELL_MARK = "__pgpool_hook_pgid_|pgpool-hook-watchdog"  # ssh steps' remote shells and their watchdogs


REAPER_MARK = "groups = set"  # in the command line of a runner's local-command reaper


def remote_shells() -> set[str]:
    return set(processes_matching(SHELL_MARK))


def new_processes_left(pattern: str, before: set[str], timeout: float = 4.0) -> list[str]:
    """Processes matching ``pattern`` still running that were not there ``before``."""
    end = time.monotonic() + timeout
    while True:
        left = sorted(set(processes_matching(pattern)) - before)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


def remote_shells_left(before: set[str], timeout: float = 4.0) -> list[str]:
    """Shells of ssh steps still running that were not there ``before`` (older sessions' are ignored)."""
    return new_processes_left(SHELL_MARK, before, timeout)


def wait_for(predicate: Any, timeout: float, message: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


def temp_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if TMP_MARK in name and name.endswith(".tmp"))


@dataclass
class Result:
    rc: int
    log: str
    elapsed: float

    def lines(self, *needles: str) -> list[str]:
        """Log lines containing every needle."""
        return [ln for ln in self.log.splitlines() if all(n in ln for n in needles)]


class Running:
    """A runner started in the background; its log is read by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.started = time.monotonic()
        self.log_lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.log_lines)

    def wait_line(self, *needles: str, timeout: float = 20) -> str:
        def found() -> str | None:
            for line in list(self.log_lines):
                if all(n in line for n in needles):
                    return line
            if self.proc.poll() is not None:
                self._thread.join(2)
                raise AssertionError(f"runner exited ({self.proc.returncode}) before {needles}:\n{self.log}")
            return None

        result: str = wait_for(found, timeout, f"a log line with {needles}:\n{self.log}")
        return result

    def signal_group(self, sig: int) -> None:
        """Signal the runner's whole process group, as pgpool signals its follow-primary child."""
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 60) -> Result:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._thread.join(5)
        return Result(self.proc.returncode, self.log, time.monotonic() - self.started)


@dataclass
class Scenario:
    """A workflow (given as a dict; JSON is YAML) and a config, in ``directory``."""

    directory: Path
    workflow: dict[str, Any]
    config: dict[str, Any]
    name: str = "fault"
    runs: list[Running] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.workflow.setdefault("name", self.name)
        self.workflow_path = self.directory / f"{self.name}.yaml"
        self.workflow_path.write_text(json.dumps(self.workflow, indent=2))
        self.config.setdefault("state_dir", str(self.directory / "state"))
        self.config_path = self.directory / "pgpool-hook.yaml"
        self.config_path.write_text(json.dumps(self.config, indent=2))

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    def argv(self, *args: Any) -> list[str]:
        return [sys.executable, "-m", "engine", "run", "--config", str(self.config_path),
                str(self.workflow_path), *(str(a) for a in args)]  # fmt: skip

    @staticmethod
    def env() -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("PGPOOL_HOOK_CONFIG", None)
        return env

    def start(self, *args: Any) -> Running:
        proc = subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
            env=self.env(),
            start_new_session=True,  # its own process group, like a hook pgpool forked
        )
        running = Running(proc)
        self.runs.append(running)
        return running

    def run(self, *args: Any, timeout: float = 60) -> Result:
        return self.start(*args).finish(timeout)

    def cleanup(self) -> None:
        for running in self.runs:
            if running.proc.poll() is None:
                os.killpg(running.proc.pid, signal.SIGKILL)
                running.proc.wait(5)

    # -- the journal ---------------------------------------------------------
    def journal_runs(self) -> list[list[dict[str, Any]]]:
        return journal_runs(self.state_dir)

    def last_run(self) -> list[dict[str, Any]]:
        runs = self.journal_runs()
        logs = "\n".join(r.log for r in self.runs)
        assert runs, f"no run in the journal of {self.state_dir}; the log:\n{logs}"
        return runs[-1]


def journal_runs(state_dir: Path) -> list[list[dict[str, Any]]]:
    """The journal's events grouped by run, in the order the runs started (torn lines skipped)."""
    path = Path(state_dir) / "journal.jsonl"
    grouped: dict[str, list[dict[str, Any]]] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        grouped.setdefault(ev["run"], []).append(ev)
    return list(grouped.values())


def of(events: list[dict[str, Any]], event: str, **match: Any) -> list[dict[str, Any]]:
    """Events of one type whose fields equal ``match``."""
    return [e for e in events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]


def one(events: list[dict[str, Any]], event: str, **match: Any) -> dict[str, Any]:
    found = of(events, event, **match)
    assert len(found) == 1, f"expected one {event} {match}, got {found}"
    return found[0]


def attempts(events: list[dict[str, Any]], step: str) -> list[dict[str, Any]]:
    return of(events, "attempt", step=step, phase="main")


# -- workflow pieces -------------------------------------------------------------

PARAMS = ["host", {"name": "pg_port", "type": "int"}, "dir", "slot"]


def create_slot_step(**extra: Any) -> dict[str, Any]:
    """A slot on the node, compensated by ``drop_slot`` on rollback."""
    return {
        "id": "create_slot",
        "sql": {
            "host": "{{ host }}",
            "port": "{{ pg_port }}",
            "statement": "SELECT slot_name FROM pg_create_physical_replication_slot(%(slot)s)",
            "params": {"slot": "{{ slot }}"},
        },
        "timeout": 10,
        "undo": "drop_slot",
        **extra,
    }


DROP_SLOT = {
    "id": "drop_slot",
    "sql": {
        "host": "{{ host }}",
        "port": "{{ pg_port }}",
        "statement": "SELECT pg_drop_replication_slot(%(slot)s)",
        "params": {"slot": "{{ slot }}"},
    },
    "retry": {"attempts": 2, "delay": 0.1},
    "timeout": 10,
}


def slot_names(node: Any) -> list[str]:
    return [s["slot_name"] for s in node.slots()]


def new_slot() -> str:
    return f"fault_{uuid.uuid4().hex[:10]}"
