"""The runner's own cost, without a cluster: start-up, validate, dry-run scaling.

* ``python3 -c pass`` (the same interpreter the hooks use) is the floor;
* ``pgpool-hook run`` of a one-step no-op workflow (warm: the validated workflow and
  config are cached in ``state_dir/cache`` by the first, discarded run);
* ``pgpool-hook validate`` of the shipped workflows (never cached: full schema and
  Jinja2 checks every time);
* ``pgpool-hook run --dry-run`` of generated 1,000- and 10,000-step workflows (a dry-run
  never uses the cache, so this is validation + rendering + planning of every step), once
  with independent steps and once with every step reading the previous step's result.

Everything runs as ``postgres`` through ``/bin/sh -c`` with pgpool's environment, like
the hooks, interleaved round by round so that machine noise hits every command alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import synthetic
from bench.proc import run_hook
from bench.stats import paired, summary
from sandbox.app import HookApp, write_hook_config
from sandbox.osuser import make_postgres_dir

# the issue asks for 1,000 and 10,000; validate refuses more than MAX_STEPS (500) since
# commit 71a210c, so 50 and 500 show the growth within the limit as well
DRY_RUN_SIZES = (50, 500, 1000, 10000)
# the same with every step reading the previous step's result (steps.X), as real hooks do
DRY_RUN_REF_SIZES = (1000, 10000)


def _config(directory: Path, app: HookApp) -> Path:
    return write_hook_config(
        directory / "pgpool-hook.yaml",
        workflows_dir=str(app.workflows_dir),
        state_dir=str(directory / "state"),
    )


def measure(
    app: HookApp,
    directory: Path,
    env: Mapping[str, str],
    *,
    rounds: int = 20,
    dry_run_repeats: int = 3,
    dry_run_timeout: float = 300,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    make_postgres_dir(directory)
    cfg = _config(directory, app)
    noop = synthetic.write(directory, synthetic.NOOP_NAME, synthetic.noop_workflow())
    commands = {
        "python_pass": f"{app.python} -c pass",
        "noop_run": f"{app.wrapper} run --config {cfg} {noop}",
        # the same call in its own process, as without a resident runner (or with none running)
        "noop_run_local": f"PGPOOL_HOOK_SOCKET=off {app.wrapper} run --config {cfg} {noop}",
        "validate": f"{app.wrapper} validate --config {cfg} >/dev/null",
    }
    # warm-up: .pyc files of the app copy, the config check marker and the workflow cache
    for command in commands.values():
        for _ in range(2):
            result = run_hook(command, env=env, log=directory / "warmup.log")
            if result.rc != 0:
                raise RuntimeError(f"warm-up of {command!r} failed (rc={result.rc}): see {result.log}")
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            result = run_hook(commands[name], env=env)
            if result.rc != 0:
                raise RuntimeError(f"{commands[name]!r} failed with rc={result.rc}")
            times[name].append(result.seconds)
            cpu[name].append(result.cpu)
    log("  start-up: " + ", ".join(f"{n} {statistics.median(v) * 1000:.0f} ms" for n, v in times.items()))

    args = " ".join(synthetic.SCALED_ARGS)

    def dry_runs(sizes: tuple[int, ...], reference_previous: bool) -> dict[str, Any]:
        dry: dict[str, Any] = {}
        label = "-refs" if reference_previous else ""
        for n in sizes:
            text = synthetic.scaled_workflow(n, reference_previous)
            path = synthetic.write(directory, f"bench_steps_{n}{label}", text)
            command = f"{app.wrapper} run --dry-run --config {cfg} {path} {args} >/dev/null"
            repeats = dry_run_repeats if n <= 1000 else 1
            log_file = directory / f"dry-run-{n}{label}.log"
            values: list[float] = []
            status = "ok"
            for _ in range(repeats):
                try:
                    result = run_hook(command, env=env, log=log_file, timeout=dry_run_timeout)
                except Exception as exc:  # noqa: BLE001 - a timeout is a result here
                    status = f"did not finish: {type(exc).__name__} after {dry_run_timeout:.0f}s"
                    break
                if result.rc != 0:
                    first = log_file.read_text(errors="replace").strip().splitlines()[:1]
                    status = (
                        f"refused, exit {result.rc}: {first[0] if first else '?'} ({result.seconds:.2f} s)"
                    )
                    break
                values.append(result.seconds)
            dry[str(n)] = {"steps": n, "file_bytes": path.stat().st_size, "status": status, **summary(values)}
            log(
                f"  dry-run {n} steps{' reading steps.X' if reference_previous else ''}: {dry[str(n)]['median']} s ({status})"
            )
        return dry

    dry = dry_runs(DRY_RUN_SIZES, False)
    refs = dry_runs(DRY_RUN_REF_SIZES, True)

    def growth(runs: dict[str, Any], small: int, big: int) -> float | None:
        a, b = runs[str(small)]["median"], runs[str(big)]["median"]
        return b / a if a and b else None

    return {
        "commands": {n: c for n, c in commands.items()},
        "samples": times,
        "cpu_samples": cpu,
        # CPU time (user + system) is much less sensitive to other load on the machine than wall time
        "cpu": {name: summary(values) for name, values in cpu.items()},
        "python_pass": summary(times["python_pass"]),
        "noop_run": paired(times["noop_run"], times["python_pass"]),
        "noop_run_local": paired(times["noop_run_local"], times["python_pass"]),
        "validate": paired(times["validate"], times["python_pass"]),
        "dry_run": dry,
        "dry_run_growth": growth(dry, 1000, 10000),
        "dry_run_growth_50_500": growth(dry, 50, 500),
        "dry_run_refs": refs,
        "dry_run_refs_growth": growth(refs, 1000, 10000),
    }
