"""``python -m bench.run``: pgpool-hook against Pgpool-II's sample scripts, side by side.

Run as root from the checkout (it starts sshd, PostgreSQL and pgpool as in ``sandbox/``)::

    /opt/pgpool-hook/venv/bin/python -m bench.run [--pairs 5] [--output bench/results/latest.json]

Prints a table and writes every figure as JSON.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py` from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import overhead, samples  # noqa: E402
from bench.cluster import ADDRESSES, CASES, PCP_PORT, PG_PORT, PGPOOL_PORT, SSH_PORT, Bench  # noqa: E402
from bench.stats import TARGETS, evaluate, fmt_s, summary, table  # noqa: E402
from sandbox.osuser import PG_BIN_DIR, base_env, make_postgres_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "latest.json"


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as exc:
        return f"unavailable ({exc})"


def _cmd_all(*argv: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip()


def machine_info(python: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    os_name = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": os_name,
        "python": _cmd(python, "-c", "import sys; print(sys.version.split()[0])"),
        "python_path": python,
        "postgresql": _cmd(str(PG_BIN_DIR / "postgres"), "--version"),
        "pgpool": _cmd_all("/usr/sbin/pgpool", "--version"),
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def export_head(directory: Path) -> Path:
    """engine/ and workflows/ as committed at HEAD: what is measured is a commit, not
    whatever half-finished edits the working tree holds right now."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD", "engine", "workflows"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def git_info(worktree: bool) -> dict[str, Any]:
    head = _cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = bool(_cmd("git", "-C", str(REPO), "status", "--porcelain", "--", "engine", "workflows"))
    return {
        "commit": head,
        "measured": "working tree" if worktree else "HEAD",
        "worktree_engine_or_workflows_modified": dirty,
    }


