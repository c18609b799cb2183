"""A real run from start to summary: lock, journal, runner, exit code.

Kept apart from the CLI so tests and other front-ends (resume, rehearsal)
drive exactly the same sequence.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from engine import context, launch, render
from engine.config import Config
from engine.errors import EXIT_FAILED, Interrupted, RenderError
from engine.interpreter import Clock, Runner, RunResult
from engine.journal import Journal
from engine.lock import LockTimeout, RunLock
from engine.log import Logger
from engine.masking import Masker
from engine.model import Workflow
from engine.runtime import Runtime


def execute(
    workflow: Workflow,
    cfg: Config,
    params: dict[str, Any],
    masker: Masker,
    run_id: str,
    argv: list[str],
    *,
    kinds: dict[str, Any] | None = None,
    clock: Clock | None = None,
    done: set[str] | None = None,
    stream: Any = None,
    resumed_from: str | None = None,
    restored: dict[str, dict[str, Any]] | None = None,
    overrides: dict[str, Any] | None = None,
    from_step: str | None = None,
) -> int:
    from engine.steps import KINDS

    kinds = kinds or KINDS
    logger = Logger(workflow.name, run_id, masker, stream=stream or sys.stderr)
    # steps.<id> of steps done in an earlier run (resume), so later expressions still read them
    results: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (restored or {}).items()}
    from engine.cache import engine_fingerprint

    render.load_code_cache(os.path.join(cfg.state_dir, "cache", f"templates-{engine_fingerprint()}.marshal"))
    try:
        ctx, r = context.build(workflow, cfg, params, dry_run=False, results=results, run_id=run_id)
    except RenderError as exc:
        logger.event("invalid", str(exc))
        render.save_code_cache()
        return 2
    journal = Journal(cfg.state_dir, run_id, masker)
    if journal.error:
        logger.event("warning", journal.error)
    lock_name = workflow.name
    if workflow.lock:
        try:
            lock_name = r.text(workflow.lock, "lock")
        except RenderError as exc:
            logger.event("invalid", str(exc))
            return 2
    digests = workflow.digests  # remembered with a cached workflow; else computed now
    if digests is None:
        from engine.resume import fingerprint

        digests = fingerprint(workflow)
    start = time.time()
    journal.write(
        "run_started",
        workflow=workflow.name,
        path=os.path.abspath(workflow.path),
        args=argv,
        params={k: v for k, v in params.items()},
        pid=os.getpid(),
        runner=launch.served_by,  # the resident runner's pid when the call was handed to it
        lock=lock_name,
        done=sorted(done or ()),
        resumed_from=resumed_from,
        from_step=from_step,
        config=os.path.abspath(cfg.path) if cfg.path else None,
        overrides=overrides or {},
        **digests,  # what resume compares to know whether skipping done steps is safe
    )
    logger.event("started", f"args: {' '.join(repr(a) for a in argv)}")
    lock = RunLock(cfg.state_dir, lock_name)
    rt = Runtime(cfg, logger)
    result: RunResult | None = None
    try:
        timeout = workflow.lock_timeout or float(cfg.data.get("lock_timeout", 120))
        try:
            waited = lock.acquire(
                timeout,
                on_wait=lambda: logger.event(
                    "waiting", f"another run holds lock {lock_name!r}; waiting up to {timeout:g}s"
                ),
            )
        except LockTimeout as exc:
            logger.event("failed", str(exc))
            journal.write(
                "run_finished",
                status="lock-timeout",
                exit_code=EXIT_FAILED,
                message=str(exc),
                duration=round(time.time() - start, 3),
            )
            return EXIT_FAILED
        if waited > 0.2:
            logger.event("locked", f"got lock {lock_name!r} after waiting {waited:.1f}s")
        runner = Runner(workflow, r, results, rt, logger, journal, kinds, clock=clock, done=done)
        result = runner.run()
    except (Interrupted, KeyboardInterrupt) as exc:
        # a signal before the runner took over (waiting for the lock): say so in the journal too,
        # or the run would look like one killed half-way
        message = f"interrupted by {exc or 'a signal'} before any step ran; nothing was changed"
        logger.event("interrupted", message)
        journal.write(
            "run_finished",
            status="interrupted",
            exit_code=EXIT_FAILED,
            message=message,
            duration=round(time.time() - start, 3),
        )
        return EXIT_FAILED
    finally:
        rt.close()
        lock.release()
        if result is not None:
            duration = time.time() - start
            journal.write(
                "run_finished",
                status=result.status,
                exit_code=result.exit_code,
                message=result.message,
                failed_step=result.failed_step,
                duration=round(duration, 3),
            )
            logger.event(
                "finished",
                f"{result.status} exit={result.exit_code} in {duration:.2f}s: {result.message}",
                step="",
                attempt=0,
            )
        journal.close()
        render.save_code_cache()  # after the summary line: never delays what pgpool waits for
    return result.exit_code if result is not None else EXIT_FAILED
