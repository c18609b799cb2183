"""``python -m sandbox.demo``: a real primary failure and online recovery, narrated.

Run as root from the checkout (``./demo.sh`` does that after installing what is missing).
It builds a sandbox (3 PostgreSQL 15 nodes, sshd, Pgpool-II with pgpool-hook as every
hook) in ``/tmp/pgpool-hook-demo``, shows ``validate`` and a failover ``--dry-run``,
``kill -9``s the primary, lets pgpool run the real failover and follow_primary hooks,
then brings the old primary back with ``pcp_recovery_node``.  Finally it prints a
timeline read from the hooks' journal and leaves the cluster running.

The demo uses its own loopback addresses and ports (127.0.0.41-43, PostgreSQL 25432,
sshd 2242, pgpool 29999, pcp 29898), so it never collides with a test session, which
uses 127.0.0.11-33 and ports 15432/2222/19999/19898.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.app import HookApp
from sandbox.osuser import SandboxError, processes_referencing
from sandbox.pg import Node
from sandbox.sshd import Sshd
from sandbox.stack import STATE_FILE, PgpoolSandbox

DEFAULT_BASE = Path("/tmp/pgpool-hook-demo")
DEFAULT_ADDRESSES = ("127.0.0.41", "127.0.0.42", "127.0.0.43")
DEFAULT_PG_PORT = 25432
DEFAULT_SSH_PORT = 2242
DEFAULT_PGPOOL_PORT = 29999
DEFAULT_PCP_PORT = 29898
SETTLE_SECONDS = 3.0

# every node keeps its server log beside its PGDATA, also when a hook (re)starts it
# (the shipped workflows default to pg_ctl -l /dev/null)
SERVER_LOG_VAR = "{{ (params.get('node_pgdata') or params.get('target_pgdata')) | dirname }}/postgres.log"


class DemoFailure(Exception):
    """A stage did not reach the state it waits for; ``logs`` says where to look."""

    def __init__(self, message: str, logs: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.logs = logs or []


# ---- output ------------------------------------------------------------------------

BOLD = DIM = RESET = GREEN = RED = ""


def use_colour(enabled: bool) -> None:
    global BOLD, DIM, RESET, GREEN, RED
    if enabled:
        BOLD, DIM, RESET, GREEN, RED = "\033[1m", "\033[2m", "\033[0m", "\033[32m", "\033[31m"


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"{BOLD}== {text}{RESET}")


def show_command(argv: list[str]) -> None:
    say(f"{DIM}$ {shlex.join(argv)}{RESET}")


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} cannot be read)"


# ---- waiting -----------------------------------------------------------------------


def wait(predicate: Callable[[], Any], timeout: float, what: str, logs: list[tuple[str, str]]) -> Any:
    """Poll until ``predicate`` is truthy; a node restarting or pgpool restarting its
    children makes queries fail for a moment, which counts as "not yet"."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except DemoFailure:
            raise
        except Exception as exc:  # noqa: BLE001
            last = exc
        if time.monotonic() >= end:
            raise DemoFailure(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})", logs)
        time.sleep(0.3)


