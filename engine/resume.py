"""``pgpool-hook resume RUN_ID`` and ``pgpool-hook run --from STEP``: start part-way, safely.

Both hand the runner a set of steps to treat as already done; the conductor
marks them ``done-before`` and starts the first step that is not.  What makes
that safe is deciding *which* steps may be skipped:

resume
    A step is done when it succeeded in the failed run and the run's rollback
    did not compensate it (a step whose undo ran, e.g. a dropped slot, runs
    again).  Its recorded result (from the journal, secrets masked) is put back
    in ``steps.<id>``.  Every ``run_started`` record carries a digest of each
    step's definition, so resume refuses when a step it would skip changed,
    was removed or renamed, when the order of the done steps changed, or when a
    new step comes before a done one: the new definition would never run, and
    the steps after it would build on what the old one did.  Changes in steps
    that will run again are fine.  An ``exit`` step is never done: it decides
    again, so resume never runs past a deliberate exit.

run --from STEP
    The steps before STEP — its ancestors in the ``needs`` graph, and the steps
    above it in the file that do not depend on it — are treated as done, with no
    result.  A step that would then read ``steps.X`` of a skipped step is
    refused *before anything runs*, naming both steps.  Failing at start is the
    safer of the two choices: the alternative, failing when the expression is
    rendered, would stop the run half-way, after earlier steps changed servers.

Limit: if a resumed run fails, its rollback undoes the steps it ran itself;
steps done in the earlier run are not undone again (after a rolled-back run
those with an undo were compensated and run again anyway; after a killed run
resume says which undos will not run).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidInput, Problem
from engine.model import Step, Workflow

# fields of a step that do not change what it does
_COSMETIC = ("file", "line", "description")


def step_digest(step: Step) -> str:
    """Digest of a step's definition as normalised JSON (kind, body, when, needs, retry, ...)."""
    data = {k: v for k, v in dataclasses.asdict(step).items() if k not in _COSMETIC}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(workflow: Workflow) -> dict[str, Any]:
    """What ``run_started`` records so a later resume can tell whether the workflow changed."""
    try:
        with open(workflow.path, "rb") as fh:
            whole: str | None = hashlib.sha256(fh.read()).hexdigest()[:16]
    except OSError:
        whole = None
    return {
        "workflow_digest": whole,
        "step_digests": {s.id: step_digest(s) for s in workflow.steps},
        "handler_digests": {h.id: step_digest(h) for h in workflow.handlers.values()},
    }


@dataclass
class Start:
    """Where a run starts: the steps done before it, their results, and what to tell the operator."""

    done: set[str]
    restored: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    first: str | None = None


# ---- which steps read which results -------------------------------------------------------


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def reads(step: Step, workflow: Workflow) -> set[str]:
    """Step ids whose results ``step`` reads (``steps.X``), in its condition, polling or body."""
    from engine import render
    from engine.steps import KINDS

    found: set[str] = set()

    def scan(text: str, expression: bool) -> None:
        try:
            found.update(render.undeclared(render.strip_braces(text) if expression else text, expression)[1])
        except Exception:  # validated already; never let the analysis itself fail a run
            pass

    if isinstance(step.when, str):
        scan(step.when, True)
    if step.retry.until:
        scan(step.retry.until, True)
    for text in _strings(step.body):
        if render.is_template(text):
            scan(text, False)
    sources = getattr(KINDS.get(step.kind), "template_sources", None)
    if sources is not None:
        for _, text, _ in sources(step.body, workflow.directory):
            if text is not None:
                scan(text, False)
    found.discard(step.id)
    return found


def _check_reads(workflow: Workflow, start: Start, why: str) -> None:
    """Refuse when a step or handler that may run reads the result of a done step that has none."""
    missing = start.done - set(start.restored)
    if not missing:
        return
    to_run = [s for s in workflow.steps if s.id not in start.done]
    handlers: list[Step] = []
    for s in to_run:
        for hid in (*s.undo, *s.fallbacks):
            if hid in workflow.handlers and workflow.handlers[hid] not in handlers:
                handlers.append(workflow.handlers[hid])
    problems = []
    for s in to_run + handlers:
        for sid in sorted(reads(s, workflow) & missing):
            what = "handler" if s.handler else "step"
            problems.append(
                Problem(
                    s.file,
                    s.line,
                    None,
                    s.id,
                    f"{what} {s.id} reads steps.{sid}, but {why} skips {sid}, so it has no result; "
                    f"start at {sid} or earlier",
                )
            )
    if problems:
        raise InvalidInput(problems, hint="nothing was run")


# ---- run --from STEP ----------------------------------------------------------------------


