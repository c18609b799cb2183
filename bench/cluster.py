"""The per-hook and end-to-end cases, on a real pgpool + PostgreSQL 15 + sshd sandbox.

Each case runs pgpool-hook (the shipped workflows, through the same ``bin/pgpool-hook``
wrapper pgpool would call) and the adapted Pgpool-II sample scripts alternately, A B A B,
on the same cluster, resetting it between runs.  Per-hook cases call the hook directly
with the exact command line pgpool (or, for the recovery scripts, the PostgreSQL server)
would run, as ``postgres``, through ``/bin/sh -c``.

Cluster states and resets:

* standby failure: kill -9 a standby, wait until its walsender is gone, run failover;
  reset = recreate the slot and start the standby again.
* primary failure: kill -9 the primary, run failover, poll until the new primary takes a
  write; reset = a freshly built cluster.
* follow-primary: a pgpool whose own failover_command only promotes node 1 and whose
  follow_primary_command does nothing; kill -9 node 0 and let pgpool fail over.  That
  leaves what pgpool leaves before it calls follow_primary: node 0 dead (skip path) and
  node 2 running but detached, still on the old timeline (rewind path).  The skip path
  changes nothing, so all its pairs share one such state; the rewind path gets a fresh
  one per run.
* online recovery: stop a standby, drop its slot (as failover would have), install the
  tool's recovery_1st_stage/pgpool_remote_start in the primary's PGDATA, run the first
  stage, then remote start, as pgpool does; then check it streams.
* end to end: pgpool with the tool's failover/follow_primary commands, kill -9 of the
  primary, poll (a) a write through pgpool and (b) node 2 streaming from node 1; a
  freshly built cluster per run.
"""

from __future__ import annotations

import datetime
import re
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import samples
from bench.proc import run_hook, tail
from bench.stats import paired
from sandbox.app import HookApp
from sandbox.osuser import PG_BIN_DIR, base_env, make_postgres_dir, run_as_postgres, write_file
from sandbox.pg import Node
from sandbox.sshd import Sshd
from sandbox.stack import PgpoolSandbox

ADDRESSES = ("127.0.0.51", "127.0.0.52", "127.0.0.53")
PG_PORT = 24432  # below 32768: ports in the ephemeral range can be taken by any outgoing connection
SSH_PORT = 2422
PGPOOL_PORT = 24999
PCP_PORT = 24898

TOOLS = ("ours", "theirs")  # A = pgpool-hook, B = the sample scripts
FAILOVER_ARGS = "%d %h %p %D %m %H %M %P %r %R %N %S"
FOLLOW_ARGS = "%d %h %p %D %m %H %M %P %r %R"
PROMOTE_ONLY = f"{PG_BIN_DIR}/pg_ctl -D %R -w promote >/dev/null 2>&1"


