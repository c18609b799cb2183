"""Rehearsal: ``pgpool-hook test [CASES...]`` runs a workflow with pretend results.

A case file names a workflow, the arguments pgpool would pass, what each step
should pretend to return, and what must happen (the steps that run, in order,
and the exit code).  The run goes through :func:`engine.run.execute` — the same
context building, lock, journal, conditions, ``until`` polling, retries,
fallbacks and rollback as a real run — and every kind's real ``plan`` renders
the step.  Only ``apply`` is replaced: it returns the scripted result instead
of touching a server, a file or a process.  The clock is fake (retries do not
sleep, but the run deadline still counts the delays), and the lock and journal
go to a temporary folder that is removed afterwards.

Case format (see ``docs/rehearsal.md``)::

    workflow: follow_primary          # a name (looked up beside the case's tests/ folder) or a path
    args: ["1", "pg2", "5432", ...]   # exactly what pgpool passes
    set: {vars.basebackup_fallback: true}     # like --set
    results:                          # per step id; a list scripts successive attempts
      node_status: {rc: 0}
      create_slot: {row: {created: true}}
      rewind: {fail: "exit status 1: could not connect"}
    expect:
      steps: [node_status, checkpoint, create_slot, stop_node, rewind, drop_created_slot]
      exit: 1
      skipped: [skip_stopped_node]    # optional: steps whose `when` was false, in order
      reverted: []                    # optional: file/template changes put back on rollback
      attempts: {verify_streaming: 3} # optional
      status: rolled-back             # optional: the run's status in the journal
      rendered:                       # optional: part of what a step's plan() produced
        create_slot: {params: {slot: "127_0_0_13"}}

``expect.steps`` lists every step or handler that *started*, in order, once per
execution (retries do not repeat it); handlers run as fallback or undo are
included.  Steps whose ``when`` was false are not in it: list them under
``skipped`` to check them.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from engine import source
from engine.errors import EXIT_INVALID, InvalidInput, Problem, StepFailure
from engine.interpreter import Clock
from engine.steps.base import Action, Outcome
from engine.steps.local import command_result_data

_SCALAR = {"type": ["string", "number", "boolean", "null"]}

RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "A pretend result: rc/stdout/stderr (local, ssh), row/rows/rowcount (sql), "
    "data (any kind), changed, or fail/error to make the attempt fail.",
    "properties": {
        "rc": {"type": "integer"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "row": {"type": ["object", "null"]},
        "rows": {"type": "array", "items": {"type": "object"}},
        "rowcount": {"type": "integer"},
        "data": {"type": "object"},
        "changed": {"type": "boolean"},
        "fail": {"type": "string", "minLength": 1},
        "error": {"type": "string", "minLength": 1},
        "timed_out": {"type": "boolean"},
    },
}

CASE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://pgpool-hook.invalid/schema/case.json",
    "title": "pgpool-hook rehearsal case",
    "description": "A rehearsal case for `pgpool-hook test` (see docs/rehearsal.md).",
    "type": "object",
    "additionalProperties": False,
    "required": ["workflow", "args", "expect"],
    "properties": {
        "description": {"type": "string"},
        "workflow": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {"type": ["string", "integer"]}},
        "set": {"type": "object", "additionalProperties": _SCALAR},
        "results": {
            "type": "object",
            "additionalProperties": {
                "anyOf": [RESULT_SCHEMA, {"type": "array", "minItems": 1, "items": RESULT_SCHEMA}],
                "description": "a result, or a list of results for successive attempts",
            },
        },
        "expect": {
            "type": "object",
            "additionalProperties": False,
            "required": ["steps", "exit"],
            "properties": {
                "steps": {"type": "array", "items": {"type": "string"}},
                "exit": {"type": "integer", "minimum": 0, "maximum": 255},
                "skipped": {"type": "array", "items": {"type": "string"}},
                "reverted": {"type": "array", "items": {"type": "string"}},
                "attempts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                "status": {"type": "string"},
                "rendered": {"type": "object", "additionalProperties": {"type": "object"}},
            },
        },
    },
}


@dataclass
class Case:
    path: str
    workflow_path: str
    args: list[str]
    overrides: dict[str, Any]
    results: dict[str, list[dict[str, Any]]]
    expect: dict[str, Any]
    description: str = ""


@dataclass
class Actual:
    exit_code: int
    steps: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)  # built-in reverts on rollback, in order
    attempts: dict[str, int] = field(default_factory=dict)
    status: str = ""
    message: str = ""
    actions: dict[str, Action] = field(default_factory=dict)  # first applied action per step
    log: str = ""


class FakeClock(Clock):
    """Time moves only when the runner sleeps: retries are instant, deadlines still count."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0)