class Demo:
    def __init__(self, sb: PgpoolSandbox):
        self.sb = sb
        self.t0: float | None = None  # the kill -9
        self.marks: list[tuple[float, str]] = []  # what the demo observed, for the timeline

    @property
    def pp(self) -> Any:
        return self.sb.pgpool

    def mark(self, text: str) -> None:
        now = time.time()
        self.marks.append((now, text))
        offset = f"+{now - self.t0:5.1f}s  " if self.t0 is not None else ""
        say(f"  {GREEN}{offset}{text}{RESET}")

    def logs(self, *nodes: Node) -> list[tuple[str, str]]:
        out = [("pgpool log (failover and follow_primary hooks write here)", str(self.pp.log_file))]
        out += [(f"{n.name} server log", str(n.log_file)) for n in nodes]
        return out

    # -- hook commands, as an operator would type them --------------------------------

    def hook(self, *args: str, title: str) -> str:
        argv = [str(self.sb.app.wrapper), *args]
        show_command(argv)
        proc = self.sb.app.run(*args)
        text = (proc.stdout + proc.stderr).rstrip()
        say(indent(text))
        if proc.returncode != 0:
            raise DemoFailure(f"{title} exited {proc.returncode}")
        return text

    def validate(self) -> None:
        heading("1. pgpool-hook validate: the shipped workflows, checked before anything runs")
        self.hook("validate", "--config", str(self.sb.config_path), title="validate")

    def failover_args(self, failed: Node, new_main: Node) -> list[str]:
        """What pgpool passes for %d %h %p %D %m %H %M %P %r %R %N %S when ``failed`` (the
        primary) goes down and ``new_main`` is the next live node."""
        return [
            str(failed.node_id), failed.address, str(failed.port), str(failed.pgdata),
            str(new_main.node_id), new_main.address, str(failed.node_id), str(failed.node_id),
            str(new_main.port), str(new_main.pgdata), failed.address, str(failed.port),
        ]  # fmt: skip

    def dry_run(self) -> None:
        primary, new_main = self.sb.nodes[0], self.sb.nodes[1]
        heading(f"2. pgpool-hook run --dry-run failover: what a failure of {primary.name} would do")
        args = self.failover_args(primary, new_main)
        self.hook(
            "run", "--config", str(self.sb.config_path), "--dry-run", "failover", *args, title="dry-run"
        )

    # -- the real thing --------------------------------------------------------------

    def write_row(self, value: str, timeout: float = 60) -> None:
        def attempt() -> bool:
            with self.pp.connect() as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS demo (v text PRIMARY KEY, at timestamptz DEFAULT now())"
                )
                conn.execute("INSERT INTO demo (v) VALUES (%s) ON CONFLICT DO NOTHING", (value,))
            return True

        wait(attempt, timeout, f"a write of {value!r} through pgpool", self.logs())

    @staticmethod
    def has_row(node: Node, value: str) -> bool:
        return bool(node.scalar("SELECT count(*) FROM demo WHERE v = %s", (value,)))

    @staticmethod
    def streams_from(standby: Node, primary: Node) -> bool:
        rows = standby.query_dicts("SELECT status, sender_host FROM pg_stat_wal_receiver")
        return bool(rows) and rows[0]["status"] == "streaming" and rows[0]["sender_host"] == primary.address

    def failover(self) -> None:
        old, new, other = self.sb.nodes
        heading(f"3. kill -9 the primary {old.name} and let pgpool run failover + follow_primary")
        show_command(["psql", "-h", self.pp.host, "-p", str(self.pp.port), "-c", "INSERT INTO demo ..."])
        self.write_row("before-failover")
        wait(
            lambda: self.has_row(new, "before-failover") and self.has_row(other, "before-failover"),
            30,
            "both standbys to replay the row",
            self.logs(new, other),
        )
        say(f"  row 'before-failover' written through pgpool and replayed on {new.name} and {other.name}")
        say(
            f"{DIM}$ kill -9 {old.postmaster_pid()}   # {old.name}'s postmaster (and its children, as if the host died){RESET}"
        )
        self.t0 = time.time()
        old.kill9()
        self.mark(f"{old.name} ({old.address}) killed")
        wait(
            lambda: (
                self.check_hook("failover", old, new)
                or self.pp.pcp_node_info(new.node_id).get("Role") == "primary"
            ),
            90,
            f"pgpool to report {new.name} as primary",
            self.logs(new),
        )
        self.mark(f"pgpool reports {new.name} as primary")
        wait(
            lambda: (
                self.check_hook("follow_primary", other, new, other)
                or self.pp.pcp_node_info(other.node_id).get("Status Name") in ("up", "waiting")
            ),
            150,
            f"pgpool to attach {other.name} again (follow_primary)",
            self.logs(new, other),
        )
        self.mark(f"pgpool shows {other.name} attached again")
        wait(
            lambda: self.streams_from(other, new),
            60,
            f"{other.name} to stream from {new.name}",
            self.logs(other),
        )
        self.mark(f"{other.name} streams from {new.name}")
        self.write_row("after-failover")
        wait(lambda: self.has_row(other, "after-failover"), 30, f"{other.name} to replay", self.logs(other))
        self.mark(f"write through pgpool works; {other.name} replayed it")

    def recovery(self) -> None:
        old, new, _ = self.sb.nodes
        heading(f"4. online recovery: pcp_recovery_node brings {old.name} back as a standby of {new.name}")
        say(
            f"  settling {SETTLE_SECONDS:g}s after the failover first (a recovery started at once can stall in pgpool)"
        )
        time.sleep(SETTLE_SECONDS)
        show_command(
            [
                "pcp_recovery_node", "-h", self.pp.host, "-p", str(self.pp.pcp_port), "-U", self.pp.pcp_user,
                "-w", "-n", str(old.node_id),
            ]
        )  # fmt: skip
        self.mark(f"pcp_recovery_node -n {old.node_id} started")
        rc, output = self.pp.pcp_recovery_node(old.node_id, timeout=300)
        say(indent(output.strip() or "(no output)"))
        if rc != 0 or "Command Successful" not in output:
            self.check_hook("recovery_1st_stage", old, new, old)  # names the failed step, if a hook failed
            self.check_hook("remote_start", old, new, old)
            raise DemoFailure(
                f"pcp_recovery_node -n {old.node_id} failed (rc={rc}); the recovery hooks log to "
                f"{new.name}'s server log",
                self.logs(new, old),
            )
        self.mark("pcp_recovery_node: Command Successful")
        wait(
            lambda: self.streams_from(old, new),
            60,
            f"{old.name} to stream from {new.name}",
            self.logs(old, new),
        )
        wait(
            lambda: self.pp.pcp_node_info(old.node_id).get("Status Name") in ("up", "waiting"),
            60,
            f"pgpool to attach {old.name}",
            self.logs(old),
        )
        self.mark(f"{old.name} streams from {new.name} and is attached in pgpool")
        self.write_row("after-recovery")
        wait(lambda: self.has_row(old, "after-recovery"), 30, f"{old.name} to replay", self.logs(old))
        self.mark(f"write through pgpool works; {old.name} replayed it")

    # -- the story, from the journal ------------------------------------------------

    def journal_runs(self) -> list[list[dict[str, Any]]]:
        path = self.sb.state_dir / "journal.jsonl"
        grouped: dict[str, list[dict[str, Any]]] = {}
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            grouped.setdefault(str(ev.get("run")), []).append(ev)
        return [evs for evs in grouped.values() if evs[0].get("event") == "run_started"]

    def check_hook(self, workflow: str, node: Node, *logs: Node) -> bool:
        """Fail at once (instead of at the timeout) when a hook run for ``node`` since the
        kill has finished with a non-zero exit: pgpool ignores that, the demo does not."""
        for events in self.journal_runs():
            start, end = events[0], events[-1]
            if (
                start.get("workflow") == workflow
                and self.node_of(start) == node.name
                and start["ts"] >= (self.t0 or 0) - 1
                and end.get("event") == "run_finished"
                and end.get("exit_code") != 0
            ):
                raise DemoFailure(
                    f"the {workflow} hook for {node.name} failed: {end.get('status')} (exit "
                    f"{end.get('exit_code')}) at step {end.get('failed_step')}: {end.get('message')}",
                    self.logs(*logs),
                )
        return False

    def node_of(self, start: dict[str, Any]) -> str:
        params = start.get("params") or {}
        for key in ("failed_node_id", "node_id", "target_node_id"):
            if key in params:
                return f"node{params[key]}"
        host = params.get("target_host")
        for node in self.sb.nodes:
            if node.address == host:
                return node.name
        return "?"

    def timeline(self) -> None:
        assert self.t0 is not None
        heading("5. timeline (t = seconds since the kill -9; from the hooks' journal and the demo's checks)")
        entries: list[tuple[float, int, list[str]]] = []
        for ts, text in self.marks:
            entries.append((ts, 1, [f"{DIM}{'· demo':<19} {text}{RESET}"]))
        for events in self.journal_runs():
            start = events[0]
            end = next((e for e in events if e["event"] == "run_finished"), None)
            if start["ts"] < self.t0 - 1:
                continue
            outcome = f"{end['status']} (exit {end['exit_code']})" if end else "unfinished"
            duration = f"{end['duration']:.2f}s" if end else "-"
            colour = RED if end and end["exit_code"] not in (0,) else ""
            lines = [
                f"{BOLD}{start['workflow']:<19}{RESET} {self.node_of(start):<6} "
                f"{colour}{outcome:<22}{RESET} {duration:>7}"
            ]
            for ev in events:
                if ev["event"] == "step" and ev.get("status") != "skipped":
                    attempts = ev.get("attempts") or 1
                    extra = f"  ({attempts} attempts)" if attempts > 1 else ""
                    phase = "" if ev.get("phase") in (None, "step", "main") else f" [{ev['phase']}]"
                    lines.append(
                        f"{'':9}- {ev['step']:<26}{ev['status']:<18}{ev.get('duration', 0):>6.2f}s{extra}{phase}"
                    )
                elif ev["event"] == "rollback":
                    lines.append(f"{'':9}- rollback of: {', '.join(ev.get('steps', []))}")
            if end and end.get("message"):
                lines.append(f"{'':9}  {DIM}{end['message']}{RESET}")
            entries.append((start["ts"], 0, lines))
        entries.sort(key=lambda e: (e[0], e[1]))
        say(f"  {'t':>8}  {'hook run / step':<19} {'node':<6} {'outcome':<22} {'took':>7}")
        for ts, _, lines in entries:
            say(f"  {ts - self.t0:+7.1f}s  {lines[0]}")
            for line in lines[1:]:
                say(f"  {line}")

    def pool_nodes(self) -> None:
        heading("6. SHOW pool_nodes (through pgpool)")
        show_command(
            ["psql", "-h", self.pp.host, "-p", str(self.pp.port), "-U", "postgres", "-c", "SHOW pool_nodes"]
        )

        def settled() -> list[dict[str, str]] | None:
            rows = self.pp.pool_nodes()
            standbys = [r for r in rows if r.get("role") == "standby"]
            done = all(r.get("replication_state") == "streaming" for r in standbys)
            return rows if done or time.monotonic() > give_up else None

        give_up = time.monotonic() + 10  # pgpool's sr_check refreshes replication_state every second
        rows = wait(settled, 30, "SHOW pool_nodes", self.logs())
        cols = ["node_id", "hostname", "port", "status", "pg_status", "role", "pg_role", "replication_state"]
        cols = [c for c in cols if c in rows[0]]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        say("  " + " | ".join(c.ljust(widths[c]) for c in cols))
        say("  " + "-+-".join("-" * widths[c] for c in cols))
        for row in rows:
            say("  " + " | ".join(row[c].ljust(widths[c]) for c in cols))

    def look_around(self, base: Path) -> None:
        sb, pp, sshd = self.sb, self.pp, self.sb.sshd
        old, new, other = sb.nodes
        wrapper = sb.app.wrapper
        heading("The cluster is still running. Look around:")
        say(f"  psql through pgpool:  psql -h {pp.host} -p {pp.port} -U postgres -c 'SHOW pool_nodes'")
        say(
            f"  one node directly:    psql -h {new.address} -p {new.port} -U postgres -c 'SELECT * FROM pg_stat_replication'"
        )
        say(
            f"  pcp:                  PCPPASSFILE={pp.pcppass} pcp_node_info -h {pp.host} -p {pp.pcp_port} "
            f"-U {pp.pcp_user} -w -n 0"
        )
        say(f"  the journal:          {sb.state_dir / 'journal.jsonl'}   (one JSON event per line)")
        say(f"  the runs, for people: {wrapper} history --config {sb.config_path}")
        say(f"                        {wrapper} show RUN_ID --config {sb.config_path}")
        say(f"  pgpool log:           {pp.log_file}   (failover and follow_primary output)")
        say(f"  server logs:          {base}/pg/node<N>/postgres.log   (recovery hook output: the primary's)")
        say(f"  hook config:          {sb.config_path}")
        say(
            f"  ssh to a node:        ssh -i {sshd.key_file} -p {sshd.port} -o UserKnownHostsFile={sshd.known_hosts} postgres@{new.address}"
        )
        say("  preview a follow_primary of node2 without touching anything:")
        args = [
            str(other.node_id), other.address, str(other.port), str(other.pgdata),
            str(new.node_id), new.address, str(old.node_id), str(old.node_id), str(new.port), str(new.pgdata),
        ]  # fmt: skip
        say(
            f"    {shlex.join([str(wrapper), 'run', '--config', str(sb.config_path), '--dry-run', 'follow_primary', *args])}"
        )
        say(f"  make another failover: kill -9 $(head -1 {new.pgdata}/postmaster.pid)")
        say()
        say(f"{BOLD}Stop it with:{RESET} ./demo.sh --down   (or: python -m sandbox down --base {base})")