def fill(template: str, values: dict[str, Any]) -> str:
    """Replace pgpool's %-placeholders the way pgpool does: verbatim, unquoted."""
    out, i = [], 0
    while i < len(template):
        if template[i] == "%" and i + 1 < len(template):
            key = template[i + 1]
            out.append("%" if key == "%" else str(values[key]))
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def failover_values(failed: Node, new_main: Node, old_primary: Node) -> dict[str, Any]:
    return {
        "d": failed.node_id, "h": failed.address, "p": failed.port, "D": failed.pgdata,
        "m": new_main.node_id, "H": new_main.address, "M": old_primary.node_id, "P": old_primary.node_id,
        "r": new_main.port, "R": new_main.pgdata, "N": old_primary.address, "S": old_primary.port,
    }  # fmt: skip


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until ``predicate()`` is truthy; return the perf_counter time it first was."""
    deadline = time.perf_counter() + timeout
    last: Any = None
    while True:
        try:
            if predicate():
                return time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def writable(node: Node) -> bool:
    with psycopg.connect(node.conninfo(), connect_timeout=2, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (at timestamptz)")
        conn.execute("INSERT INTO bench_probe VALUES (now())")
    return True


def streaming(standby: Node, primary: Node) -> bool:
    rows = primary.query(
        "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
        (standby.address,),
    )
    return bool(rows)


def slot_state(primary: Node, name: str) -> bool | None:
    """None: no such slot; else whether it is active."""
    for s in primary.slots():
        if s["slot_name"] == name:
            return bool(s["active"])
    return None


STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ", re.M)


def log_span(log: Path) -> tuple[float, float] | None:
    """Epoch seconds of the first and last timestamped line pgpool-hook logged (ms resolution)."""
    try:
        stamps = STAMP.findall(log.read_text(errors="replace"))
    except OSError:
        return None
    if not stamps:
        return None

    def epoch(text: str) -> float:
        return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()

    return epoch(stamps[0]), epoch(stamps[-1])


class RunFailed(RuntimeError):
    pass


@dataclass
class Bench:
    base: Path
    source: Path | None = None  # where engine/ and workflows/ are copied from (default: the checkout)
    pairs: int = 5
    e2e_pairs: int = 5
    skip_pairs: int = 20
    runner: bool = True  # pgpool-hook as the manual deploys it: calls handed to `pgpool-hook serve`
    log: Callable[[str], None] = print
    sshd: Sshd = field(init=False)
    app: HookApp = field(init=False)
    sandbox: PgpoolSandbox | None = field(default=None, init=False)
    scripts: dict[str, Path] = field(default_factory=dict, init=False)
    runs: int = field(default=0, init=False)
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict, init=False)
    # pgpool-hook only: time before its first log line and after its last one, per run
    phases: dict[str, dict[str, list[float]]] = field(default_factory=dict, init=False)
    build_seconds: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.sshd = Sshd(self.base / "ssh", ADDRESSES, SSH_PORT)
        self.app = HookApp(self.base, source=self.source) if self.source else HookApp(self.base)

    # ---- paths --------------------------------------------------------------------

    @property
    def cluster_dir(self) -> Path:
        return self.base / "cluster"

    @property
    def state_dir(self) -> Path:
        """Outside the cluster directory, so rebuilding the cluster keeps the cache warm."""
        return self.base / "hook-state"

    @property
    def samples_dir(self) -> Path:
        return self.base / "samples"

    @property
    def logs_dir(self) -> Path:
        return self.base / "logs"

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        make_postgres_dir(self.base)
        make_postgres_dir(self.logs_dir)
        make_postgres_dir(self.state_dir)
        self.app.install()
        if self.runner:
            self.app.start_runner()
        self.sshd.start()
        make_postgres_dir(self.samples_dir)
        make_postgres_dir(self.samples_dir / "archivedir")
        knobs = samples.SandboxKnobs(
            ssh_port=self.sshd.port,
            known_hosts=self.sshd.known_hosts,
            key_file=self.sshd.key_file,
            passfile=self.cluster_dir / "pgpass",
            pcp_port=PCP_PORT,
            archive_dir=self.samples_dir / "archivedir",
        )
        for workflow, text in samples.adapted_scripts(knobs).items():
            name = samples.SAMPLE_FILES[workflow]
            self.scripts[workflow] = write_file(self.samples_dir / name, text, mode=0o755)

    def stop(self) -> None:
        try:
            self.teardown()
        finally:
            self.sshd.stop()
            self.app.stop_runner()

    def teardown(self) -> None:
        if self.sandbox is not None:
            self.sandbox.destroy(remove=True)
            self.sandbox = None

    def build(
        self,
        *,
        failover_command: str | None = None,
        follow_primary_command: str | None = None,
        start_pgpool: bool = False,
    ) -> PgpoolSandbox:
        """A fresh primary + 2 standbys (and pgpool if asked), replacing the previous one."""
        self.teardown()
        if self.cluster_dir.exists():
            shutil.rmtree(self.cluster_dir)
        started = time.perf_counter()
        sb = PgpoolSandbox(
            self.cluster_dir,
            self.sshd,
            self.app,
            addresses=ADDRESSES,
            pg_port=PG_PORT,
            pgpool_port=PGPOOL_PORT,
            pcp_port=PCP_PORT,
            failover_command=failover_command,
            follow_primary_command=follow_primary_command,
            config_overrides={"state_dir": str(self.state_dir)},
        )
        self.sandbox = sb
        sb.build(start_pgpool=start_pgpool)
        self.prime_cache(sb)
        self.build_seconds.append(time.perf_counter() - started)
        return sb

    def prime_cache(self, sb: PgpoolSandbox) -> None:
        """What the first real run after an edit does: check the config and the shipped
        workflows and remember them (state_dir/cache), so every timed run is a warm one."""
        code = (
            "import os, sys\n"
            "from engine import config, validate\n"
            "cfg = config.load(sys.argv[1], remember=True)\n"
            "for name in ('failover', 'follow_primary', 'recovery_1st_stage', 'remote_start'):\n"
            "    path = validate.resolve_workflow_path(name, cfg.workflows_dir)\n"
            "    validate.load_workflow(path, cache_dir=os.path.join(cfg.state_dir, 'cache'))\n"
        )
        env = base_env(extra={"PYTHONPATH": str(self.app.app_dir)})
        proc = run_as_postgres([self.app.python, "-c", code, str(sb.config_path)], env=env, check=False)
        if proc.returncode != 0:
            self.log(f"  (cache priming failed, the first runs may be cold: {proc.stderr.strip()[-300:]})")

    # ---- commands -----------------------------------------------------------------

    def hook_template(self, tool: str, hook: str) -> str:
        """The pgpool.conf command string of ``hook`` for ``tool``."""
        assert self.sandbox is not None
        if tool == "ours":
            return self.app.hook_command(self.sandbox.config_path, hook)
        placeholders = {"failover": FAILOVER_ARGS, "follow_primary": FOLLOW_ARGS}[hook]
        return f"{self.scripts[hook]} {placeholders}"

    def pgpool_env(self) -> dict[str, str]:
        """pgpool's environment as the sandbox starts it (PCPPASSFILE, PGPASSFILE, PATH)."""
        assert self.sandbox is not None
        return base_env(
            PG_BIN_DIR,
            {
                "PCPPASSFILE": str(self.sandbox.pgpool.pcppass),
                "PGPASSFILE": str(self.sandbox.cluster.passfile),
            },
        )

    def run(self, case: str, tool: str, command: str, *, env: dict[str, str], cwd: str = "/") -> float:
        self.runs += 1
        log = self.logs_dir / f"{self.runs:03d}-{case}-{tool}.log"
        started = time.time()
        result = run_hook(command, env=env, cwd=cwd, log=log)
        ended = started + result.seconds
        self.cpu.setdefault(case, {}).setdefault(tool, []).append(result.cpu)
        if tool == "ours":
            stamps = log_span(log)
            if stamps is not None:
                phases = self.phases.setdefault(case, {"before_first_line": [], "after_last_line": []})
                phases["before_first_line"].append(stamps[0] - started)
                phases["after_last_line"].append(ended - stamps[1])
        if result.rc != 0:
            raise RunFailed(f"{case}/{tool} exited {result.rc}; log {log}:\n{tail(log)}")
        return result.seconds

    # ---- the A B A B loop ---------------------------------------------------------

    def alternate(
        self,
        case: str,
        pairs: int,
        one: Callable[[str, int], dict[str, float]],
        *,
        warmup: bool = False,
    ) -> dict[str, Any]:
        """Run ``one(tool, i)`` for A B A B ...; collect its metrics per tool."""
        runs: dict[str, list[dict[str, float]]] = {t: [] for t in TOOLS}  # one dict per pair
        errors: list[str] = []
        if warmup:
            for tool in TOOLS:
                try:
                    one(tool, -1)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"warm-up {tool}: {exc}")
                    self.log(f"  warm-up {tool} failed: {exc}")
        for i in range(pairs):
            for tool in TOOLS:
                try:
                    values = dict(one(tool, i))
                except Exception as exc:  # noqa: BLE001 - record and go on with the next run
                    errors.append(f"pair {i + 1} {tool}: {exc}")
                    self.log(f"  pair {i + 1} {tool} FAILED: {exc}")
                    if not isinstance(exc, RunFailed | TimeoutError):
                        self.log(traceback.format_exc(limit=5))
                    values = {}  # every metric of this run is missing; pairs stay aligned
                runs[tool].append(values)
            shown = "  ".join(
                f"{t} " + (" ".join(f"{n}={v:.3f}" for n, v in runs[t][-1].items()) or "FAILED")
                for t in TOOLS
            )
            self.log(f"  {case} pair {i + 1}/{pairs}: {shown}")
        names = sorted({n for t in TOOLS for r in runs[t] for n in r})
        result: dict[str, Any] = {"pairs_planned": pairs, "errors": errors, "metrics": {}}
        for name in names:
            ours = [r.get(name) for r in runs["ours"]]
            theirs = [r.get(name) for r in runs["theirs"]]
            result["metrics"][name] = {
                "ours_runs": ours,
                "theirs_runs": theirs,
                **paired(ours, theirs),
            }
        return result

    # ---- cases --------------------------------------------------------------------

    def case_failover_standby(self) -> dict[str, Any]:
        sb = self.build()
        primary, _, standby = sb.nodes

        def one(tool: str, i: int) -> dict[str, float]:
            if not standby.is_running():
                sb.cluster.create_slot(primary, standby.slot_name)
                standby.start()
            sb.cluster.wait_streaming(standby, primary)
            standby.kill9()
            # pgpool notices a dead standby a health-check later; its walsender is long gone
            wait_for(lambda: slot_state(primary, standby.slot_name) is False, 30, "walsender to go")
            values = failover_values(standby, primary, primary)
            hook = self.run("failover_standby", tool, fill(self.hook_template(tool, "failover"), values),
                            env=self.pgpool_env())  # fmt: skip
            if slot_state(primary, standby.slot_name) is not None:
                raise RunFailed(f"{tool}: slot {standby.slot_name} still exists after the hook")
            return {"hook": hook}

        return self.alternate("failover_standby", self.pairs, one, warmup=True)

    def case_failover_primary(self) -> dict[str, Any]:
        def one(tool: str, i: int) -> dict[str, float]:
            sb = self.build()
            old, new, _ = sb.nodes
            old.kill9()
            command = fill(self.hook_template(tool, "failover"), failover_values(old, new, old))
            start = time.perf_counter()
            hook = self.run("failover_primary", tool, command, env=self.pgpool_env())
            done = wait_for(lambda: writable(new), 60, "the new primary to take a write", interval=0.01)
            return {"hook": hook, "writable": done - start}

        return self.alternate("failover_primary", self.pairs, one)

    def build_follow_state(self) -> PgpoolSandbox:
        """What pgpool leaves before follow_primary: node 0 dead, node 1 promoted, node 2
        running on the old timeline and detached."""
        sb = self.build(failover_command=PROMOTE_ONLY, follow_primary_command="/bin/true", start_pgpool=True)
        old, new, other = sb.nodes
        old.kill9()
        sb.pgpool.wait_primary(1, timeout=60)
        sb.pgpool.wait_node_status(2, "down", timeout=60)
        wait_for(lambda: not new.is_in_recovery(), 30, "node 1 out of recovery")
        assert other.is_running()
        time.sleep(1)  # pgpool's follow child (/bin/true) and its restart of the children
        return sb

    def follow_command(self, tool: str, sb: PgpoolSandbox, node: Node) -> str:
        new = sb.nodes[1]
        values = {
            "d": node.node_id, "h": node.address, "p": node.port, "D": node.pgdata,
            "m": new.node_id, "H": new.address, "M": 0, "P": 0, "r": new.port, "R": new.pgdata,
        }  # fmt: skip
        return fill(self.hook_template(tool, "follow_primary"), values)

    def case_follow_skip(self) -> dict[str, Any]:
        sb = self.build_follow_state()
        dead = sb.nodes[0]

        def one(tool: str, i: int) -> dict[str, float]:
            hook = self.run("follow_skip", tool, self.follow_command(tool, sb, dead), env=self.pgpool_env())
            return {"hook": hook}

        result = self.alternate("follow_skip", self.skip_pairs, one, warmup=True)
        if sb.pgpool.pcp_node_info(0).get("Status Name") != "down":
            result["errors"].append("node 0 is no longer down after the skip runs")
        return result

    def case_follow_rewind(self) -> dict[str, Any]:
        def one(tool: str, i: int) -> dict[str, float]:
            sb = self.build_follow_state()
            _, new, node = sb.nodes
            start = time.perf_counter()
            hook = self.run("follow_rewind", tool, self.follow_command(tool, sb, node), env=self.pgpool_env())
            done = wait_for(lambda: streaming(node, new), 60, "node 2 to stream from node 1")
            status = sb.pgpool.pcp_node_info(2).get("Status Name")
            if status not in ("up", "waiting"):
                raise RunFailed(f"{tool}: node 2 is {status!r} in pgpool after follow_primary")
            return {"hook": hook, "streaming": done - start}

        return self.alternate("follow_rewind", self.pairs, one)

    def case_recovery(self) -> dict[str, Any]:
        """recovery_1st_stage, then pgpool_remote_start, as pcp_recovery_node runs them."""
        sb = self.build()
        primary, _, target = sb.nodes
        env = base_env(PG_BIN_DIR)  # the postmaster's environment (pg_ctl start by the sandbox)
        ours = (
            self.app.recovery_script(sb.config_path, "recovery_1st_stage"),
            self.app.recovery_script(sb.config_path, "remote_start"),
        )
        theirs = (self.scripts["recovery_1st_stage"].read_text(), self.scripts["remote_start"].read_text())

        def one(tool: str, i: int) -> dict[str, float]:
            target.stop("fast")
            wait_for(lambda: slot_state(primary, target.slot_name) is not True, 30, "walsender to go")
            primary.query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                          (target.slot_name,))  # fmt: skip
            sb.cluster.install_recovery_scripts(*(ours if tool == "ours" else theirs), nodes=[primary])
            first = self.run(
                "recovery_1st_stage", tool,
                f"{primary.pgdata}/recovery_1st_stage {primary.pgdata} {target.address} {target.pgdata} "
                f"{primary.port} {target.node_id} {target.port} {primary.address}",
                env=env, cwd=str(primary.pgdata),
            )  # fmt: skip
            start = time.perf_counter()
            remote = self.run(
                "remote_start", tool,
                f"{primary.pgdata}/pgpool_remote_start {target.address} {target.pgdata}",
                env=env, cwd=str(primary.pgdata),
            )  # fmt: skip
            done = wait_for(lambda: streaming(target, primary), 60, "the recovered node to stream")
            return {"first_stage": first, "remote_start": remote, "remote_start_streaming": done - start}

        return self.alternate("recovery", self.pairs, one, warmup=True)

    def case_e2e(self) -> dict[str, Any]:
        def one(tool: str, i: int) -> dict[str, float]:
            sb = self.build(
                failover_command=self.hook_template_for_build(tool, "failover"),
                follow_primary_command=self.hook_template_for_build(tool, "follow_primary"),
                start_pgpool=True,
            )
            old, new, other = sb.nodes
            wait_for(lambda: self.write_through_pgpool(sb), 30, "a first write through pgpool")
            start = time.perf_counter()
            old.kill9()
            marks: dict[str, float] = {}

            def progress() -> bool:
                if "writable" not in marks:
                    try:
                        if self.write_through_pgpool(sb):
                            marks["writable"] = time.perf_counter()
                    except psycopg.Error:
                        pass
                if "streaming" not in marks:
                    try:
                        if streaming(other, new):
                            marks["streaming"] = time.perf_counter()
                    except psycopg.Error:
                        pass
                return len(marks) == 2

            wait_for(progress, 180, "a write through pgpool and node 2 streaming from node 1")
            attached = wait_for(
                lambda: sb.pgpool.pcp_node_info(2).get("Status Name") in ("up", "waiting"),
                60, "pgpool to attach node 2", interval=0.1,
            )  # fmt: skip
            return {
                "writable": marks["writable"] - start,
                "streaming": marks["streaming"] - start,
                "attached": attached - start,
            }

        return self.alternate("e2e", self.e2e_pairs, one)

    def hook_template_for_build(self, tool: str, hook: str) -> str:
        """Like hook_template, before the sandbox exists (its config path is fixed)."""
        if tool == "ours":
            return self.app.hook_command(self.cluster_dir / "pgpool-hook.yaml", hook)
        placeholders = {"failover": FAILOVER_ARGS, "follow_primary": FOLLOW_ARGS}[hook]
        return f"{self.scripts[hook]} {placeholders}"

    @staticmethod
    def write_through_pgpool(sb: PgpoolSandbox) -> bool:
        with sb.pgpool.connect(timeout=2) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (at timestamptz)")
            conn.execute("INSERT INTO bench_probe VALUES (now())")
        return True


CASES = {
    "failover_standby": Bench.case_failover_standby,
    "failover_primary": Bench.case_failover_primary,
    "follow_skip": Bench.case_follow_skip,
    "follow_rewind": Bench.case_follow_rewind,
    "recovery": Bench.case_recovery,
    "e2e": Bench.case_e2e,
}
