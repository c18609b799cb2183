"""Check a workflow completely before anything runs, and build its model.

Like Orquesta's inspector, this returns *every* problem at once, each with
its file, line, column and YAML path, instead of stopping at the first.  The
same function backs ``pgpool-hook validate`` and the loading path of ``run``,
so a workflow that validates is exactly a workflow that can start.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from engine import gcpause, render, source
from engine.errors import InvalidInput, Problem
from engine.model import Param, Retry, Step, Workflow
from engine.source import locate, path_text

# A bound on workflow size, so a huge file is refused before any work starts. What runs before a
# step is computed only for steps that read `steps.X`, so checking grows linearly with the steps.
MAX_STEPS = 20000

JINJA_GLOBALS = frozenset(
    {"range", "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none"}
)


def _describe_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _friendly(error: Any) -> tuple[list[Any], str]:
    """Turn a jsonschema error into (path, operator-readable message)."""
    path = list(error.absolute_path)
    validator = error.validator
    schema = error.schema
    inst = error.instance
    if validator == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted((schema.get("properties") or {}).keys())
        extra = [k for k in inst if k not in allowed]
        key = extra[0] if extra else "?"
        hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        msg = f"unknown key {key!r}"
        msg += f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(allowed)}"
        return path + [key], msg
    if validator == "required":
        return path, error.message.replace("is a required property", "is required")
    if validator == "type":
        want = schema.get("type")
        want_text = " or ".join(want) if isinstance(want, list) else want
        return path, f"expected {want_text}, got {_describe_type(inst)} {inst!r}"
    if validator == "enum":
        return path, f"{inst!r} is not one of {', '.join(repr(x) for x in schema['enum'])}"
    if validator == "pattern":
        return path, f"{inst!r} is not a valid name (letters, digits and _; not starting with a digit)"
    if validator in ("anyOf", "oneOf"):
        desc = schema.get("description")
        return path, f"invalid value {inst!r}" + (f": {desc}" if desc else "")
    if validator in (
        "minimum",
        "exclusiveMinimum",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "maxProperties",
    ):
        return path, f"{error.message}"
    return path, error.message


def _mismatch(error: Any) -> bool:
    """True when an alternative of anyOf/oneOf failed only because the value has another type."""
    if error.validator == "type" and not error.relative_path:
        return True
    if error.validator == "enum" and not error.relative_path:
        return not any(type(v) is type(error.instance) for v in error.validator_value)
    return (
        error.validator in ("anyOf", "oneOf")
        and not error.relative_path
        and all(_mismatch(e) for e in error.context)
    )


def _specific(error: Any) -> list[Any]:
    """For anyOf/oneOf, the errors of the alternative that fits the value's type (if one does)."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    relevant = [e for e in error.context if not _mismatch(e)]
    if (
        len({e.schema_path[0] for e in relevant}) != 1
    ):  # none or several alternatives fit: say what is allowed
        return [error]
    return [x for e in relevant for x in _specific(e)]