# ---- build / down --------------------------------------------------------------------


def make_sandbox(args: argparse.Namespace) -> PgpoolSandbox:
    base: Path = args.base
    addresses = args.addresses.split(",")
    if len(addresses) != 3:
        raise SandboxError("--addresses needs exactly three addresses (a primary and two standbys)")
    sshd = Sshd(base / "ssh", addresses, args.ssh_port)
    app = HookApp(base, python=os.environ.get("PGPOOL_HOOK_PYTHON", ""))
    return PgpoolSandbox(
        base,
        sshd,
        app,
        addresses=addresses,
        pg_port=args.pg_port,
        pgpool_port=args.pgpool_port,
        pcp_port=args.pcp_port,
        config_overrides={"vars": {"server_log": SERVER_LOG_VAR}},
    )


def build(args: argparse.Namespace) -> PgpoolSandbox:
    base: Path = args.base
    if (base / STATE_FILE).exists():
        raise SandboxError(
            f"a demo cluster is already up in {base}.\n"
            f"Stop it first with ./demo.sh --down (or: python -m sandbox down --base {base}), then run the demo again."
        )
    if base.exists():
        busy = processes_referencing(base)
        if busy:
            raise SandboxError(
                f"{base} has no sandbox state but processes still use it (pids {busy[:10]}); "
                f"stop them or choose another --base"
            )
        shutil.rmtree(base)  # leftovers of an interrupted build
    sb = make_sandbox(args)
    heading(f"0. building the sandbox in {base}")
    say(
        f"  3 PostgreSQL 15 nodes on {', '.join(sb.addresses)} port {sb.pg_port} (node0 primary, "
        f"node1 and node2 standbys with slots), sshd on port {sb.sshd.port}, "
        f"pgpool on {sb.pgpool.host}:{sb.pgpool_port} (pcp {sb.pcp_port})"
    )
    started = time.monotonic()
    try:
        sb.app.install()
        runner = sb.app.start_runner()
        sb.sshd.start()
        sb.build()
    except BaseException:
        sb.destroy(remove=False)
        sb.sshd.stop()
        sb.app.stop_runner()
        raise
    say(f"  built in {time.monotonic() - started:.1f}s; resident runner `pgpool-hook serve` pid {runner}")
    say("  (hook calls are handed to it and skip Python's start-up); pgpool's hooks:")
    for key in ("failover_command", "follow_primary_command", "recovery_1st_stage_command"):
        say(f"    {key} = '{sb.pgpool.settings()[key]}'")
    say(f"    {sb.nodes[0].pgdata}/recovery_1st_stage and pgpool_remote_start: shims that run pgpool-hook")
    return sb