class Script:
    """The scripted results of one case; the last entry of a list repeats."""

    def __init__(self, results: dict[str, list[dict[str, Any]]]):
        self.results = results
        self.calls: dict[str, int] = {}
        self.actions: dict[str, Action] = {}

    def next(self, step_id: str, action: Action) -> dict[str, Any]:
        self.actions.setdefault(step_id, action)
        n = self.calls.get(step_id, 0)
        self.calls[step_id] = n + 1
        entries = self.results.get(step_id) or [{}]
        return entries[min(n, len(entries) - 1)]


class RehearsalKind:
    """A real kind's ``plan`` with a scripted ``apply``: renders for real, touches nothing."""

    def __init__(self, real: Any, script: Script):
        self.real = real
        self.name = real.name
        self.schema = real.schema
        self.script = script
        self._steps: dict[int, str] = {}  # id(action) -> step id: apply is not told the step
        if getattr(real, "revert", None) is not None:
            self.revert = self._revert

    def __getattr__(self, name: str) -> Any:  # what else the kind declares (changes_state, check...)
        if name.startswith("_") or name == "revert":
            raise AttributeError(name)
        return getattr(self.real, name)

    def plan(self, body: Any, r: Any) -> Action:
        action: Action = self.real.plan(body, r)
        self._steps[id(action)] = r.step
        return action

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        step_id = self._steps.get(id(action), "")
        spec = self.script.next(step_id, action)
        if getattr(self.real, "ends_run", False):  # exit is pure: it ends the run as it really would
            outcome: Outcome = self.real.apply(action, rt, timeout)
            return outcome
        if "error" in spec:
            raise RuntimeError(spec["error"])
        data: dict[str, Any] = {}
        if self.name in ("local", "ssh"):
            data = command_result_data(spec.get("rc", 0), spec.get("stdout", ""), spec.get("stderr", ""))
        elif self.name == "sql":
            rows = spec.get("rows")
            if rows is None:
                rows = [spec["row"]] if spec.get("row") is not None else []
            row = spec["row"] if "row" in spec else (rows[0] if rows else None)
            data = {"rows": rows, "row": row, "rowcount": spec.get("rowcount", len(rows))}
        changed = bool(spec.get("changed", False))
        if self.name in ("file", "template"):
            data["changed"] = changed
        data.update(spec.get("data") or {})
        if "fail" in spec:
            if "ok" in data:
                data["ok"] = False
            raise StepFailure(spec["fail"], data, timed_out=bool(spec.get("timed_out")))
        if self.name in ("local", "ssh") and data["rc"] not in action.details.get("ok_codes", [0]):
            data["ok"] = False
            last = (data["stderr"].strip() or data["stdout"].strip()).splitlines()[-1:] or [""]
            raise StepFailure(f"exit status {data['rc']}" + (f": {last[0]}" if last[0] else ""), data)
        return Outcome(ok=True, data=data, changed=changed, message="rehearsed")

    def _revert(self, action: Action, outcome: Outcome, rt: Any, timeout: float | None) -> Outcome:
        return Outcome(ok=True, message="rehearsed revert")


# ---- loading ----------------------------------------------------------------------------


def _problem(path: str, doc: Any, where: list[Any], message: str) -> Problem:
    pos = source.locate(doc, where) if doc is not None else None
    return Problem(path, pos[0] if pos else None, pos[1] if pos else None, source.path_text(where), message)