def schema_problems(schema: dict[str, Any], data: Any, doc: Any, filename: str) -> list[Problem]:
    """Every JSON Schema violation of ``data`` as a located Problem."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    errors = [e for top in validator.iter_errors(data) for e in _specific(top)]
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        path, message = _friendly(error)
        key = (path_text(path), message)
        if key in seen:
            continue
        seen.add(key)
        pos = locate(doc, path) if doc is not None else None
        problems.append(
            Problem(filename, pos[0] if pos else None, pos[1] if pos else None, path_text(path), message)
        )
    return problems


class _Checker:
    def __init__(self, path: str, doc: Any):
        self.file = path
        self.doc = doc
        self.problems: list[Problem] = []

    def add(self, path: list[Any], message: str) -> None:
        pos = locate(self.doc, path)
        self.problems.append(
            Problem(self.file, pos[0] if pos else None, pos[1] if pos else None, path_text(path), message)
        )

    def line_of(self, path: list[Any]) -> int:
        pos = locate(self.doc, path)
        return pos[0] if pos else 0

    def jinja(
        self, text: str, path: list[Any], known: set[str], step_ids: set[str] | None, expression: bool = False
    ) -> None:
        """Syntax and undefined-name checks of one template string or expression."""
        from jinja2 import TemplateSyntaxError

        src = render.strip_braces(text) if expression else text
        try:
            names, steps = render.undeclared(src, expression=expression)
        except RecursionError:
            self.add(path, "Jinja2 expression nested too deeply")
            return
        except TemplateSyntaxError as exc:
            pos = locate(self.doc, path)
            line = pos[0] if pos else None
            if line is not None and exc.lineno and "\n" in text:
                line += exc.lineno
            self.problems.append(
                Problem(
                    self.file,
                    line,
                    None if "\n" in text else (pos[1] if pos else None),
                    path_text(path),
                    f"Jinja2 syntax error: {exc.message}",
                )
            )
            return
        for name in sorted(names - known - JINJA_GLOBALS):
            hint = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
            self.add(
                path,
                f"undefined variable {name!r}"
                + (
                    f" (did you mean {hint[0]!r}?)"
                    if hint
                    else " (not a param, var, config key or step result)"
                ),
            )
        if step_ids is not None:
            for sid in sorted(steps - step_ids):
                self.add(path, f"steps.{sid} is not a step that runs before this one")


def _strings(value: Any, path: list[Any]):  # type: ignore[no-untyped-def]
    if isinstance(value, str):
        yield value, path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, path + [k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, path + [i])


def _ids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def _find_cycle(deps: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A `needs` cycle as [a, b, ..., a], or None.  Iterative: a long chain of needs is no crash."""
    state: dict[str, int] = {}
    for root in deps:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        todo = [iter(deps[root])]
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                state[path.pop()] = 2
                todo.pop()
            elif dep not in deps:
                continue
            elif state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            elif dep not in state:
                state[dep] = 1
                path.append(dep)
                todo.append(iter(deps[dep]))
    return None


def _build_params(doc: Any, chk: _Checker) -> tuple[Param, ...]:
    params: list[Param] = []
    seen: set[str] = set()
    for i, p in enumerate(doc.get("params") or []):
        if isinstance(p, str):
            param = Param(name=p)
        else:
            has_default = "default" in p
            param = Param(
                name=p["name"],
                type=p.get("type", "str"),
                default=p.get("default"),
                required=not has_default,
                description=p.get("description", ""),
            )
        if param.name in seen:
            chk.add(["params", i], f"duplicate param {param.name!r}")
        if param.name in render.BUILTIN_NAMES:
            chk.add(["params", i], f"{param.name!r} is a reserved name")
        seen.add(param.name)
        params.append(param)
    return tuple(params)


def _make_step(
    raw: dict[str, Any], index: int, section: str, chk: _Checker, kinds: dict[str, Any], previous: str | None
) -> Step | None:
    here = [section, index]
    present = [k for k in kinds if k in raw]
    if not present:
        chk.add(here, f"step {raw.get('id', '?')!r} has no kind: add one of {', '.join(kinds)}")
        return None
    if len(present) > 1:
        chk.add(
            here + [present[1]],
            f"step {raw.get('id', '?')!r} has more than one kind ({' and '.join(present)})",
        )
        return None
    kind = present[0]
    r = raw.get("retry") or {}
    on_error = raw.get("on_error", "fail")
    fallbacks: tuple[str, ...] = ()
    if on_error not in ("fail", "continue"):
        fallbacks = _ids(on_error)
        on_error = "fallback"
    needs = raw.get("needs")
    explicit = needs is not None
    return Step(
        id=raw["id"],
        kind=kind,
        body=source.plain(raw[kind]),
        file=chk.file,
        line=chk.line_of(here),
        description=" ".join(str(raw.get("description", "")).split()),
        when=raw.get("when"),
        needs=_ids(needs) if explicit else ((previous,) if previous else ()),
        explicit_needs=explicit,
        retry=Retry(
            attempts=r.get("attempts", 1),
            delay=r.get("delay", 1.0),
            backoff=r.get("backoff", 1.0),
            max_delay=r.get("max_delay"),
            until=r.get("until"),
        ),
        timeout=raw.get("timeout"),
        on_error=on_error,
        fallbacks=fallbacks,
        undo=_ids(raw.get("undo")),
        guard=bool(raw.get("guard", False)),
        handler=section == "handlers",
    )