def down(base: Path) -> int:
    from sandbox.__main__ import main as sandbox_main

    return sandbox_main(["down", "--base", str(base)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", type=Path, default=DEFAULT_BASE, help=f"demo directory (default {DEFAULT_BASE})"
    )
    parser.add_argument("--down", action="store_true", help="stop the demo cluster and remove its directory")
    parser.add_argument("--addresses", default=",".join(DEFAULT_ADDRESSES), help="three node addresses")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT)
    parser.add_argument("--ssh-port", type=int, default=DEFAULT_SSH_PORT)
    parser.add_argument("--pgpool-port", type=int, default=DEFAULT_PGPOOL_PORT)
    parser.add_argument("--pcp-port", type=int, default=DEFAULT_PCP_PORT)
    parser.add_argument("--no-colour", action="store_true")
    args = parser.parse_args(argv)
    args.base = args.base.absolute()
    use_colour(sys.stdout.isatty() and not args.no_colour and not os.environ.get("NO_COLOR"))
    if args.down:
        return down(args.base)
    if os.geteuid() != 0:
        print(
            "error: the demo must run as root (it starts sshd and runs PostgreSQL/pgpool as postgres)",
            file=sys.stderr,
        )
        return 2
    try:
        sb = build(args)
    except SandboxError as exc:
        print(f"{RED}error:{RESET} {exc}", file=sys.stderr)
        return 1
    demo = Demo(sb)
    stage = "validate"
    try:
        demo.validate()
        stage = "dry-run"
        demo.dry_run()
        stage = "failover"
        demo.failover()
        stage = "online recovery"
        demo.recovery()
        stage = "timeline"
        demo.timeline()
        demo.pool_nodes()
    except (DemoFailure, SandboxError, TimeoutError) as exc:
        print(f"\n{RED}{BOLD}demo failed during {stage}:{RESET} {exc}", file=sys.stderr)
        for title, path in getattr(exc, "logs", []) or demo.logs(*sb.nodes):
            print(f"\n--- {title}: last lines of {path} ---\n{tail(Path(path))}", file=sys.stderr)
        if demo.t0 is not None:
            try:
                demo.timeline()
            except Exception:  # noqa: BLE001 - the timeline is a bonus here
                pass
        print(
            f"\nThe cluster is left running for inspection (hook config {sb.config_path}, "
            f"journal {sb.state_dir / 'journal.jsonl'}).\n"
            f"Stop it with ./demo.sh --down (or: python -m sandbox down --base {args.base})",
            file=sys.stderr,
        )
        return 1
    demo.look_around(args.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