def _resolve_workflow(name: str, case_path: str, workflows_dir: str) -> str:
    """A path is relative to the case file; a name is looked up beside the case's folder first."""
    from engine import validate

    here = os.path.dirname(os.path.abspath(case_path))
    if os.sep in name or name.endswith((".yaml", ".yml")):
        return name if os.path.isabs(name) else os.path.join(here, name)
    for ext in (".yaml", ".yml"):
        candidate = os.path.join(os.path.dirname(here), name + ext)
        if os.path.exists(candidate):
            return candidate
    return validate.resolve_workflow_path(name, workflows_dir)


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_case(path: str, workflows_dir: str) -> tuple[Case, Any]:
    """Read and check one case file (and its workflow); raise InvalidInput with every problem."""
    from engine import validate

    doc, problems = source.load_file(path)
    if not problems and not isinstance(doc, dict):
        problems.append(Problem(path, 1, 1, "", "a rehearsal case must be a YAML mapping"))
    if not problems:
        problems = validate.schema_problems(CASE_SCHEMA, doc, doc, path)
    if problems:
        raise InvalidInput(problems, hint="see docs/rehearsal.md for the case format")
    try:
        wf_path = _resolve_workflow(doc["workflow"], path, workflows_dir)
    except InvalidInput as exc:
        raise InvalidInput(_problem(path, doc, ["workflow"], exc.problems[0].message)) from None
    if not os.path.exists(wf_path):
        raise InvalidInput(_problem(path, doc, ["workflow"], f"workflow file {wf_path} not found"))
    try:
        workflow = validate.load_workflow(wf_path)
    except InvalidInput as exc:
        raise InvalidInput(
            [_problem(path, doc, ["workflow"], f"workflow {wf_path} is not valid"), *exc.problems]
        ) from None
    ids = [s.id for s in workflow.all_steps()]
    from engine.steps import KINDS

    exits = {s.id for s in workflow.all_steps() if getattr(KINDS[s.kind], "ends_run", False)}

    def unknown(where: list[Any], sid: str) -> None:
        hint = difflib.get_close_matches(sid, ids, n=1, cutoff=0.6)
        problems.append(
            _problem(
                path,
                doc,
                where,
                f"{workflow.name} has no step {sid!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; steps: {', '.join(ids)}"),
            )
        )

    results: dict[str, list[dict[str, Any]]] = {}
    for sid, spec in (doc.get("results") or {}).items():
        if sid not in ids:
            unknown(["results", sid], sid)
            continue
        if sid in exits:
            problems.append(_problem(path, doc, ["results", sid], "an exit step cannot be given a result"))
        entries = list(spec) if isinstance(spec, list) else [spec]
        for i, entry in enumerate(entries):
            if "fail" in entry and "error" in entry:
                where = ["results", sid] + ([i] if isinstance(spec, list) else [])
                problems.append(_problem(path, doc, where, "give `fail` or `error`, not both"))
        results[sid] = [source.plain(e) for e in entries]
    expect = doc["expect"]
    for key in ("steps", "skipped", "reverted"):
        for i, sid in enumerate(expect.get(key) or []):
            if sid not in ids:
                unknown(["expect", key, i], sid)
    for key in ("attempts", "rendered"):
        for sid in expect.get(key) or {}:
            if sid not in ids:
                unknown(["expect", key, sid], sid)
    if problems:
        raise InvalidInput(problems, hint="see docs/rehearsal.md for the case format")
    case = Case(
        path=path,
        workflow_path=wf_path,
        args=[str(a) for a in doc["args"]],
        overrides=_nested(source.plain(doc.get("set") or {})),
        results=results,
        expect=source.plain(expect),
        description=" ".join(str(doc.get("description", "")).split()),
    )
    return case, doc


# ---- running ----------------------------------------------------------------------------


def run_case(case: Case, config_path: str | None, doc: Any = None) -> Actual:
    """One rehearsal: the real interpreter and plans, scripted applies, a throwaway state dir."""
    from engine import config as config_mod
    from engine import context, journal, validate
    from engine.masking import Masker
    from engine.run import execute
    from engine.steps import KINDS

    try:
        cfg = config_mod.load(config_path, case.overrides or None)
    except InvalidInput as exc:
        if not case.overrides:
            raise
        raise InvalidInput(
            [
                _problem(case.path, doc, ["set", p.path] if p.path else ["set"], p.message)
                for p in exc.problems
            ]
        ) from None
    workflow = validate.load_workflow(case.workflow_path)
    try:
        params = context.bind_params(workflow, case.args)
    except InvalidInput as exc:
        return Actual(exit_code=EXIT_INVALID, status="invalid", message=exc.render())
    script = Script(case.results)
    kinds = {name: RehearsalKind(real, script) for name, real in KINDS.items()}
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="pgpool-hook-rehearsal-") as tmp:
        cfg = dataclasses.replace(cfg, data={**cfg.data, "state_dir": tmp})
        code = execute(
            workflow,
            cfg,
            params,
            Masker(cfg.mask_values()),
            "rehearsal",
            list(case.args),
            kinds=kinds,
            clock=FakeClock(),
            stream=log,
        )
        events = list(journal.read_events(tmp))
    actual = Actual(exit_code=code, actions=dict(script.actions), log=log.getvalue())
    for ev in events:
        if ev.get("event") == "step":
            sid = str(ev.get("step"))
            if ev.get("status") == "skipped":
                actual.skipped.append(sid)
            else:
                actual.steps.append(sid)
                actual.attempts[sid] = int(ev.get("attempts") or 0)
        elif ev.get("event") == "revert":
            actual.reverted.append(str(ev.get("step")))
        elif ev.get("event") == "run_finished":
            actual.status = str(ev.get("status") or "")
            actual.message = str(ev.get("message") or "")
    if not events:  # e.g. a var that cannot render: execute logged it and returned 2
        actual.status = "invalid"
        actual.message = actual.log.strip()
    return actual


