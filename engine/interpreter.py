"""The runner loop: ask the conductor, run a step, record, repeat; roll back on failure.

Like doit, the loop is small and failures are values: a step attempt ends
as an :class:`~engine.steps.base.Outcome` (ok, failed, or errored), never as
an exception escaping into the loop.  Retries with backoff, ``until``
polling, per-attempt timeouts and the run deadline live here once, for every
step kind.  On failure the compensations of every started step run in
reverse order of completion, each with its own retry and timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.conductor import Conductor, Status
from engine.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_INCOMPLETE,
    Interrupted,
    NeedsRuntime,
    RenderError,
    StepFailure,
)
from engine.model import Step, Workflow
from engine.render import Renderer
from engine.steps.base import Action, Outcome

DEFAULT_TIMEOUT = 600.0  # a step without timeout and without a run deadline still ends


class Clock:
    """Wall time and sleeping, injectable so retry/backoff tests need no real waiting."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class StepRun:
    step: Step
    phase: str  # main | fallback | undo
    status: str = "pending"
    attempts: int = 0
    started: float = 0.0
    duration: float = 0.0
    action: Action | None = None
    outcome: Outcome | None = None
    message: str = ""


@dataclass
class RunResult:
    exit_code: int
    status: str  # succeeded | exited | failed | rolled-back | rollback-incomplete | interrupted
    message: str
    runs: list[StepRun] = field(default_factory=list)
    failed_step: str | None = None


