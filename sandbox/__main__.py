"""``python -m sandbox up|down|status``: a hands-on pgpool + PostgreSQL + sshd sandbox.

Run as root from the checkout.  ``up`` builds a primary and two standbys, an sshd, and a
pgpool whose hooks are ``<base>/bin/pgpool-hook`` (a copy of this checkout's engine);
``down`` stops everything and removes ``<base>``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sandbox.app import HookApp
from sandbox.osuser import SandboxError
from sandbox.pg import DEFAULT_ADDRESSES, DEFAULT_PORT
from sandbox.pgpool import DEFAULT_PCP_PORT, DEFAULT_PGPOOL_PORT
from sandbox.sshd import DEFAULT_SSH_PORT, Sshd
from sandbox.stack import STATE_FILE, PgpoolSandbox

DEFAULT_BASE = Path("/tmp/pgpool-hook-sandbox")


def cmd_up(args: argparse.Namespace) -> int:
    base: Path = args.base
    if (base / STATE_FILE).exists():
        print(f"a sandbox already exists in {base}; run 'python -m sandbox down --base {base}' first")
        return 1
    addresses = args.addresses.split(",")
    sshd = Sshd(base / "ssh", addresses, args.ssh_port)
    app = HookApp(base)
    sandbox = PgpoolSandbox(
        base,
        sshd,
        app,
        addresses=addresses,
        pg_port=args.pg_port,
        pgpool_port=args.pgpool_port,
        pcp_port=args.pcp_port,
    )
    try:
        app.install()
        app.start_runner()
        sshd.start()
        sandbox.build()
    except BaseException:
        sandbox.destroy(remove=False)
        sshd.stop()
        app.stop_runner()
        raise
    pp = sandbox.pgpool
    print(f"sandbox up in {base}")
    for node in sandbox.nodes:
        print(f"  {node.name}: psql -h {node.address} -p {node.port} -U postgres   PGDATA={node.pgdata}")
    print(f"  pgpool:  psql -h {pp.host} -p {pp.port} -U postgres -c 'SHOW pool_nodes'   log: {pp.log_file}")
    print(
        f"  pcp:     PCPPASSFILE={pp.pcppass} pcp_node_info -h {pp.host} -p {pp.pcp_port} -U {pp.pcp_user} -w -n 0"
    )
    print(
        f"  ssh:     ssh -i {sshd.key_file} -p {sshd.port} -o UserKnownHostsFile={sshd.known_hosts} postgres@{addresses[0]}"
    )
    print(f"  hooks:   {app.wrapper} (config {sandbox.config_path}; resident runner {app.runner_socket})")
    print(f"stop with: python -m sandbox down --base {base}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    base: Path = args.base
    if not (base / STATE_FILE).exists():
        print(f"no sandbox in {base}")
        return 0
    sandbox = PgpoolSandbox.load(base)
    try:
        sandbox.destroy(remove=not args.keep)
    finally:
        sandbox.sshd.stop()
        sandbox.app.stop_runner()
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(f"sandbox in {base} stopped" + (" (files kept)" if args.keep else " and removed"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    base: Path = args.base
    if not (base / STATE_FILE).exists():
        print(f"no sandbox in {base}")
        return 1
    sandbox = PgpoolSandbox.load(base)
    for info in sandbox.cluster.status():
        print("  ".join(f"{k}={v}" for k, v in info.items()))
    print(f"sshd running={sandbox.sshd.is_running()} port={sandbox.sshd.port}")
    pp = sandbox.pgpool
    print(f"pgpool running={pp.is_running()} port={pp.port} pcp_port={pp.pcp_port}")
    if pp.is_running():
        try:
            for node_id, (status, role) in pp.node_states().items():
                print(f"  pgpool node {node_id}: {status} {role}")
        except SandboxError as exc:
            print(f"  pcp failed: {exc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument(
            "--base", type=Path, default=DEFAULT_BASE, help=f"sandbox directory (default {DEFAULT_BASE})"
        )
        if name == "up":
            p.add_argument(
                "--addresses", default=",".join(DEFAULT_ADDRESSES), help="comma-separated node addresses"
            )
            p.add_argument("--pg-port", type=int, default=DEFAULT_PORT)
            p.add_argument("--ssh-port", type=int, default=DEFAULT_SSH_PORT)
            p.add_argument("--pgpool-port", type=int, default=DEFAULT_PGPOOL_PORT)
            p.add_argument("--pcp-port", type=int, default=DEFAULT_PCP_PORT)
        if name == "down":
            p.add_argument("--keep", action="store_true", help="stop processes but keep the files")
    args = parser.parse_args(argv)
    args.base = args.base.absolute()
    handler = {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command]
    try:
        return handler(args)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