def _sequence_diff(expected: list[str], actual: list[str]) -> list[str]:
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=expected, b=actual, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            out += [f"    {s}" for s in expected[a0:a1]]
            continue
        out += [f"  - {s}" for s in expected[a0:a1]]
        out += [f"  + {s}" for s in actual[b0:b1]]
    return out


def _matches(want: Any, got: Any) -> bool:
    if isinstance(want, dict) and set(want) == {"contains"} and isinstance(want["contains"], str):
        text = got if isinstance(got, str) else " ".join(map(str, got)) if isinstance(got, list) else None
        return text is not None and want["contains"] in text
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _matches(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(_matches, want, got))
    if isinstance(got, bool) or isinstance(want, bool):
        return want is got
    return bool(want == got)


def compare(case: Case, actual: Actual) -> list[str]:
    """Lines that describe every difference between what the case expects and what happened."""
    exp = case.expect
    out: list[str] = []
    if exp["steps"] != actual.steps:
        out.append("steps differ (- expected, + actual):")
        out += _sequence_diff(exp["steps"], actual.steps)
    if exp["exit"] != actual.exit_code:
        out.append(f"exit code: expected {exp['exit']}, got {actual.exit_code}")
    if "skipped" in exp and exp["skipped"] != actual.skipped:
        out.append("skipped steps differ (- expected, + actual):")
        out += _sequence_diff(exp["skipped"], actual.skipped)
    if "reverted" in exp and exp["reverted"] != actual.reverted:
        out.append("reverted steps differ (- expected, + actual):")
        out += _sequence_diff(exp["reverted"], actual.reverted)
    for sid, n in (exp.get("attempts") or {}).items():
        got = actual.attempts.get(sid, 0)
        if got != n:
            out.append(f"attempts of {sid}: expected {n}, got {got}")
    if "status" in exp and exp["status"] != actual.status:
        out.append(f"run status: expected {exp['status']!r}, got {actual.status!r}")
    for sid, want in (exp.get("rendered") or {}).items():
        action = actual.actions.get(sid)
        if action is None:
            out.append(f"rendered {sid}: the step was never applied, so nothing was rendered")
            continue
        fields = {**action.details, "summary": action.summary, "target": action.target}
        for key, value in want.items():
            if key not in fields:
                out.append(f"rendered {sid}.{key}: no such field; fields: {', '.join(sorted(fields))}")
            elif not _matches(value, fields[key]):
                out.append(f"rendered {sid}.{key}: expected {value!r}, got {fields[key]!r}")
    if out and actual.message:
        out.append(f"run ended: {actual.status} exit={actual.exit_code}: {actual.message}")
    return out


# ---- the command ------------------------------------------------------------------------


def find_cases(targets: list[str], workflows_dir: str) -> list[str]:
    """Case files named on the command line (files or folders), or every case in workflows_dir/tests."""
    if not targets:
        targets = [os.path.join(workflows_dir, "tests")]
    files: list[str] = []
    for target in targets:
        if os.path.isdir(target):
            files += sorted(
                os.path.join(target, f) for f in os.listdir(target) if f.endswith((".yaml", ".yml"))
            )
        else:
            files.append(target)
    return files


def main(targets: list[str], config_path: str | None, verbose: bool = False, out: Any = None) -> int:
    """Run every case; one line each; exit 0 all passed, 1 some failed, 2 some case invalid."""
    import sys

    from engine import config as config_mod

    out = out or sys.stdout
    cfg = config_mod.load(config_path)
    files = find_cases(targets, cfg.workflows_dir)
    if not files:
        where = ", ".join(targets) if targets else os.path.join(cfg.workflows_dir, "tests")
        raise InvalidInput(f"no rehearsal cases (*.yaml) in {where}")
    passed = failed = invalid = 0
    for path in files:
        shown = source.display_path(path)
        try:
            case, doc = load_case(path, cfg.workflows_dir)
            actual = run_case(case, config_path, doc)
        except InvalidInput as exc:
            invalid += 1
            print(f"INVALID {shown}", file=out)
            print(exc.render(), file=sys.stderr)
            continue
        diff = compare(case, actual)
        if diff:
            failed += 1
            print(f"FAIL  {shown}", file=out)
            for line in diff:
                print(f"      {line}", file=out)
        else:
            passed += 1
            n = len(actual.steps)
            print(f"ok    {shown} ({n} step{'' if n == 1 else 's'}, exit {actual.exit_code})", file=out)
        if verbose:
            for line in actual.log.splitlines():
                print(f"      | {line}", file=out)
    total = passed + failed + invalid
    summary = f"{total} case(s): {passed} ok, {failed} failed" + (f", {invalid} invalid" if invalid else "")
    print(summary, file=out)
    if invalid:
        print("fix the invalid case files (errors above) and run the rehearsal again", file=sys.stderr)
        return EXIT_INVALID
    return 1 if failed else 0