def build_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per (case, metric): medians (min-max) both ways, median per-pair ratio, target."""
    verdicts = {(t["case"], t["metric"]): t for t in results["targets"]}
    rows = []
    labels = {
        ("failover_primary", "writable"): "failover, primary failed (kill -> hook -> writable)",
        ("failover_primary", "hook"): "failover, primary failed (hook only)",
        ("failover_standby", "hook"): "failover, standby failed (slot drop)",
        ("follow_rewind", "hook"): "follow_primary, running standby (rewind)",
        ("follow_rewind", "streaming"): "follow_primary, rewind, until streaming",
        ("follow_skip", "hook"): "follow_primary, dead node (skip)",
        ("recovery_1st_stage", "hook"): "recovery_1st_stage",
        ("remote_start", "hook"): "pgpool_remote_start",
        ("remote_start", "streaming"): "pgpool_remote_start, until streaming",
        ("e2e", "writable"): "end to end: kill -9 primary -> write via pgpool",
        ("e2e", "streaming"): "end to end: kill -9 primary -> standby streams",
        ("e2e", "attached"): "end to end: kill -9 primary -> standby attached",
    }
    for (case, metric), label in labels.items():
        m = results["cases"].get(case, {}).get("metrics", {}).get(metric)
        if not m:
            continue
        v = verdicts.get((case, metric))
        rows.append(
            [
                label,
                f"{m['pairs']}",
                _span(m["ours"]),
                _span(m["theirs"]),
                f"{m['ratio_median']:.2f}" if m["ratio_median"] is not None else "-",
                v["target"] if v else "",
                _verdict(v, m),
            ]
        )
    ov = results.get("overhead")
    if ov:
        floor = ov["python_pass"]
        for key, label, target in (
            ("noop_run", "pgpool-hook run, 1-step no-op (warm)", ("noop_run", "run")),
            (
                "noop_run_local",
                "pgpool-hook run, 1-step no-op (warm), own process (PGPOOL_HOOK_SOCKET=off)",
                ("noop_run_local", "run"),
            ),
            ("validate", "pgpool-hook validate, shipped workflows", None),
        ):
            m = ov[key]
            v = verdicts.get(target) if target else None
            rows.append(
                [
                    label + " vs python3 -c pass",
                    f"{m['pairs']}",
                    _span(m["ours"]),
                    _span(floor),
                    f"+{fmt_s(m['ours']['median'] - floor['median'])}",
                    v["target"] if v else "(none)",
                    _verdict(v, m) if v else "",
                ]
            )
        for key, what in (
            ("dry_run", "synthetic steps"),
            ("dry_run_refs", "steps, each reading the previous step"),
        ):
            for n, d in ov.get(key, {}).items():
                verdict = ""
                if n == "10000":
                    verdict = "met" if d["median"] is not None and d["median"] < 10 else "MISSED"
                rows.append(
                    [
                        f"--dry-run, {int(n):,} {what}",
                        f"{d['n']}",
                        _span(d) if d["median"] is not None else _short_status(d["status"]),
                        "",
                        "",
                        "< 10 s" if n == "10000" else "",
                        verdict,
                    ]
                )
        for key, label, goal in (
            ("dry_run_growth", "--dry-run growth, 10,000 / 1,000 steps", "<= 11x"),
            ("dry_run_refs_growth", "--dry-run growth, 10,000 / 1,000 steps reading steps.X", "<= 11x"),
            ("dry_run_growth_50_500", "--dry-run growth, 500 / 50 steps", "(linear: ~10x)"),
        ):
            growth = ov.get(key)
            verdict = ""
            if key != "dry_run_growth_50_500":
                verdict = (
                    "met" if growth and growth <= 11 else "MISSED" if growth else "MISSED (not measurable)"
                )
            rows.append([label, "", f"{growth:.1f}x" if growth else "-", "", "", goal, verdict])
    return rows


def _short_status(status: str) -> str:
    """'refused, exit 2: error: /x.yaml:9:1: steps: 1000 items; at most 500 (0.5 s)' -> shorter."""
    match = re.search(r"exit (\d+): .*?:\d+:\d+: (.*?) \(", status)
    return f"refused (exit {match.group(1)}): {match.group(2)}" if match else status


def _span(s: dict[str, Any]) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{fmt_s(s['median'])} ({fmt_s(s['min'])}-{fmt_s(s['max'])})"


def _verdict(v: dict[str, Any] | None, m: dict[str, Any]) -> str:
    if v is None:
        return ""
    if v["met"] is None:
        return "not measured"
    if v["case"] in ("follow_skip", "noop_run", "noop_run_local"):
        shown = f"+{v['value'] * 1000:.1f} ms"  # one decimal: these sit close to their limit
    else:
        shown = f"{v['value']:.2f}"
    return ("met" if v["met"] else "MISSED") + f" ({shown})"


def cpu_table(results: dict[str, Any]) -> list[list[str]]:
    """Median CPU seconds per hook run, both ways: much steadier than wall time under load;
    for pgpool-hook also the wall time before its first and after its last log line."""
    rows = []
    phases = results.get("hook_phases_seconds", {})
    for case, tools in results.get("hook_cpu_seconds", {}).items():
        ours, theirs = summary(tools.get("ours", [])), summary(tools.get("theirs", []))
        p = phases.get(case, {})
        before = summary(p.get("before_first_line", []))["median"]
        after = summary(p.get("after_last_line", []))["median"]
        rows.append([case, fmt_s(ours["median"]), fmt_s(theirs["median"]), fmt_s(before), fmt_s(after)])
    cpu = results.get("overhead", {}).get("cpu")
    if cpu:
        floor = fmt_s(cpu["python_pass"]["median"])
        rows.append(["noop run vs python3 -c pass", fmt_s(cpu["noop_run"]["median"]), floor, "", ""])
        if "noop_run_local" in cpu:
            rows.append(["noop run, own process", fmt_s(cpu["noop_run_local"]["median"]), floor, "", ""])
        rows.append(["validate vs python3 -c pass", fmt_s(cpu["validate"]["median"]), floor, "", ""])
    return rows


HEADER = [
    "case",
    "pairs",
    "pgpool-hook median (min-max)",
    "sample median (min-max)",
    "ratio",
    "target",
    "result",
]


def split_recovery(cases: dict[str, Any]) -> None:
    """The recovery case measures two hooks per run: report them as two cases."""
    rec = cases.pop("recovery", None)
    if not rec:
        return
    m = rec["metrics"]
    base = {"pairs_planned": rec.get("pairs_planned"), "errors": rec.get("errors", [])}
    cases["recovery_1st_stage"] = {
        **base,
        "metrics": {"hook": m.get("first_stage")} if m.get("first_stage") else {},
    }
    cases["remote_start"] = {
        **base,
        "metrics": {
            k: v
            for k, v in (("hook", m.get("remote_start")), ("streaming", m.get("remote_start_streaming")))
            if v
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pairs", type=int, default=5, help="A/B pairs per case (default 5, the minimum asked for)"
    )
    parser.add_argument("--e2e-pairs", type=int, help="pairs of the end-to-end case (default: --pairs)")
    parser.add_argument(
        "--skip-pairs", type=int, help="pairs of the follow_primary skip case (default 4x --pairs)"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds of the start-up measurements (default 4x --pairs, >= 20)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--cases",
        default=",".join([*CASES, "overhead"]),
        help="comma-separated subset of: " + ", ".join([*CASES, "overhead"]),
    )
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="measure engine/ and workflows/ as they are in the working tree (default: as committed at HEAD)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    parser.add_argument(
        "--no-runner",
        action="store_true",
        help="do not start the resident runner (pgpool-hook serve): every hook call starts Python",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "error: run as root (the sandbox starts sshd and runs PostgreSQL/pgpool as postgres)",
            file=sys.stderr,
        )
        return 2
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CASES and c != "overhead"]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if any(c in CASES for c in wanted) and not samples.available():
        print(f"error: the pgpool2 sample scripts are not in {samples.SAMPLES_DIR}", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="pgpool-hook-bench-", dir="/tmp"))
    make_postgres_dir(base, 0o755)
    started = time.time()
    source = REPO if args.worktree else export_head(base / "src")
    bench = Bench(
        base,
        source=source,
        pairs=args.pairs,
        e2e_pairs=args.e2e_pairs or args.pairs,
        skip_pairs=args.skip_pairs or 4 * args.pairs,
        runner=not args.no_runner,
        log=lambda s: print(s, flush=True),
    )
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_info(args.worktree),
        "settings": {
            "pairs": args.pairs,
            "e2e_pairs": bench.e2e_pairs,
            "skip_pairs": bench.skip_pairs,
            "addresses": list(ADDRESSES),
            "ports": {"postgresql": PG_PORT, "ssh": SSH_PORT, "pgpool": PGPOOL_PORT, "pcp": PCP_PORT},
            "order": "A B A B: pgpool-hook first in every pair",
            "runner": "hook calls handed to a resident `pgpool-hook serve`"
            if not args.no_runner
            else "no resident runner: every hook call starts Python",
            "warm": "validated workflows/config cached in state_dir/cache before timing",
        },
        "cases": {},
    }
    try:
        bench.start()
        results["machine"] = machine_info(bench.app.python)
        print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cores']} cores, "
              f"kernel {results['machine']['kernel']}, Python {results['machine']['python']}, "
              f"{results['machine']['postgresql']}, {results['machine']['pgpool']}", flush=True)  # fmt: skip
        if "overhead" in wanted:
            print("runner overhead ...", flush=True)
            results["overhead"] = overhead.measure(
                bench.app,
                base / "overhead",
                base_env(PG_BIN_DIR),
                rounds=args.rounds or max(20, 4 * args.pairs),
                log=lambda s: print(s, flush=True),
            )
        for name in CASES:
            if name not in wanted:
                continue
            print(f"{name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                results["cases"][name] = CASES[name](bench)
            except Exception as exc:  # noqa: BLE001 - a broken case must not cost the others
                print(f"  {name} could not run: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
                results["cases"][name] = {"errors": [f"{type(exc).__name__}: {exc}"], "metrics": {}}
            results["cases"][name]["seconds"] = round(time.perf_counter() - t0, 1)
            try:
                bench.teardown()
            except Exception as exc:  # noqa: BLE001
                print(f"  teardown after {name} failed: {exc}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured so far", file=sys.stderr)
        results["interrupted"] = True
    finally:
        bench.stop()
        if args.keep:
            print(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    split_recovery(results["cases"])
    flat = dict(results["cases"])
    if "overhead" in results:
        flat["noop_run"] = {"metrics": {"run": results["overhead"]["noop_run"]}}
        flat["noop_run_local"] = {"metrics": {"run": results["overhead"].get("noop_run_local")}}
    results["targets"] = [evaluate(t, flat.get(t.case, {}).get("metrics", {}).get(t.metric)) for t in TARGETS]
    if "overhead" in results:
        ov = results["overhead"]
        # plain steps, and steps that read the previous step's result: the same two targets;
        # a refused or unfinished 10,000-step dry-run misses both
        for key in ("dry_run", "dry_run_refs"):
            big = ov.get(key, {}).get("10000", {})
            growth = ov.get(f"{key}_growth")
            results["targets"].append(
                {"case": f"{key}_10000", "metric": "seconds", "target": "< 10 s", "value": big.get("median"),
                 "met": big.get("median") is not None and big["median"] < 10, "status": big.get("status")}
            )  # fmt: skip
            results["targets"].append(
                {"case": f"{key}_growth", "metric": "ratio", "target": "<= 11x", "value": growth,
                 "met": growth is not None and growth <= 11}
            )  # fmt: skip
    results["build_seconds"] = bench.build_seconds
    # CPU seconds (user + system) of every timed hook run, warm-ups included, per case and tool
    results["hook_cpu_seconds"] = bench.cpu
    # pgpool-hook runs: wall time before its first log line (start-up: interpreter, imports,
    # config, cached workflow, vars) and after its last one (closing connections, exit)
    results["hook_phases_seconds"] = bench.phases
    results["machine"] = results.get("machine", {})
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["total_seconds"] = round(time.time() - started, 1)

    rows = build_rows(results)
    print()
    print(table(rows, HEADER))
    cpu_rows = cpu_table(results)
    if cpu_rows:
        print("\nCPU time (user + system of the hook and its children; remote work over ssh not included):")
        print(
            table(
                cpu_rows,
                [
                    "run",
                    "pgpool-hook CPU",
                    "sample / floor CPU",
                    "pgpool-hook before 1st log line",
                    "after last",
                ],
            )
        )
    errors = {name: c["errors"] for name, c in results["cases"].items() if c.get("errors")}
    for name, errs in errors.items():
        for e in errs:
            print(f"! {name}: {e.splitlines()[0]}")
    print(f"\ntotal {results['total_seconds']:.0f} s; load average {results['machine'].get('loadavg_start')} -> "
          f"{results['machine']['loadavg_end']}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({**results, "table": {"header": HEADER, "rows": rows}}, indent=2) + "\n"
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