class _RunsBefore:
    """Answers: is step X certain to have finished when step S starts?

    True when X is among S's needs, their needs, and so on; or when X stands above S and
    everything X needs is itself certain to have finished then, because the runner always
    starts the first ready step in file order.  (A step above may still run later when it
    needs a step further down.)  Asked only for the ``steps.X`` a template reads, and
    answered by walking the needs from there, so a long workflow costs no n².
    """

    def __init__(self, steps: list[Step]):
        self.by_id = {s.id: s for s in steps}
        self.index = {s.id: i for i, s in enumerate(steps)}
        self._memo: dict[str, dict[str, bool]] = {}

    def _ancestor(self, x: str, sid: str) -> bool:
        seen: set[str] = set()
        todo = list(self.by_id[sid].needs)
        while todo:
            dep = todo.pop()
            if dep == x:
                return True
            if dep in self.by_id and dep not in seen:
                seen.add(dep)
                todo.extend(self.by_id[dep].needs)
        return False

    def holds(self, sid: str, x: str) -> bool:
        if x == sid or x not in self.by_id:
            return False
        memo = self._memo.setdefault(sid, {})
        if x in memo:
            return memo[x]
        memo[x] = False  # while deciding; `needs` cycles are reported separately
        result = self._ancestor(x, sid) or (
            self.index[x] < self.index[sid] and all(self.holds(sid, d) for d in self.by_id[x].needs)
        )
        memo[x] = result
        return result


class _Visible:
    """The step results a step may read, as a test rather than a set (see _RunsBefore)."""

    def __init__(self, test: Any):
        self._test = test

    def __rsub__(self, other: set[str]) -> set[str]:  # `read - visible`: the reads not allowed
        return {x for x in other if not self._test(x)}

    def __or__(self, other: Any) -> _Visible:
        extra = set(other)
        return _Visible(lambda x: x in extra or self._test(x))


