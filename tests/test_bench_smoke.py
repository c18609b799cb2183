"""The benchmark's own code still works (no cluster, no timing): bench/ cannot rot silently.

Imports every bench module, generates the synthetic workflows and dry-runs a 10-step one
through the real CLI, and checks the pieces that turn measurements into a verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import cluster, overhead, proc, run, samples, stats, synthetic

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOL_HOOK")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_synthetic_workflows_dry_run_through_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "pgpool-hook.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    scaled = synthetic.write(tmp_path, "steps10", synthetic.scaled_workflow(10))
    result = _cli(
        "run", "--dry-run", "--config", str(config), str(scaled), *synthetic.SCALED_ARGS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would run 10 step(s)" in result.stdout
    for kind in ("sql", "ssh", "file", "local"):
        assert f"({kind}, when" in result.stdout
    chained = synthetic.write(tmp_path, "chained10", synthetic.scaled_workflow(10, reference_previous=True))
    result = _cli(
        "run", "--dry-run", "--config", str(config), str(chained), *synthetic.SCALED_ARGS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "when steps.s8.ok" in result.stdout
    noop = synthetic.write(tmp_path, synthetic.NOOP_NAME, synthetic.noop_workflow())
    result = _cli("run", "--dry-run", "--config", str(config), str(noop), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "state").exists()  # a dry-run writes nothing


def test_the_largest_synthetic_workflows_fit_the_file_size_limit() -> None:
    assert len(synthetic.scaled_workflow(max(overhead.DRY_RUN_SIZES)).encode()) < 1024 * 1024
    assert len(synthetic.scaled_workflow(max(overhead.DRY_RUN_REF_SIZES), True).encode()) < 1024 * 1024


def test_sample_adaptation_replaces_every_knob() -> None:
    knobs = samples.SandboxKnobs(
        ssh_port=2422,
        known_hosts=Path("/kh"),
        key_file=Path("/key"),
        passfile=Path("/pgpass"),
        pcp_port=39898,
        archive_dir=Path("/arch"),
    )
    text = (
        "PGHOME=/usr/pgsql-14\nARCHIVEDIR=/var/lib/pgsql/archivedir\nPCP_PORT=9898\nPGPOOL_PATH=/usr/bin\n"
        'SSH_OPTIONS="-o StrictHostKeyChecking=no"\n'
        "primary_conninfo = 'passfile=''/var/lib/pgsql/.pgpass'''\n"
        "restore_command = 'scp x'\nrecovery_target_timeline = 'latest'\n"
    )
    out = samples.adapt(text, knobs)
    assert "PGHOME=/usr/lib/postgresql/15\n" in out
    assert "ARCHIVEDIR=/arch\n" in out and "PCP_PORT=39898\n" in out and "PGPOOL_PATH=/usr/sbin\n" in out
    assert '-p 2422 -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/kh -i /key"' in out
    assert "/pgpass" in out and "/var/lib/pgsql" not in out
    assert "restore_command" not in out and "recovery_target_timeline" in out


def test_placeholders_are_filled_like_pgpool_does() -> None:
    assert cluster.fill("x %d %H %% %R", {"d": 2, "H": "h", "R": "/d"}) == "x 2 h % /d"


def test_stats_and_targets() -> None:
    result = stats.paired([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert result["ratios"] == [0.5, 1.0, 1.5] and result["ratio_median"] == 1.0
    assert result["ours"] == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    ratio = next(t for t in stats.TARGETS if t.case == "follow_rewind")
    assert stats.evaluate(ratio, result)["met"] is False
    diff = next(t for t in stats.TARGETS if t.case == "follow_skip")
    assert stats.evaluate(diff, stats.paired([0.15], [0.1]))["met"] is True
    assert stats.evaluate(diff, None)["met"] is None
    assert "| a" in stats.table([["1"]], ["a"])


def test_a_failed_run_keeps_the_pairs_aligned(tmp_path: Path) -> None:
    bench = cluster.Bench(tmp_path, log=lambda line: None)
    order = []

    def one(tool: str, i: int) -> dict[str, float]:
        order.append((tool, i))
        if tool == "ours" and i == 0:
            raise cluster.RunFailed("boom")
        return {"hook": 1.0 + i, "writable": 2.0 + i} if tool == "ours" else {"hook": 2.0, "writable": 4.0}

    result = bench.alternate("case", 2, one, warmup=True)
    assert order == [("ours", -1), ("theirs", -1), ("ours", 0), ("theirs", 0), ("ours", 1), ("theirs", 1)]
    hook = result["metrics"]["hook"]
    assert hook["ours_runs"] == [None, 2.0] and hook["theirs_runs"] == [2.0, 2.0]
    assert hook["pairs"] == 1 and hook["ratios"] == [1.0]
    assert result["metrics"]["writable"]["ratios"] == [0.75]
    assert result["errors"] == ["pair 1 ours: boom"]


def test_log_span_reads_the_first_and_last_timestamps(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(
        "2026-11-27T10:00:00.100Z pgpool-hook[x] outcome=started\n+ xtrace line\n"
        "2026-11-27T10:00:01.350Z pgpool-hook[x] outcome=finished\n"
    )
    span = cluster.log_span(log)
    assert span is not None and abs(span[1] - span[0] - 1.25) < 1e-6
    assert cluster.log_span(tmp_path / "missing.log") is None


def test_modules_expose_their_entry_points() -> None:
    assert callable(run.main) and callable(proc.run_hook) and set(cluster.CASES) >= {"e2e", "recovery"}
