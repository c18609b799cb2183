"""Dry-run: what a run would do, from the same ``plan`` code the real run applies.

Nothing here connects or writes.  Each step is rendered for the given
arguments; a condition or value that needs an earlier step's result is shown
as depending on it rather than guessed.  With ``--diff`` (and a runtime),
files that already exist are read — only read — to show a unified diff.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any

from engine import preview
from engine.errors import NeedsRuntime, RenderError, StepFailure
from engine.model import Step, Workflow
from engine.render import Renderer


@dataclass
class PlannedStep:
    step: Step
    condition: str  # "always" | "true" | "false" | "depends on ..."
    lines: list[str] = field(default_factory=list)
    summary: str = ""
    changes: bool = False
    ends_run: bool = False
    error: str | None = None
    target: str | None = None  # where it would act (None: known at run time)
    unchanged: bool = False  # --diff found nothing to change


def _colour(enabled: bool) -> dict[str, str]:
    if not enabled:
        return {k: "" for k in ("bold", "dim", "green", "yellow", "red", "cyan", "reset")}
    return {
        "bold": "\033[1m",
        "dim": "\033[2m",
        "green": "\033[32m",
        "yellow": "\033[33m",
        "red": "\033[31m",
        "cyan": "\033[36m",
        "reset": "\033[0m",
    }


def plan_step(step: Step, r: Renderer, kinds: dict[str, Any], rt: Any = None) -> PlannedStep:
    r = r.for_step(step.id, step.file, step.line)
    condition = "always"
    if step.when is not None:
        try:
            condition = "true" if r.expr(step.when, "when") else "false"
        except NeedsRuntime as exc:
            condition = (
                f"depends on {exc.ref.split('.')[0]}.{exc.ref.split('.')[1]}" if "." in exc.ref else "depends"
            )
        except RenderError as exc:
            return PlannedStep(step, "error", error=str(exc))
    kind = kinds[step.kind]
    try:
        action = kind.plan(step.body, r)
    except NeedsRuntime as exc:
        return PlannedStep(
            step,
            condition,
            lines=[f"(rendered at run time: uses {exc.ref})"],
            summary="depends on a runtime result",
            changes=getattr(kind, "changes_state", True),
        )
    except (RenderError, StepFailure) as exc:
        return PlannedStep(step, condition, error=str(exc))
    lines = list(action.text)
    diff = getattr(kind, "diff", None) or preview.DIFFS.get(step.kind)
    unchanged = False
    if rt is not None and diff is not None:
        try:
            d = diff(action, rt)
            lines = [action.text[0]] + (d or ["(no change)"]) if d is not None else lines
            unchanged = d == []
        except Exception as exc:  # read-only look-up failed: say so, show the content instead
            lines.append(
                f"(diff unavailable: {type(exc).__name__}: {exc}; "
                "check that the host is reachable and the file readable, or leave out --diff)"
            )
    return PlannedStep(
        step,
        condition,
        lines=lines,
        summary=action.summary,
        changes=getattr(kind, "changes_state", True) and condition != "false",
        ends_run=action.stop is not None and condition in ("true", "always"),
        target=action.target,
        unchanged=unchanged,
    )


def dry_run(
    workflow: Workflow,
    r: Renderer,
    kinds: dict[str, Any],
    masker: Any,
    out: Any = None,
    colour: bool | None = None,
    rt: Any = None,
    params: dict[str, Any] | None = None,
) -> int:
    out = out or sys.stdout
    if colour is None:  # only on a terminal, and never with NO_COLOR (https://no-color.org)
        colour = hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")
    c = _colour(bool(colour))
    write = lambda text="": out.write(masker.text(text) + "\n")  # noqa: E731
    write(f"{c['bold']}dry-run of {workflow.name}{c['reset']} ({workflow.path}) — nothing is executed")
    if params:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "extra_args")
        write(f"{c['dim']}arguments: {shown}{c['reset']}")
    if workflow.deadline:
        write(f"{c['dim']}deadline: {workflow.deadline:g}s{c['reset']}")
    errors = 0
    would_run: list[tuple[str, str | None, bool]] = []
    ended = False
    for n, step in enumerate(workflow.steps, 1):
        planned = plan_step(step, r, kinds, rt)
        head = f"[{n}] {step.id} ({step.kind}"
        if planned.condition != "always":
            head += f", when {step.when!s} → {planned.condition}"
        head += ")"
        if ended:
            head += " — not reached: an earlier exit step ends the run"
        colour_key = "dim" if planned.condition == "false" or ended else "cyan"
        write()
        write(f"{c[colour_key]}{c['bold']}{head}{c['reset']}")
        if step.description:
            for part in textwrap.wrap(step.description, 96):
                write(f"    # {part}")
        if planned.error:
            errors += 1
            write(f"    {c['red']}error: {planned.error}{c['reset']}")
            continue
        for line in planned.lines:
            write(f"    {preview.colour_diff(line, c) if rt is not None else line}")
        extras = []
        if step.retry.attempts > 1:
            extras.append(
                f"retry {step.retry.attempts}x every {step.retry.delay:g}s"
                + (f" ×{step.retry.backoff:g}" if step.retry.backoff != 1 else "")
                + (f" until {step.retry.until}" if step.retry.until else "")
            )
        if step.timeout:
            extras.append(f"timeout {step.timeout:g}s")
        if step.on_error != "fail":
            extras.append(
                "on error: "
                + ("continue" if step.on_error == "continue" else "fallback " + ", ".join(step.fallbacks))
            )
        if step.undo:
            extras.append("undo: " + ", ".join(step.undo))
        if step.guard:
            extras.append("guard (no rollback if it fails)")
        if extras:
            write(f"    {c['dim']}{'; '.join(extras)}{c['reset']}")
        if planned.changes and not ended:
            would_run.append((step.kind, planned.target, planned.unchanged))
        if planned.ends_run and not ended:
            ended = True
    if workflow.handlers:
        write()
        write(f"{c['bold']}handlers (run only as undo or fallback){c['reset']}")
        for hid, step in workflow.handlers.items():
            planned = plan_step(step, r, kinds, rt)
            write(
                f"  {c['yellow']}{hid} ({step.kind}){c['reset']}"
                + (f" when {step.when} → {planned.condition}" if step.when is not None else "")
            )
            if planned.error:
                write(f"    {c['red']}error: {planned.error}{c['reset']}")
                errors += 1
            for line in planned.lines:
                write(f"    {line}")
    write()
    if errors:
        write(
            f"{c['red']}{errors} step(s) could not be rendered for these arguments; "
            f"check the arguments, or fix the workflow and run `pgpool-hook validate`{c['reset']}"
        )
        return 1
    write(f"{c['bold']}{preview.summary(would_run, ended)}{c['reset']}")
    return 0