def check_workflow(path: str, doc: Any, problems: list[Problem]) -> Workflow | None:
    """Schema, then semantics; appends to ``problems`` and returns the model when clean."""
    from engine.schema import workflow_schema
    from engine.steps import KINDS

    if doc is None:
        if not problems:  # only comments, or a bare `~`
            problems.append(Problem(path, 1, 1, "", "no content (only comments?): expected a YAML mapping"))
        return None
    if not isinstance(doc, dict):
        problems.append(
            Problem(path, 1, 1, "", f"a workflow must be a YAML mapping, got {_describe_type(doc)}")
        )
        return None
    for section in ("steps", "handlers"):
        items = doc.get(section)
        if isinstance(items, list) and len(items) > MAX_STEPS:
            line, column = locate(doc, [section]) or (None, None)
            problems.append(Problem(path, line, column, section, f"{len(items)} items; at most {MAX_STEPS}"))
    if problems:
        return None
    problems.extend(schema_problems(workflow_schema(), doc, doc, path))
    if problems:
        return None
    chk = _Checker(path, doc)
    params = _build_params(doc, chk)
    known: set[str] = {p.name for p in params} | set(render.BUILTIN_NAMES)

    # vars: each may use params, config and vars defined above it
    var_lines: dict[str, int] = {}
    for name, value in (doc.get("vars") or {}).items():
        for text, p in _strings(value, ["vars", name]):
            if render.is_template(text):
                chk.jinja(text, p, known, step_ids=set())
        known.add(name)
        var_lines[name] = chk.line_of(["vars", name])

    steps: list[Step] = []
    handlers: dict[str, Step] = {}
    ids_seen: dict[str, int] = {}
    previous: str | None = None
    for section in ("steps", "handlers"):
        for i, raw in enumerate(doc.get(section) or []):
            sid = raw["id"]
            if sid in ids_seen:
                chk.add([section, i, "id"], f"duplicate step id {sid!r} (first at line {ids_seen[sid]})")
                continue
            ids_seen[sid] = chk.line_of([section, i])
            step = _make_step(raw, i, section, chk, KINDS, previous if section == "steps" else None)
            if step is None:
                continue
            if section == "steps":
                steps.append(step)
                previous = sid
            else:
                handlers[sid] = step

    step_ids = {s.id for s in steps}
    runs_before = _RunsBefore(steps)
    for section, collection in (("steps", steps), ("handlers", list(handlers.values()))):
        raws = doc.get(section) or []
        index = {r["id"]: i for i, r in reversed(list(enumerate(raws)))}  # first of duplicate ids
        for step in collection:
            here = [section, index[step.id]]
            if step.handler and step.explicit_needs:
                chk.add(here + ["needs"], "handlers run on demand; `needs` only applies under `steps:`")
            if step.handler and getattr(
                KINDS[step.kind], "ends_run", False
            ):  # as a fallback it would "succeed" and the run go on
                chk.add(here + ["exit"], "an exit step cannot be a handler: it would not end the run")
            for dep in step.needs if step.explicit_needs else ():
                if dep == step.id:
                    chk.add(here + ["needs"], "a step cannot need itself")
                elif dep in handlers:
                    chk.add(here + ["needs"], f"{dep!r} is a handler; steps can only need steps")
                elif dep not in step_ids:
                    chk.add(here + ["needs"], _unknown(dep, step_ids, "step"))
            for field, refs in (("undo", step.undo), ("on_error", step.fallbacks)):
                for ref in refs:
                    if ref in handlers:
                        continue
                    if ref in step_ids:
                        chk.add(here + [field], f"{ref!r} is a step under `steps:`; move it to `handlers:`")
                    else:
                        chk.add(here + [field], _unknown(ref, set(handlers), "handler"))
            # names visible: everything known, plus results of steps certain to have run (any step for handlers)
            visible: Any = (
                step_ids | set(handlers)
                if step.handler
                else _Visible(lambda x, sid=step.id: runs_before.holds(sid, x))  # type: ignore[misc]
            )
            for key in ("when",):
                if isinstance(raw_get(doc, here, key), str):
                    chk.jinja(raw_get(doc, here, key), here + [key], known, visible, expression=True)
            until = raw_get(doc, here + ["retry"], "until")
            if isinstance(until, str):
                chk.jinja(
                    until, here + ["retry", "until"], known | {"result"}, visible | {step.id}, expression=True
                )
            kind = KINDS[step.kind]
            body_path = here + [step.kind]
            for text, p in _strings(raw_get(doc, here, step.kind), body_path):
                if render.is_template(text):
                    chk.jinja(text, p, known, visible)
            check = getattr(kind, "check", None)
            if check is not None:
                for rel, message in check(step.body, os.path.dirname(os.path.abspath(path))):
                    if isinstance(message, tuple):  # (template text, known-name check) from a file
                        continue
                    chk.add(body_path + list(rel), message)
            templates = getattr(kind, "template_sources", None)
            if templates is not None:
                for rel, text, label in templates(step.body, os.path.dirname(os.path.abspath(path))):
                    _check_template_file(chk, body_path + list(rel), text, label, known, visible)

    deps = {s.id: s.needs for s in steps}
    cycle = _find_cycle(deps)
    if cycle:
        idx = {r["id"]: i for i, r in enumerate(doc.get("steps") or [])}
        chk.add(["steps", idx[cycle[0]], "needs"], "`needs` forms a cycle: " + " -> ".join(cycle))

    lock = doc.get("lock")
    if isinstance(lock, str) and render.is_template(lock):
        chk.jinja(lock, ["lock"], known, set())
    problems.extend(chk.problems)
    if problems:
        return None
    return Workflow(
        name=doc["name"],
        path=path,
        description=" ".join(str(doc.get("description", "")).split()),
        params=params,
        vars=source.plain(doc.get("vars") or {}),
        steps=tuple(steps),
        handlers=handlers,
        deadline=doc.get("deadline"),
        lock=lock,
        lock_timeout=doc.get("lock_timeout", 0) or 0,
        extra_args=doc.get("extra_args", True),
        var_lines=var_lines,
    )


