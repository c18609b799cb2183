"""``pgpool-hook install``: the files pgpool insists on, and the lines for pgpool.conf.

pgpool runs the online-recovery hooks only as files with fixed names inside
the primary's PGDATA, with fixed arguments and no room for options.  So we
write two tiny shell shims there that exec this runner with the right config
and workflow.  pg_basebackup and pg_rewind copy them to every node, so any
node that becomes primary has them.  Running install twice changes nothing.
"""

from __future__ import annotations

import os
import shlex
import sys

from engine.errors import InvalidInput
from engine.transport.local import LocalFS

SHIMS = {"recovery_1st_stage": "recovery_1st_stage", "pgpool_remote_start": "remote_start"}


def default_runner() -> list[str]:
    """How to call this very program again from a shell script."""
    argv0 = sys.argv[0]
    if (
        argv0
        and os.path.basename(argv0) not in ("__main__.py", "-m", "-c")
        and os.path.isfile(argv0)
        and os.access(argv0, os.X_OK)
    ):
        return [os.path.abspath(argv0)]
    return [sys.executable, "-m", "engine"]


def shim_text(runner: list[str], config: str | None, workflow: str) -> str:
    cfg = f" --config {shlex.quote(config)}" if config else ""
    return (
        "#!/bin/sh\n"
        "# Written by `pgpool-hook install`. pgpool runs this file by its name from the\n"
        "# primary's PGDATA; it hands the fixed arguments to the pgpool-hook workflow.\n"
        f'exec {shlex.join(runner)} run{cfg} {workflow} "$@"\n'
    )


def pgpool_conf_lines(runner: list[str], config: str | None) -> list[str]:
    base = shlex.join(runner) + " run" + (f" --config {shlex.quote(config)}" if config else "")
    return [
        f"failover_command = '{base} failover %d %h %p %D %m %H %M %P %r %R %N %S'",
        f"follow_primary_command = '{base} follow_primary %d %h %p %D %m %H %M %P %r %R'",
        "recovery_1st_stage_command = 'recovery_1st_stage'",
    ]


def install(pgdata: str, config: str | None, runner: list[str] | None = None, out=None) -> int:  # type: ignore[no-untyped-def]
    out = out or sys.stdout
    pgdata = os.path.abspath(pgdata)
    if not os.path.isdir(pgdata):
        raise InvalidInput(f"--pgdata {pgdata}: no such directory")
    if not os.path.exists(os.path.join(pgdata, "PG_VERSION")):
        raise InvalidInput(f"--pgdata {pgdata}: not a PostgreSQL data directory (no PG_VERSION)")
    if config is not None:
        config = os.path.abspath(config)
        if not os.path.isfile(config):
            raise InvalidInput(f"--config {config}: no such file")
    runner = runner or default_runner()
    fs = LocalFS()
    owner = os.stat(pgdata)
    for name, workflow in SHIMS.items():
        path = os.path.join(pgdata, name)
        text = shim_text(runner, config, workflow).encode()
        if fs.read(path) == text and fs.stat_mode(path) == 0o755:
            print(f"unchanged: {path}", file=out)
            continue
        fs.write_atomic(path, text, 0o755)
        if os.geteuid() == 0:
            os.chown(path, owner.st_uid, owner.st_gid)
        print(f"wrote: {path}", file=out)
    print("\nPut these lines in pgpool.conf (then reload pgpool):", file=out)
    for line in pgpool_conf_lines(runner, config):
        print(f"  {line}", file=out)
    print(
        "\nOnline recovery also needs, on the primary: "
        "psql template1 -c 'CREATE EXTENSION IF NOT EXISTS pgpool_recovery'",
        file=out,
    )
    return 0
