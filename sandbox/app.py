"""Make the checkout's engine runnable by ``postgres`` and write hook config files.

pgpool runs hooks as its own user (``postgres``), which usually cannot read the checkout
(CI clones under ``/root``; a pyenv interpreter under ``/root`` fails with "bad
interpreter: Permission denied", and pgpool ignores a failover hook's exit code, so that
failure would be silent).  So each test session gets a fresh copy of ``engine/`` and
``workflows/`` under ``<base>/app`` and a ``<base>/bin/pgpool-hook`` wrapper that runs
them with an interpreter ``postgres`` can execute and that has the project's
dependencies: ``$PGPOOL_HOOK_PYTHON`` (CI points it at a venv in /opt), else the current
interpreter if ``postgres`` can run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.osuser import (
    PG_BIN_DIR,
    SandboxError,
    as_postgres_argv,
    base_env,
    chown_postgres,
    make_postgres_dir,
    run_as_postgres,
    write_file,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
COPIED_DIRS = ("engine", "workflows")
PYTHON_ENV_VAR = "PGPOOL_HOOK_PYTHON"


def find_python(required_modules: tuple[str, ...] = ()) -> str:
    """An interpreter path that ``postgres`` can execute (and import ``required_modules``)."""
    candidates: list[tuple[str, str]] = []
    if os.environ.get(PYTHON_ENV_VAR):
        candidates.append((os.environ[PYTHON_ENV_VAR], f"${PYTHON_ENV_VAR}"))
    else:
        candidates.append((sys.executable, "the interpreter running the tests"))
    python, origin = candidates[0]
    code = "import sys" + "".join(f"; import {m}" for m in required_modules)
    try:
        proc = run_as_postgres([python, "-c", code], check=False, timeout=60)
    except OSError as exc:  # runuser missing, ...
        raise SandboxError(f"cannot run {python} as postgres: {exc}") from exc
    if proc.returncode != 0:
        raise SandboxError(
            f"{python} ({origin}) is not usable by the postgres user "
            f"(rc={proc.returncode}: {proc.stderr.strip()[-500:]}).\n"
            f"pgpool runs hooks as postgres, so the hooks' interpreter must be readable by it: "
            f"create a venv from /usr/bin/python3 outside /root (e.g. /opt/pgpool-hook/venv, "
            f"chmod -R a+rX), install the project there, and set {PYTHON_ENV_VAR}=<venv>/bin/python."
        )
    return python


@dataclass
class HookApp:
    """The engine as pgpool would run it: ``<base>/app`` (copy) + ``<base>/bin/pgpool-hook``.

    Attributes: ``base``, ``app_dir``, ``bin_dir``, ``wrapper`` (path of the
    ``pgpool-hook`` script), ``python`` (interpreter it uses), ``workflows_dir``.
    """

    base: Path
    python: str = ""
    source: Path = REPO_ROOT

    @property
    def app_dir(self) -> Path:
        return self.base / "app"

    @property
    def bin_dir(self) -> Path:
        return self.base / "bin"

    @property
    def wrapper(self) -> Path:
        return self.bin_dir / "pgpool-hook"

    @property
    def workflows_dir(self) -> Path:
        return self.app_dir / "workflows"

    @property
    def runner_socket(self) -> Path:
        """Where this copy's resident runner listens, when one is started (``start_runner``)."""
        return self.base / "run" / "runner.sock"

    def install(self) -> HookApp:
        """Fresh copy of engine/ and workflows/ (missing ones tolerated) + the wrapper."""
        if not self.python:
            self.python = find_python()
        make_postgres_dir(self.base)
        if self.app_dir.exists():
            shutil.rmtree(self.app_dir)
        make_postgres_dir(self.app_dir)
        for name in COPIED_DIRS:
            src = self.source / name
            dst = self.app_dir / name
            if src.is_dir():
                shutil.copytree(
                    src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
                )
            else:
                dst.mkdir()
        for root, dirs, files in os.walk(self.app_dir):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                path = os.path.join(root, name)
                os.chmod(path, os.stat(path).st_mode | 0o444)
        chown_postgres(self.app_dir, recursive=True)
        make_postgres_dir(self.bin_dir)
        write_file(
            self.wrapper,
            "#!/bin/sh\n"
            "# pgpool-hook as pgpool runs it (copy of the checkout, interpreter usable by postgres)\n"
            "# calls are handed to the resident runner when one listens (start_runner)\n"
            f'PGPOOL_HOOK_SOCKET="${{PGPOOL_HOOK_SOCKET:-{self.runner_socket}}}" \\\n'
            f'PYTHONPATH={self.app_dir} exec {self.python} -m engine "$@"\n',
            mode=0o755,
        )
        return self

    # ---- the resident runner (pgpool-hook serve) ---------------------------------------

    def runner_pid(self) -> int | None:
        """pid of this copy's resident runner, if one answers on :attr:`runner_socket`."""
        proc = self.run("serve", "--status", "--socket", str(self.runner_socket))
        found = re.search(r"runner pid (\d+)", proc.stdout)
        return int(found.group(1)) if proc.returncode == 0 and found else None

    def start_runner(self, timeout: float = 60) -> int:
        """Start ``pgpool-hook serve`` as postgres, as a service manager would; its pid."""
        make_postgres_dir(self.runner_socket.parent, 0o700)
        env = base_env(extra={"PYTHONPATH": str(self.app_dir)})
        with open(self.base / "runner.log", "ab") as log:
            subprocess.Popen(
                as_postgres_argv(
                    [self.python, "-m", "engine", "serve", "--socket", str(self.runner_socket)], env
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                start_new_session=True,  # not stopped with the test session's process group
            )
        end = time.monotonic() + timeout
        while (pid := self.runner_pid()) is None:
            if time.monotonic() > end:
                raise SandboxError(f"the resident runner did not start; see {self.base / 'runner.log'}")
            time.sleep(0.1)
        return pid

    def stop_runner(self, timeout: float = 30) -> None:
        """SIGTERM to the runner; running hooks finish on their own."""
        pid = self.runner_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while self.runner_socket.exists() and time.monotonic() < end:
            time.sleep(0.05)

    def run(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Any:
        """Run the wrapper as postgres (as pgpool would); returns CompletedProcess."""
        return run_as_postgres([self.wrapper, *args], env=env, check=False, timeout=timeout)

    def hook_command(self, config: Path, hook: str) -> str:
        """The pgpool.conf command string (or recovery-script line) for ``hook``."""
        placeholders = {
            "failover": " %d %h %p %D %m %H %M %P %r %R %N %S",
            "follow_primary": " %d %h %p %D %m %H %M %P %r %R",
        }.get(hook, "")
        return f"{self.wrapper} run --config {config} {hook}{placeholders}"

    def recovery_script(self, config: Path, hook: str) -> str:
        """Text of a PGDATA script (``recovery_1st_stage``/``pgpool_remote_start``)."""
        return f'#!/bin/sh\nexec {self.wrapper} run --config {config} {hook} "$@"\n'


# ---- hook configuration files ----------------------------------------------------------


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # a JSON string is a valid YAML double-quoted scalar
    return json.dumps(str(value), ensure_ascii=False)


def to_yaml(data: Any, indent: int = 0) -> str:
    """Minimal block-style YAML for dicts/lists/scalars (stdlib only; the sandbox must not
    depend on the engine's YAML library)."""
    pad = "  " * indent
    if isinstance(data, Mapping):
        if not data:
            return pad + "{}\n"
        out = []
        for key, value in data.items():
            if isinstance(value, Mapping | list | tuple) and value:
                out.append(f"{pad}{key}:\n{to_yaml(value, indent + 1)}")
            elif isinstance(value, Mapping):
                out.append(f"{pad}{key}: {{}}\n")
            elif isinstance(value, list | tuple):
                out.append(f"{pad}{key}: []\n")
            else:
                out.append(f"{pad}{key}: {_yaml_scalar(value)}\n")
        return "".join(out)
    if isinstance(data, list | tuple):
        out = []
        for item in data:
            if isinstance(item, Mapping | list | tuple) and item:
                body = to_yaml(item, indent + 1)
                out.append(f"{pad}-\n{body}")
            else:
                out.append(f"{pad}- {_yaml_scalar(item)}\n")
        return "".join(out)
    return pad + _yaml_scalar(data) + "\n"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, ``None`` deletes a key."""
    result: dict[str, Any] = dict(base)
    for key, value in override.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def hook_settings(
    *,
    workflows_dir: Path,
    state_dir: Path,
    passfile: Path,
    ssh_port: int,
    ssh_key_file: Path,
    known_hosts: Path,
    pcp_port: int,
    pcppass: Path,
    pg_bin_dir: Path = PG_BIN_DIR,
    ssh_user: str = "postgres",
    pcp_user: str = "pgpool",
) -> dict[str, Any]:
    """The standard hook configuration for a sandbox (keys the engine validates)."""
    return {
        "workflows_dir": str(workflows_dir),
        "state_dir": str(state_dir),
        "postgres": {
            "bin_dir": str(pg_bin_dir),
            "superuser": "postgres",
            "database": "postgres",
            "replication_user": "repl",
            "passfile": str(passfile),
        },
        "ssh": {
            "user": ssh_user,
            "port": ssh_port,
            "key_file": str(ssh_key_file),
            "host_key_policy": "strict",
            "known_hosts": str(known_hosts),
            "connect_timeout": 5,
        },
        "pcp": {
            "host": "127.0.0.1",
            "port": pcp_port,
            "user": pcp_user,
            "bin_dir": "/usr/sbin",
            "passfile": str(pcppass),
        },
    }


def write_hook_config(path: Path, **settings: Any) -> Path:
    """Write ``settings`` as a YAML hook config readable by postgres; create ``state_dir``
    (owned by postgres) if the settings name one."""
    write_file(Path(path), "# pgpool-hook configuration (sandbox)\n" + to_yaml(settings), mode=0o644)
    state_dir = settings.get("state_dir")
    if state_dir:
        make_postgres_dir(Path(state_dir), 0o755)
    return Path(path)