def _check_template_file(
    chk: _Checker, path: list[Any], text: str | None, label: str, known: set[str], visible: set[str]
) -> None:
    from jinja2 import TemplateSyntaxError

    if text is None:
        chk.add(path, f"template file {label} not found")
        return
    try:
        names, steps = render.undeclared(text)
    except RecursionError:
        chk.problems.append(Problem(label, None, None, "", "Jinja2 expression nested too deeply"))
        return
    except TemplateSyntaxError as exc:
        chk.problems.append(Problem(label, exc.lineno, None, "", f"Jinja2 syntax error: {exc.message}"))
        return
    for name in sorted(names - known - JINJA_GLOBALS):
        chk.problems.append(
            Problem(
                label,
                _line_reading(text, name),
                None,
                "",
                f"undefined variable {name!r} (used by {path_text(path)} at {chk.file}:{chk.line_of(path)})",
            )
        )
    for sid in sorted(steps - visible):
        chk.problems.append(
            Problem(
                label,
                _line_reading(text, "steps", sid),
                None,
                "",
                f"steps.{sid} is not a step that runs before this one",
            )
        )


def _line_reading(text: str, name: str, attr: str | None = None) -> int | None:
    """The template's own line where ``name`` (or ``name.attr``) is first read."""
    from jinja2 import nodes

    node: Any
    for node in render.environment().parse(text).find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        if attr is None and isinstance(node, nodes.Name) and node.name == name and node.ctx == "load":
            return int(node.lineno)
        if attr is not None and not isinstance(node, nodes.Name):
            key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(node.node, nodes.Name) and node.node.name == name and key == attr:
                return int(node.lineno)
    return None


def raw_get(doc: Any, path: list[Any], key: str) -> Any:
    node = doc
    for part in path:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            node = node[part]
        else:
            return None
    return node.get(key) if isinstance(node, dict) else None


def _unknown(ref: str, candidates: set[str], what: str) -> str:
    hint = difflib.get_close_matches(ref, sorted(candidates), n=1, cutoff=0.6)
    return f"unknown {what} {ref!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def load_workflow(path: str, cache_dir: str | None = None) -> Workflow:
    """Read and fully check one workflow file; raise InvalidInput listing every problem.

    With ``cache_dir``, a file whose exact content (and templates, and engine code)
    already validated is not checked again: see :mod:`engine.cache`.
    """
    data: bytes | None = None
    if cache_dir is not None:
        from engine import cache

        try:
            with open(path, "rb") as fh:
                data = fh.read(source.MAX_BYTES + 1)
        except OSError:
            data = None
        if data is not None:
            cached = cache.lookup(cache_dir, path, data)
            if cached is not None:
                return cached
    with gcpause.paused():
        doc, problems = source.load_file(path)
        workflow = check_workflow(path, doc, problems) if not problems else None
    if problems or workflow is None:
        raise InvalidInput(
            problems or [Problem(path, None, None, "", "invalid workflow")],
            hint="run `pgpool-hook validate FILE` after editing",
        )
    if cache_dir is not None and data is not None:
        from engine import cache
        from engine.steps import KINDS

        deps: list[str] = []
        for step in workflow.all_steps():
            sources = getattr(KINDS[step.kind], "template_sources", None)
            if sources is not None:
                deps.extend(
                    label for _, text, label in sources(step.body, workflow.directory) if text is not None
                )
        cache.store(cache_dir, path, data, workflow, deps)
    return workflow


def resolve_workflow_path(name: str, workflows_dir: str) -> str:
    """A workflow given as a path, or as a name looked up in the workflows folder."""
    from engine.config import find_workflow

    found = find_workflow(name, workflows_dir)
    if found is not None:
        return found
    available = (
        sorted(f.rsplit(".", 1)[0] for f in os.listdir(workflows_dir) if f.endswith((".yaml", ".yml")))
        if os.path.isdir(workflows_dir)
        else []
    )
    hint = difflib.get_close_matches(name, available, n=1)
    msg = f"no workflow named {name!r} in {workflows_dir}"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    elif available:
        msg += f"; available: {', '.join(available)}"
    raise InvalidInput(msg)
