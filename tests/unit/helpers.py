"""Fakes and small helpers for the unit tests: no servers, no network, no real waiting."""

from __future__ import annotations

import copy
import io
import textwrap
from typing import Any

from engine import context, source, validate
from engine.config import DEFAULTS, Config
from engine.errors import InvalidInput, Problem, StepFailure
from engine.interpreter import Clock, Runner
from engine.log import Logger
from engine.masking import Masker
from engine.model import Workflow
from engine.steps import KINDS
from engine.steps.base import Action, Outcome


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems_of(path: str) -> list[Problem]:
    """Every problem validation reports for a workflow file (empty when it is valid)."""
    try:
        validate.load_workflow(path)
    except InvalidInput as exc:
        return exc.problems
    return []


def make_config(**data: Any) -> Config:
    merged = copy.deepcopy(DEFAULTS)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return Config(data=merged, path=None)


class FakeClock(Clock):
    """Time that only moves when someone sleeps or a fake step says it took a while."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class FakeKind:
    """A step kind that does nothing but record calls and replay a script.

    ``local: [name, ...]`` steps are planned as an action called ``name``; each call
    of ``apply`` for ``name`` takes the next scripted result: ``"ok"``, ``"fail"``,
    ``"error"`` (an unexpected exception), ``"timeout"``, a dict (ok, with that data)
    or ``(result, seconds)`` to let the fake clock advance while it "runs".
    When the script is used up the step succeeds.
    """

    name = "local"
    schema = KINDS["local"].schema

    def __init__(self, clock: FakeClock, script: dict[str, list[Any]] | None = None):
        self.clock = clock
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls: list[str] = []
        self.timeouts: list[float | None] = []
        self.plans: list[str] = []

    def plan(self, body: Any, r: Any) -> Action:
        words = r.argv([str(x) for x in body]) if isinstance(body, list) else [r.text(body, "command")]
        self.plans.append(words[0])
        if words[0] == "crash":  # a bug in a kind's plan
            raise KeyError("oops")
        return Action(kind="local", target="local", summary=" ".join(words), details={"name": words[0]})

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        name = action.details["name"]
        self.calls.append(name)
        self.timeouts.append(timeout)
        queue = self.script.get(name) or []
        result = queue.pop(0) if queue else "ok"
        if isinstance(result, tuple):
            result, seconds = result
            self.clock.t += seconds
        if result == "ok":
            return Outcome(ok=True, data={"rc": 0}, message="done")
        if result == "fail":
            raise StepFailure("exit status 1", {"rc": 1})
        if result == "timeout":
            raise StepFailure("timed out", {"rc": -1}, timed_out=True)
        if result == "error":
            raise RuntimeError("boom")
        if isinstance(result, dict):
            return Outcome(ok=True, data=result, message="done")
        raise AssertionError(f"bad script entry {result!r}")


class JournalRecorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def write(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


class Harness:
    """One workflow wired to a FakeKind, a FakeClock, a log buffer and a journal recorder."""

    def __init__(
        self,
        path: str,
        script: dict[str, list[Any]] | None = None,
        args: list[str] | None = None,
        config: Config | None = None,
    ):
        self.workflow: Workflow = validate.load_workflow(path)
        self.clock = FakeClock()
        self.kind = FakeKind(self.clock, script)
        self.kinds = {**KINDS, "local": self.kind}
        self.log_stream = io.StringIO()
        self.journal = JournalRecorder()
        self.results: dict[str, dict[str, Any]] = {}
        cfg = config or make_config()
        params = context.bind_params(self.workflow, list(args or []))
        _, renderer = context.build(
            self.workflow, cfg, params, dry_run=False, results=self.results, run_id="t"
        )
        logger = Logger(self.workflow.name, "t", Masker(cfg.mask_values()), stream=self.log_stream)
        self.runner = Runner(
            self.workflow, renderer, self.results, None, logger, self.journal, self.kinds, clock=self.clock
        )

    def run(self) -> Any:
        return self.runner.run()

    @property
    def log(self) -> str:
        return self.log_stream.getvalue()


def parse(text: str) -> tuple[Any, list[str]]:
    doc, problems = source.parse(dedent(text) if text.strip() else text, "w.yaml")
    return doc, [str(p) for p in problems]