class Runner:
    def __init__(
        self,
        workflow: Workflow,
        renderer: Renderer,
        results: dict[str, dict[str, Any]],
        runtime: Any,
        logger: Any,
        journal: Any,
        kinds: dict[str, Any],
        *,
        clock: Clock | None = None,
        done: set[str] | None = None,
    ):
        self.wf = workflow
        self.r = renderer
        self.results = results  # the same dict the renderer's `steps` view reads
        self.rt = runtime
        self.log = logger
        self.journal = journal
        self.kinds = kinds
        self.clock = clock or Clock()
        self.conductor = Conductor(workflow)
        self.completed: list[StepRun] = []  # started step runs, in order of completion
        self.runs: list[StepRun] = []
        self.done = done or set()
        self.start = self.clock.now()
        self.deadline_at = self.start + workflow.deadline if workflow.deadline else None

    # -- time ---------------------------------------------------------------
    def _remaining(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - self.clock.now()

    def _attempt_timeout(self, step: Step, phase: str) -> float:
        timeout = step.timeout or DEFAULT_TIMEOUT
        remaining = self._remaining()
        if remaining is not None and phase != "undo":
            timeout = min(timeout, max(remaining, 0.001))
        return timeout

    # -- one step -----------------------------------------------------------
    def _record(self, step: Step, data: dict[str, Any]) -> None:
        self.results[step.id] = data

    def execute(self, step: Step, phase: str = "main") -> StepRun:
        """Run one step (condition, attempts, until), recording its result; never raises but Interrupted."""
        run = StepRun(step=step, phase=phase, started=self.clock.now())
        self.runs.append(run)
        self.log.step, self.log.attempt = step.id, None
        r = self.r.for_step(step.id, step.file, step.line)
        try:
            if step.when is not None and not r.expr(step.when, "when"):
                run.status = "skipped"
                self._record(step, {"ok": False, "skipped": True, "status": "skipped"})
                self.log.event("skipped", f"when: {step.when} is false")
                self.journal.write("step", step=step.id, phase=phase, status="skipped", when=str(step.when))
                return run
            run.action = self.kinds[step.kind].plan(step.body, r)
        except (RenderError, StepFailure, NeedsRuntime) as exc:
            return self._finish(
                run, Outcome(ok=False, errored=not isinstance(exc, StepFailure), message=str(exc))
            )
        except Exception as exc:  # a bug in a kind's plan: a failed step (and a rollback), not a crash
            return self._finish(run, Outcome(ok=False, errored=True, message=f"{type(exc).__name__}: {exc}"))
        kind = self.kinds[step.kind]
        retry = step.retry
        outcome = Outcome(ok=False)
        self.log.event("started", run.action.summary)
        for attempt in range(1, retry.attempts + 1):
            run.attempts = attempt
            self.log.attempt = attempt
            if attempt > 1:
                wait = retry.delay_before(attempt)
                remaining = self._remaining()
                if phase != "undo" and remaining is not None and remaining <= wait:
                    outcome = Outcome(
                        ok=False, message=f"{outcome.message}; run deadline reached before retry"
                    )
                    break
                self.clock.sleep(wait)
            timeout = self._attempt_timeout(step, phase)
            t0 = self.clock.now()
            try:
                outcome = kind.apply(run.action, self.rt, timeout)
            except StepFailure as exc:
                outcome = Outcome(ok=False, data=exc.data, message=str(exc), timed_out=exc.timed_out)
            except (Interrupted, KeyboardInterrupt):
                run.duration = self.clock.now() - run.started
                run.status = "failed"
                run.message = "interrupted"
                self._record(step, {"ok": False, "status": "failed", "message": "interrupted"})
                self.completed.append(run)
                self.journal.write("step", step=step.id, phase=phase, status="interrupted", attempts=attempt)
                raise
            except Exception as exc:  # an unexpected error is an outcome too ("errored")
                outcome = Outcome(ok=False, errored=True, message=f"{type(exc).__name__}: {exc}")
            if outcome.ok and retry.until:
                try:
                    met = r.expr(retry.until, "retry.until", {"result": {**outcome.data, "ok": True}})
                except RenderError as exc:
                    outcome = Outcome(ok=False, errored=True, data=outcome.data, message=str(exc))
                    met = None
                if met is not None and not met:
                    outcome = Outcome(
                        ok=False,
                        data=outcome.data,
                        changed=outcome.changed,
                        message=f"until ({retry.until}) not yet true",
                    )
            state = "ok" if outcome.ok else ("errored" if outcome.errored else "failed")
            elapsed = self.clock.now() - t0
            self.log.event(state, f"{outcome.message} ({elapsed:.2f}s)".strip())
            self.journal.write(
                "attempt",
                step=step.id,
                phase=phase,
                attempt=attempt,
                outcome=state,
                message=outcome.message,
                duration=round(elapsed, 3),
                timed_out=outcome.timed_out,
            )
            if outcome.ok:
                break
        return self._finish(run, outcome)

    def _finish(self, run: StepRun, outcome: Outcome) -> StepRun:
        step = run.step
        run.outcome = outcome
        run.duration = self.clock.now() - run.started
        run.message = outcome.message
        run.status = "succeeded" if outcome.ok else "failed"
        data = {
            **outcome.data,
            "ok": outcome.ok,
            "status": run.status,
            "message": outcome.message,
            "attempts": run.attempts,
            "changed": outcome.changed or bool(outcome.data.get("changed")),
        }
        self._record(step, data)
        if run.action is not None:
            self.completed.append(run)
        if not outcome.ok and run.action is None:
            self.log.event("errored", outcome.message)
        self.journal.write(
            "step",
            step=step.id,
            phase=run.phase,
            status=run.status,
            attempts=run.attempts,
            duration=round(run.duration, 3),
            message=outcome.message,
            errored=outcome.errored,
            action=_action_record(run.action),
            result=_result_record(outcome.data),
        )
        return run

    # -- the loop -----------------------------------------------------------
    def run(self) -> RunResult:
        conductor = self.conductor
        failed: StepRun | None = None
        exited: tuple[int, str, bool] | None = None
        interrupted = False
        for sid in self.done:
            if sid in conductor.status:
                conductor.set(sid, Status.DONE)
        try:
            while True:
                ready = conductor.ready()
                if not ready:
                    break
                step = ready[0]
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    failed = StepRun(
                        step=step,
                        phase="main",
                        status="failed",
                        message=f"run deadline of {self.wf.deadline:g}s reached before this step",
                    )
                    self.log.event("failed", failed.message, step=step.id)
                    conductor.stop("deadline")
                    break
                conductor.set(step.id, Status.RUNNING)
                run = self.execute(step)
                if run.status == "skipped":
                    conductor.set(step.id, Status.SKIPPED)
                    continue
                if run.status == "succeeded":
                    conductor.set(step.id, Status.SUCCEEDED)
                    if run.action is not None and run.action.stop is not None:
                        d = run.action.stop
                        exited = (d["code"], d["message"], d["rollback"])
                        conductor.stop("exit")
                        break
                    continue
                # failed
                if step.on_error == "continue":
                    conductor.set(step.id, Status.CONTINUED)
                    self.log.event("continuing", "on_error: continue — the run goes on", step=step.id)
                    continue
                if step.on_error == "fallback" and self._fallbacks(step):
                    conductor.set(step.id, Status.RECOVERED)
                    continue
                conductor.set(step.id, Status.FAILED)
                failed = run
                conductor.stop("failed")
                break
        except (Interrupted, KeyboardInterrupt):
            interrupted = True
            conductor.stop("interrupted")
            self.log.event("interrupted", "signal received: stopping and rolling back", step="")
        return self._conclude(failed, exited, interrupted)

    def _fallbacks(self, step: Step) -> bool:
        for hid in step.fallbacks:
            handler = self.wf.handlers[hid]
            self.log.event("fallback", f"{step.id} failed: running handler {hid}", step=step.id)
            run = self.execute(handler, "fallback")
            if run.status == "skipped":
                self.log.event("fallback-skipped", f"handler {hid} did not apply", step=hid)
                return False
            if run.status != "succeeded":
                return False
        return True

    def _conclude(
        self, failed: StepRun | None, exited: tuple[int, str, bool] | None, interrupted: bool
    ) -> RunResult:
        if exited is not None:
            code, message, rollback = exited
            complete = self.rollback() if rollback else True
            self.log.event("exit", f"code {code}" + (f": {message}" if message else ""), step="")
            return RunResult(
                code if complete or code else EXIT_ROLLBACK_INCOMPLETE, "exited", message, self.runs
            )
        if failed is None and not interrupted:
            return RunResult(EXIT_OK, "succeeded", "all steps done", self.runs)
        name = failed.step.id if failed else None
        if failed is not None and failed.step.guard:
            msg = f"guard {name} failed: {failed.message}; nothing was changed, no rollback"
            self.log.event("failed", msg, step="")
            return RunResult(EXIT_FAILED, "failed", msg, self.runs, name)
        complete = self.rollback()
        what = "interrupted" if interrupted else f"step {name} failed: {failed.message if failed else ''}"
        if complete:
            return RunResult(
                EXIT_FAILED,
                "interrupted" if interrupted else "rolled-back",
                f"{what}; rolled back",
                self.runs,
                name,
            )
        return RunResult(
            EXIT_ROLLBACK_INCOMPLETE, "rollback-incomplete", f"{what}; rollback INCOMPLETE", self.runs, name
        )

    def rollback(self) -> bool:
        """Compensate every started step, newest first; True when every compensation succeeded."""
        todo = [
            run for run in reversed(self.completed) if run.phase != "undo" and self._has_compensation(run)
        ]
        if not todo:
            return True
        self.log.event("rollback", f"undoing {len(todo)} step(s)", step="")
        self.journal.write("rollback", steps=[r.step.id for r in todo])
        ok = True
        for run in todo:
            kind = self.kinds[run.step.kind]
            revert = getattr(kind, "revert", None)
            if (
                revert is not None
                and run.outcome is not None
                and run.outcome.changed
                and run.action is not None
                and run.action.details.get("revert", True)
            ):
                try:
                    res = revert(run.action, run.outcome, self.rt, run.step.timeout or DEFAULT_TIMEOUT)
                except Exception as exc:
                    res = Outcome(ok=False, message=f"{type(exc).__name__}: {exc}")
                self.log.event("reverted" if res.ok else "revert-failed", res.message, step=run.step.id)
                self.journal.write("revert", step=run.step.id, ok=res.ok, message=res.message)
                ok = ok and res.ok
            for hid in run.step.undo:
                handler = self.wf.handlers[hid]
                try:
                    undo = self.execute(handler, "undo")
                except (Interrupted, KeyboardInterrupt):
                    ok = False
                    continue
                if undo.status == "failed":
                    ok = False
                    self.log.event("undo-failed", f"undo {hid} of {run.step.id} failed; continuing", step=hid)
        return ok

    def _has_compensation(self, run: StepRun) -> bool:
        if run.step.undo:
            return True
        has_revert = getattr(self.kinds[run.step.kind], "revert", None) is not None
        return bool(
            has_revert
            and run.outcome
            and run.outcome.changed
            and run.action
            and run.action.details.get("revert", True)
        )


def _action_record(action: Action | None) -> dict[str, Any] | None:
    if action is None:
        return None
    return {
        "kind": action.kind,
        "target": action.target,
        "summary": action.summary,
        "text": action.text[:200],
    }


def _result_record(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "stdout_lines":
            continue
        if isinstance(value, str) and len(value) > 4000:
            value = value[:4000] + "…"
        if key == "rows" and isinstance(value, list) and len(value) > 50:
            value = value[:50]
        out[key] = value
    return out


__all__ = ["Runner", "RunResult", "StepRun", "Clock"]