def _closure(start: str, edges: dict[str, tuple[str, ...]]) -> set[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            todo.extend(edges.get(sid, ()))
    return seen


def from_step(workflow: Workflow, step_id: str) -> Start:
    """The steps ``run --from step_id`` treats as done (see the module docstring)."""
    ids = [s.id for s in workflow.steps]
    if step_id not in ids:
        if step_id in workflow.handlers:
            msg = f"{step_id!r} is a handler (it runs only as an undo or fallback); --from takes a step"
        else:
            hint = difflib.get_close_matches(step_id, ids, n=1, cutoff=0.6)
            msg = f"{workflow.name} has no step {step_id!r}" + (
                f" (did you mean {hint[0]!r}?)" if hint else f"; its steps: {', '.join(ids)}"
            )
        raise InvalidInput(Problem("--from", None, None, "", msg), hint="nothing was run")
    needs = {s.id: s.needs for s in workflow.steps}
    needed_by: dict[str, tuple[str, ...]] = {}
    for s in workflow.steps:
        for dep in s.needs:
            needed_by[dep] = needed_by.get(dep, ()) + (s.id,)
    after = _closure(step_id, needed_by)  # steps that depend on step_id
    done = _closure(step_id, needs)
    done |= {sid for sid in ids[: ids.index(step_id)] if sid not in after}
    # a done step must not need a step that still has to run
    changed = True
    while changed:
        changed = False
        for sid in sorted(done):
            if any(dep not in done for dep in needs[sid]):
                done.discard(sid)
                changed = True
    start = Start(done=done, first=step_id)
    _check_reads(workflow, start, f"--from {step_id}")
    if done:
        start.notes.append(
            f"--from {step_id}: treating as done without running: {', '.join(_ordered(workflow, done))}"
        )
    return start


def _ordered(workflow: Workflow, ids: set[str]) -> list[str]:
    return [s.id for s in workflow.steps if s.id in ids]


# ---- resume RUN_ID ------------------------------------------------------------------------


def _restore(ev: dict[str, Any]) -> dict[str, Any]:
    """``steps.<id>`` as the runner recorded it, rebuilt from a journal step event."""
    result = dict(ev.get("result") or {})
    if isinstance(result.get("stdout"), str):
        result.setdefault("stdout_lines", result["stdout"].splitlines())
    return {
        **result,
        "ok": True,
        "status": "succeeded",
        "message": ev.get("message", ""),
        "attempts": ev.get("attempts", 1),
        "changed": bool(result.get("changed")),
    }


def _refuse(run_id: str, message: str, hint: str) -> InvalidInput:
    return InvalidInput(Problem(f"run {run_id}", None, None, "", message), hint=hint)


def plan_resume(state_dir: str, run_id: str, workflow: Workflow, run: Any) -> Start:
    """Done steps, restored results and notes for resuming ``run`` with today's ``workflow``.

    ``run`` is the :class:`engine.history.RunSummary` of the run to resume.
    """
    from engine import history
    from engine.steps import KINDS

    started = run.started or {}
    rid = run.run_id
    events = [e for e in run.events if e.get("run") == rid]
    rolled_back: set[str] = set()
    for ev in events:
        if ev.get("event") == "rollback":
            rolled_back.update(ev.get("steps") or [])
    succeeded = {
        str(ev["step"]): ev
        for ev in events
        if ev.get("event") == "step" and ev.get("phase") == "main" and ev.get("status") == "succeeded"
    }
    earlier_done = set(started.get("done") or [])
    # an exit step that ended the run on purpose decides again: resume must not run past it
    exits = {s.id for s in workflow.steps if getattr(KINDS.get(s.kind), "ends_run", False)}
    done = (earlier_done | set(succeeded)) - rolled_back - exits
    start = Start(done=set(done))
    # results of steps done in earlier runs of the chain (resume of a resume)
    chain: list[Any] = []
    seen = {rid}
    prev = started.get("resumed_from")
    while prev and prev not in seen:
        seen.add(prev)
        try:
            earlier = history.find(state_dir, str(prev))
        except InvalidInput:
            start.notes.append(f"run {prev} (resumed by {rid}) is no longer in the journal")
            break
        chain.append(earlier)
        prev = (earlier.started or {}).get("resumed_from")
    for earlier in reversed(chain):
        for ev in earlier.events:
            if ev.get("event") == "step" and ev.get("phase") == "main" and ev.get("status") == "succeeded":
                if ev["step"] in done:
                    start.restored[str(ev["step"])] = _restore(ev)
    for sid, ev in succeeded.items():
        if sid in done:
            start.restored[sid] = _restore(ev)
    if rolled_back:
        again = _ordered(workflow, rolled_back) or sorted(rolled_back)
        start.notes.append(f"run again because the rollback of run {rid} undid them: {', '.join(again)}")
    if run.finished is None:
        pending = [
            sid
            for sid in _ordered(workflow, set(succeeded) & done)
            if workflow.step(sid).undo or getattr(KINDS[workflow.step(sid).kind], "revert", None)
        ]
        if pending:
            start.notes.append(
                f"run {rid} ended without a rollback; if this run fails, the undo of "
                f"{', '.join(pending)} (done by run {rid}) will not run"
            )
    _check_changes(workflow, start, started, rid)
    _check_reads(workflow, start, f"resuming run {rid}")
    remaining = [s.id for s in workflow.steps if s.id not in start.done]
    start.first = remaining[0] if remaining else None
    return start


def _check_changes(workflow: Workflow, start: Start, started: dict[str, Any], rid: str) -> None:
    old: dict[str, str] | None = started.get("step_digests")
    hint = f"start a new run instead (`pgpool-hook run {workflow.name} ...`), or undo the edit"
    if not isinstance(old, dict):
        raise _refuse(
            rid,
            f"run {rid} did not record step digests (an older pgpool-hook), so it is unknown "
            "whether the workflow changed since",
            hint,
        )
    now = fingerprint(workflow)
    if now["workflow_digest"] is not None and now["workflow_digest"] == started.get("workflow_digest"):
        start.notes.append(f"workflow unchanged since run {rid}")
        return
    current: dict[str, str] = now["step_digests"]
    problems: list[str] = []
    for sid in [s for s in old if s in start.done]:
        if sid not in current:
            problems.append(
                f"step {sid} was done in run {rid} but is no longer in the workflow (removed or renamed): "
                "the steps after it were written for a workflow where it ran"
            )
        elif current[sid] != old[sid]:
            problems.append(
                f"step {sid} changed since run {rid} (its definition, or its `needs`: by default the step "
                "above it): it would be skipped as already done, so the change would never take effect "
                "while the steps after it rely on what it did"
            )
    old_order = [s for s in old if s in start.done and s in current]
    new_order = [s for s in current if s in start.done and s in old]
    order = list(current)
    last_done = max((order.index(s) for s in start.done if s in current), default=-1)
    for sid in order[: last_done + 1]:
        if sid not in old:
            later = [d for d in order[order.index(sid) + 1 :] if d in start.done]
            problems.append(
                f"step {sid} is new since run {rid} and comes before {', '.join(later)}, done in that run: "
                "it would now run after them, not before as the workflow says"
            )
    if old_order != new_order:
        problems.append(
            f"the order of the steps done in run {rid} changed ({', '.join(old_order)} -> "
            f"{', '.join(new_order)}): what ran first is no longer what the workflow says"
        )
    if problems:
        raise InvalidInput([Problem(workflow.path, None, None, "", m) for m in problems], hint=hint)
    changed = sorted(
        {s for s in current if s not in old or current[s] != old[s]} | {s for s in old if s not in current}
    )
    start.notes.append(
        f"workflow changed since run {rid} only in steps that run again ({', '.join(changed) or 'handlers'}): "
        "safe to resume"
    )


def resume(opts: Any) -> int:
    """The ``resume`` command: refuse, or re-run the failed run from the step that failed."""
    import sys
    import uuid

    from engine import config as config_mod
    from engine import context, history, validate
    from engine.lock import LockTimeout, RunLock
    from engine.log import Logger
    from engine.masking import MASK, Masker
    from engine.run import execute

    base = config_mod.load(opts.config)
    run = history.find(base.state_dir, opts.run_id)
    rid = run.run_id
    started = run.started
    if not started:
        raise _refuse(rid, f"run {rid} has no run_started record (the journal was cut)", "start a new run")
    finished = run.finished
    if finished is not None and finished.get("exit_code") == 0:
        raise _refuse(
            rid,
            f"run {rid} ended with exit 0 ({finished.get('status')}): there is nothing to resume",
            "`pgpool-hook history` lists runs; resume one that failed",
        )
    if finished is None:
        lock = RunLock(base.state_dir, str(started.get("lock") or started.get("workflow")))
        try:
            lock.acquire(0)
        except LockTimeout:
            raise _refuse(
                rid,
                f"run {rid} is still running (pid {started.get('pid')} holds lock {started.get('lock')!r})",
                "wait for it to finish, then check `pgpool-hook show " + rid + "`",
            ) from None
        lock.release()
    path = str(started.get("path") or "")
    if not os.path.exists(path):
        raise _refuse(rid, f"the workflow of run {rid}, {path}, no longer exists", "start a new run")
    recorded = dict(started.get("overrides") or {})
    given = config_mod.parse_set(opts.set)
    overrides = config_mod._merge(recorded, given) if given else recorded
    if MASK in json.dumps(overrides):
        raise _refuse(
            rid,
            f"run {rid} was started with --set values that are secrets (masked in the journal)",
            "give them again: pgpool-hook resume --set KEY=VALUE " + rid,
        )
    cfg = config_mod.load(opts.config, overrides or None, remember=True)
    if started.get("config") and started.get("config") != (os.path.abspath(cfg.path) if cfg.path else None):
        print(
            f"note: run {rid} used config {started.get('config')}; this run uses {cfg.path or 'the defaults'}",
            file=sys.stderr,
        )
    workflow = validate.load_workflow(path, cache_dir=os.path.join(cfg.state_dir, "cache"))
    start = plan_resume(cfg.state_dir, rid, workflow, run)
    args = [str(a) for a in started.get("args") or []]
    params = context.bind_params(workflow, args)
    masker = Masker(cfg.mask_values())
    new_id = uuid.uuid4().hex[:12]
    log = Logger(workflow.name, new_id, masker)
    log.event("resuming", f"run {rid} from step {start.first or '(none left)'}")
    for note in start.notes:
        log.event("resuming", note)
    return execute(
        workflow,
        cfg,
        params,
        masker,
        new_id,
        args,
        done=start.done,
        restored=start.restored,
        resumed_from=rid,
        overrides=overrides,
    )
