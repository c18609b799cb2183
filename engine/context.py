"""Bind pgpool's arguments to params and build what expressions can see.

pgpool pastes values into ``sh -c`` unquoted: an unknown host arrives as an
empty argument, a missing node id as ``-1``, and 4.4+ may put a space in
front of numbers.  Binding is strict about what matters (a node id must be
an integer) and forgiving about that noise.
"""

from __future__ import annotations

import re
from typing import Any

from engine.config import Config, SecretMissing
from engine.errors import InvalidInput, NeedsRuntime, Problem, RenderError
from engine.model import Workflow
from engine.render import Renderer, StepResults, compiled, slot_name_default

MAX_ARG_LENGTH = 4096
INTEGER = re.compile(r"[+-]?[0-9]+")
TRUE_WORDS = {"1", "true", "yes", "on", "t", "y"}
FALSE_WORDS = {"0", "false", "no", "off", "f", "n", ""}


def bind_params(workflow: Workflow, args: list[str]) -> dict[str, Any]:
    params = workflow.params
    required = [p for p in params if p.required]
    names = " ".join(p.name for p in params)
    problems: list[str] = []
    if len(args) < len(required):
        count = f"{len(required)} to {len(params)}" if len(required) < len(params) else f"{len(params)}"
        problems.append(f"{workflow.name} takes {count} arguments ({names}); got {len(args)}")
    elif len(args) > len(params) and not workflow.extra_args:
        problems.append(f"{workflow.name} takes at most {len(params)} arguments ({names}); got {len(args)}")
    values: dict[str, Any] = {}
    for i, p in enumerate(params):
        if i >= len(args):
            values[p.name] = p.default
            continue
        raw = args[i]
        if len(raw) > MAX_ARG_LENGTH:
            problems.append(f"argument {i + 1} ({p.name}) is longer than {MAX_ARG_LENGTH} characters")
            continue
        if "\0" in raw:
            problems.append(f"argument {i + 1} ({p.name}) contains a NUL byte")
            continue
        if p.type == "int":
            text = raw.strip()
            if text == "":
                values[p.name] = p.default
                continue
            if INTEGER.fullmatch(text):  # int() alone would also take '1_0' and non-ASCII digits
                values[p.name] = int(text, 10)
            else:
                problems.append(f"argument {i + 1} ({p.name}) must be an integer, got {raw!r}")
        elif p.type == "bool":
            word = raw.strip().lower()
            if word == "":
                values[p.name] = p.default
            elif word in TRUE_WORDS:
                values[p.name] = True
            elif word in FALSE_WORDS:
                values[p.name] = False
            else:
                problems.append(f"argument {i + 1} ({p.name}) must be true or false, got {raw!r}")
        else:
            values[p.name] = raw
    if problems:
        raise InvalidInput(
            [Problem("<arguments>", None, None, "", m) for m in problems],
            hint=f"usage: pgpool-hook run {workflow.name} {names}",
        )
    values["extra_args"] = list(args[len(params) :])
    return values


class SecretsView(dict):  # type: ignore[type-arg]
    """``secrets.<name>``: the value, or an error naming why it could not be read."""

    def __init__(self, config: Config):
        super().__init__(config.secrets)
        self._problems = config.secret_problems

    def __missing__(self, key: str) -> Any:
        if key in self._problems:
            raise RenderError(f"secret {key!r}: {self._problems[key]}")
        raise RenderError(f"no secret named {key!r} in the config")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]


def build(
    workflow: Workflow,
    config: Config,
    params: dict[str, Any],
    *,
    dry_run: bool,
    results: dict[str, dict[str, Any]] | None = None,
    run_id: str = "",
) -> tuple[dict[str, Any], Renderer]:
    """The expression context and a renderer over it; vars rendered in order."""
    slot_rule = config.data.get("replication_slot") or "{{ host | slot_name }}"

    def replication_slot(host: Any = "", port: Any = "", node_id: Any = "") -> str:
        text = compiled(slot_rule).render(host=host, port=port, node_id=node_id)
        return slot_name_default(text) if text else text

    ctx: dict[str, Any] = {
        **params,
        "params": params,
        "config": config.data,
        "secrets": SecretsView(config),
        "steps": StepResults(results if results is not None else {}, dry_run),
        "workflow": {"name": workflow.name, "path": workflow.path},
        "run_id": run_id,
        "dry_run": dry_run,
        "replication_slot": replication_slot,
    }
    r = Renderer(ctx, file=workflow.path, base_dir=workflow.directory)
    overrides = config.data.get("vars") or {}
    for name, value in workflow.vars.items():
        source = overrides.get(name, value)
        vr = r.for_step("", workflow.path, workflow.var_lines.get(name))
        try:
            ctx[name] = vr.value(source, f"vars.{name}")
        except NeedsRuntime as exc:
            raise RenderError(
                f"vars.{name} cannot use step results ({exc.ref})",
                file=workflow.path,
                line=workflow.var_lines.get(name),
            ) from None
        if isinstance(ctx[name], SecretMissing):
            raise RenderError(f"vars.{name}: a secret is missing")
    return ctx, r
