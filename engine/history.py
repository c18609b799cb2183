"""``pgpool-hook history`` and ``pgpool-hook show RUN_ID``: the journal, for people.

Everything comes from ``state_dir/journal.jsonl`` as the runs wrote it; secrets
were masked before they were written, and nothing here unmasks or adds values.
A run without ``run_finished`` is shown as *unfinished*: the process was killed
(``kill -9``, OOM killer, power loss) or is still running, and its rollback did
not run.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from engine import journal
from engine.errors import InvalidInput, Problem

# params that name the node a run was about, most specific first
NODE_ID_PARAMS = ("node_id", "failed_node_id", "target_node_id")
HOST_PARAMS = ("node_host", "failed_host", "target_host", "host")
ARGS_WIDTH = 48
ACTION_LINES = 12  # lines of rendered text per step in `show` (all with --full)
ATTEMPT_LINES = 3  # failed attempts listed per step (the last ones)


def _when(ts: float | None) -> str:
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _secs(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    if value < 60:
        return f"{value:.2f}s" if value < 10 else f"{value:.0f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s"


def _args(args: Any, width: int | None = ARGS_WIDTH) -> str:
    text = " ".join(shlex.quote(str(a)) for a in args or [])
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunSummary:
    run_id: str
    events: list[dict[str, Any]]
    started: dict[str, Any] = field(default_factory=dict)
    finished: dict[str, Any] | None = None

    @property
    def workflow(self) -> str:
        return str(self.started.get("workflow", "?"))

    @property
    def start_ts(self) -> float | None:
        ts = (self.started or self.events[0]).get("ts")
        return ts if isinstance(ts, int | float) else None

    @property
    def node(self) -> str:
        params = self.started.get("params") or {}
        node_id = next((params[k] for k in NODE_ID_PARAMS if params.get(k) not in (None, "")), None)
        host = next((params[k] for k in HOST_PARAMS if params.get(k) not in (None, "")), None)
        if node_id is not None and host is not None:
            return f"{node_id} ({host})"
        return str(node_id if node_id is not None else host if host is not None else "-")

    @property
    def outcome(self) -> str:
        if self.finished is None:
            return "unfinished"
        status = str(self.finished.get("status", "?"))
        if status == "exited":
            return f"exited {self.finished.get('exit_code', '?')}"
        return status

    @property
    def duration(self) -> str:
        if self.finished is not None:
            return _secs(self.finished.get("duration"))
        last = self.events[-1].get("ts")
        start = self.start_ts
        if isinstance(last, int | float) and start is not None:
            return "≥" + _secs(last - start)
        return "?"


def load(state_dir: str) -> list[RunSummary]:
    """Every run in the journal, oldest first."""
    out: list[RunSummary] = []
    try:
        grouped = journal.runs(state_dir)
    except OSError as exc:  # e.g. another user's journal, mode 0600
        where = os.path.join(state_dir, journal.FILE_NAME)
        raise InvalidInput(
            Problem(where, None, None, "", f"cannot read the journal: {exc.strerror or exc}"),
            hint="run as the user the hooks run as (pgpool's OS user, often postgres), e.g. "
            "`sudo -u postgres pgpool-hook history`",
        ) from None
    for run_id, events in grouped.items():
        summary = RunSummary(run_id, events)
        for ev in events:
            if ev.get("event") == "run_started" and not summary.started:
                summary.started = ev
            elif ev.get("event") == "run_finished":
                summary.finished = ev
        out.append(summary)
    return out


def find(state_dir: str, prefix: str) -> RunSummary:
    """The one run whose id starts with ``prefix``; InvalidInput (exit 2) otherwise."""
    where = os.path.join(state_dir, journal.FILE_NAME)
    runs = load(state_dir)
    exact = [r for r in runs if r.run_id == prefix]
    matches = exact or [r for r in runs if prefix and r.run_id.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if not runs:
            raise InvalidInput(
                Problem(where, None, None, "", f"no run {prefix!r}: the journal has no runs yet"),
                hint="runs are recorded in the state_dir of the config they ran with: pass the same --config",
            )
        raise InvalidInput(
            Problem(where, None, None, "", f"no run with id {prefix!r}"),
            hint="`pgpool-hook history` lists the recorded runs and their ids",
        )
    ids = ", ".join(r.run_id for r in matches[:5]) + (", …" if len(matches) > 5 else "")
    raise InvalidInput(
        Problem(where, None, None, "", f"{prefix!r} matches {len(matches)} runs ({ids})"),
        hint="give more characters of the run id",
    )


# -- history ------------------------------------------------------------------


def newest_first(state_dir: str, workflow: str | None = None) -> list[RunSummary]:
    runs = [r for r in load(state_dir) if workflow is None or r.workflow == workflow]
    # runs started in the same millisecond keep their journal order, reversed
    return [r for _, r in sorted(enumerate(runs), key=lambda p: (p[1].start_ts or 0.0, p[0]), reverse=True)]


def history_json(state_dir: str, limit: int = 20, workflow: str | None = None) -> list[str]:
    """One JSON object per run, newest first: for monitoring scripts."""
    import json

    runs = newest_first(state_dir, workflow)
    out = []
    for r in runs[:limit] if limit > 0 else runs:
        f = r.finished or {}
        record = {
            "run": r.run_id,
            "started": _when(r.start_ts).replace(" ", "T") if r.start_ts is not None else None,
            "workflow": r.workflow,
            "node": r.node,
            "args": r.started.get("args") or [],
            "outcome": r.outcome,
            "exit_code": f.get("exit_code"),
            "duration": f.get("duration"),
            "failed_step": f.get("failed_step"),
            "message": f.get("message"),
        }
        out.append(json.dumps(record, ensure_ascii=False))
    return out


def history(state_dir: str, limit: int = 20, workflow: str | None = None) -> list[str]:
    runs = newest_first(state_dir, workflow)
    where = os.path.join(state_dir, journal.FILE_NAME)
    if not runs:
        what = f"no runs of workflow {workflow!r}" if workflow else "no runs"
        return [f"{what} recorded in {where}"]
    shown = runs[:limit] if limit > 0 else runs
    header = ("STARTED (UTC)", "RUN", "WORKFLOW", "NODE", "ARGUMENTS", "OUTCOME", "DURATION")
    rows = [header] + [
        (
            _when(r.start_ts),
            r.run_id,
            r.workflow,
            r.node,
            _args(r.started.get("args")),
            r.outcome,
            r.duration,
        )
        for r in shown
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    lines = [line.rstrip() for line in lines]
    if len(runs) > len(shown):
        lines.append(f"({len(runs) - len(shown)} older run(s) not shown; use --limit)")
    return lines


# -- show -----------------------------------------------------------------------


def _result_summary(result: Any) -> str:
    if not isinstance(result, dict):
        return ""
    parts: list[str] = []
    if "rc" in result:
        parts.append(f"rc {result['rc']}")
    rows = result.get("rows")
    if isinstance(rows, list):
        parts.append(f"{len(rows)} row(s)" + (f", first {rows[0]}" if rows else ""))
    elif "rowcount" in result:
        parts.append(f"rowcount {result['rowcount']}")
    if "changed" in result:
        parts.append("changed" if result["changed"] else "unchanged")
    if result.get("removed"):
        parts.append(f"removed {result['removed']}")
    if result.get("sqlstate"):
        parts.append(f"sqlstate {result['sqlstate']}")
    if "code" in result and "rc" not in result:
        parts.append(f"exit code {result['code']}")
    return ", ".join(parts)


def _tail(text: Any, lines: int = 3) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return []
    return text.rstrip("\n").splitlines()[-lines:]


def _step_lines(ev: dict[str, Any], attempts: list[dict[str, Any]], n: str, full: bool) -> list[str]:
    status = str(ev.get("status", "?"))
    head = f"{n} {ev.get('step', '?')}"
    action = ev.get("action") or {}
    kind = action.get("kind")
    if kind:
        head += f" ({kind}" + (
            f" on {action['target']}" if action.get("target") not in (None, "local") else ""
        )
        head += ")"
    bits = [status.upper() if status in ("failed", "interrupted") else status]
    if ev.get("phase") not in (None, "main"):
        bits.insert(0, str(ev["phase"]))
    count = ev.get("attempts")
    if isinstance(count, int) and count:
        bits.append(f"{count} attempt{'s' if count != 1 else ''}")
    if "duration" in ev:
        bits.append(_secs(ev.get("duration")))
    lines = [f"{head}: {', '.join(bits)}"]
    pad = " " * (len(n) + 1)
    if status == "skipped":
        lines[0] += f" (when: {ev.get('when', '?')} was false)"
        return lines
    text = action.get("text") or ([action["summary"]] if action.get("summary") else [])
    limit = None if full else ACTION_LINES
    for line in text[:limit]:
        lines.append(f"{pad}| {line}")
    if limit is not None and len(text) > limit:
        lines.append(f"{pad}| … {len(text) - limit} more line(s) (--full shows them)")
    failed = [a for a in attempts if a.get("outcome") != "ok"]
    if len(attempts) > 1 and failed:
        skipped = len(failed) - ATTEMPT_LINES
        if skipped > 0:
            lines.append(f"{pad}… {skipped} earlier failed attempt(s)")
        for a in failed[-ATTEMPT_LINES:]:
            timed = " (timed out)" if a.get("timed_out") else ""
            lines.append(
                f"{pad}attempt {a.get('attempt')}: {a.get('outcome')}{timed} after "
                f"{_secs(a.get('duration'))}: {a.get('message', '')}"
            )
    summary = _result_summary(ev.get("result"))
    if summary:
        lines.append(f"{pad}result: {summary}")
    if status in ("failed", "interrupted"):
        message = ev.get("message") or ("interrupted by a signal" if status == "interrupted" else "")
        if message:
            lines.append(f"{pad}error: {message}")
        result = ev.get("result") or {}
        for line in _tail(result.get("stderr")):
            lines.append(f"{pad}stderr| {line}")
    return lines


def show(state_dir: str, prefix: str, full: bool = False) -> list[str]:
    run = find(state_dir, prefix)
    s = run.started
    out = [f"run {run.run_id}: {run.workflow}" + (f" ({s['path']})" if s.get("path") else "")]
    if not s:
        out.append("  (its run_started record is missing: the journal was cut)")
    meta = [f"started {_when(run.start_ts)}"]
    if s.get("pid"):
        meta.append(
            f"pid {s['pid']}" + (f" (worker of resident runner {s['runner']})" if s.get("runner") else "")
        )
    if s.get("lock"):
        meta.append(f"lock {s['lock']}")
    out.append("  " + ", ".join(meta))
    if s.get("resumed_from"):
        out.append(
            f"  resumed from run {s['resumed_from']}; already done: {', '.join(s.get('done') or []) or '-'}"
        )
    elif s.get("from_step"):
        out.append(
            f"  started at step {s['from_step']} (run --from); skipped: {', '.join(s.get('done') or []) or '-'}"
        )
    out.append(f"  arguments: {_args(s.get('args'), None) or '(none)'}")
    params = {k: v for k, v in (s.get("params") or {}).items() if not (k == "extra_args" and not v)}
    if params:
        out.append("  params: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
    out.append("")
    out.append("steps:")
    attempts: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    n = 0
    rolled_back = False
    for i, ev in enumerate(run.events):
        kind = ev.get("event")
        if kind == "attempt":
            attempts.setdefault((ev.get("step"), ev.get("phase")), []).append(ev)
        elif kind == "step":
            key = (ev.get("step"), ev.get("phase"))
            if ev.get("phase") == "main":
                n += 1
                label = f"  {n}."
            else:
                label = "     ↳" if not rolled_back else "    "
            out.extend(_step_lines(ev, attempts.pop(key, []), label, full))
            if ev.get("phase") == "main" and ev.get("status") == "failed":
                note = _went_on(run.events[i + 1 :], str(ev.get("step")), run.finished)
                if note:
                    out.append(" " * (len(label) + 1) + note)
        elif kind == "rollback":
            rolled_back = True
            out.append("")
            out.append(f"rollback, newest first: {', '.join(ev.get('steps') or [])}")
        elif kind == "revert":
            state = "restored" if ev.get("ok") else "RESTORE FAILED"
            out.append(f"     {ev.get('step')}: built-in {state}: {ev.get('message', '')}")
    out.append("")
    out.extend(_outcome_lines(run))
    return out


def _went_on(later: list[dict[str, Any]], step_id: str, finished: dict[str, Any] | None) -> str:
    """For a failed main step: how the run went on past it, judged from the events after it."""
    fallbacks: list[dict[str, Any]] = []
    went_on = False
    for ev in later:
        if ev.get("event") == "rollback":
            break
        if ev.get("event") == "step" and ev.get("phase") == "fallback":
            fallbacks.append(ev)
        elif ev.get("event") == "step" and ev.get("phase") == "main":
            went_on = True  # a later step ran: this failure did not stop the run
            break
    if not went_on and finished is not None:  # the last step: the end record tells
        went_on = finished.get("status") in ("succeeded", "exited") and finished.get("failed_step") != step_id
    if not went_on:
        return ""
    if fallbacks:
        names = ", ".join(str(f.get("step")) for f in fallbacks)
        return f"→ recovered by fallback {names}; the run went on"
    return "→ warn-only (on_error: continue); the run went on"


def _outcome_lines(run: RunSummary) -> list[str]:
    f = run.finished
    if f is None:
        pid = run.started.get("pid")
        alive = _pid_alive(pid) and pid != os.getpid()
        lines = [f"outcome: unfinished after {run.duration} (no run_finished record)"]
        if alive:
            lines.append(
                f"  process {pid} is still alive: the run may still be going; look again in a moment"
            )
        else:
            lines.append(
                "  the process is gone (kill -9, OOM killer, reboot?): no rollback ran. Check the steps "
                "above on the servers, and the node's state with pcp_node_info, before running it again."
            )
        return lines
    lines = [f"outcome: {run.outcome}, exit code {f.get('exit_code', '?')}, after {run.duration}"]
    if f.get("failed_step"):
        lines.append(f"  failed step: {f['failed_step']}")
    if f.get("message"):
        lines.append(f"  {f['message']}")
    if f.get("status") == "rollback-incomplete":
        lines.append(
            "  an undo failed: the servers may be half-changed; see the failed undo above and fix by hand"
        )
    return lines
