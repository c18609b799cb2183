"""Sandboxed Jinja2 rendering with shell quoting and strict variables.

Values from pgpool's arguments are attacker-shaped (pgpool pastes them into
``sh -c`` unquoted).  Here every ``{{ }}`` in a shell command is passed through
``shlex.quote`` by the environment's *finalize* hook, so a host named
``$(touch x)`` reaches the remote shell as one literal word.  A workflow opts
out per value with ``| trusted``.  SQL never goes through Jinja at all: values
travel as bound parameters.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jinja2 costs ~25 ms to import: only runs that render anything pay for it
    from jinja2.sandbox import SandboxedEnvironment

from engine import substitute
from engine.errors import NeedsRuntime, RenderError


class Trusted(str):
    """A string the workflow author vouches for: not shell-quoted."""


def _shell_finalize(value: Any) -> str:
    if isinstance(value, Trusted):
        return str(value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def pg_quote(value: Any) -> str:
    """Quote a value as a postgresql.conf string literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_quote(value: Any) -> str:
    """Quote a value for a libpq conninfo string (``host='a b'``)."""
    text = str(value)
    if text and re.fullmatch(r"[A-Za-z0-9_.:/@+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


SLOT_NAME_MAX = 63  # NAMEDATALEN - 1: PostgreSQL silently cuts a longer slot name when it creates it


def slot_name_default(host: Any) -> str:
    """The classic scripts' slot rule: host with '-' and '.' as '_', lower-cased.

    At most 63 characters, as PostgreSQL stores it: a longer name would create a cut slot
    while primary_slot_name (which PostgreSQL refuses when too long) kept the full one.
    """
    name = re.sub(r"[^a-z0-9_]", "_", str(host).lower().replace("-", "_").replace(".", "_"))
    return name[:SLOT_NAME_MAX]


class RuntimeRef:
    """Stands for a step result that only exists at run time (dry-run)."""

    def __init__(self, ref: str):
        self._ref = ref

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise NeedsRuntime(self._ref)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return RuntimeRef(f"{self._ref}.{name}")

    def __getitem__(self, key: Any) -> Any:
        return RuntimeRef(f"{self._ref}[{key!r}]")

    __bool__ = __str__ = __iter__ = __len__ = __int__ = __float__ = _fail
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = _fail  # type: ignore[assignment]

    def __hash__(self) -> int:
        return hash(self._ref)


class StepResults(Mapping[str, Any]):
    """``steps.<id>`` in expressions: real results, or runtime placeholders in dry-run."""

    def __init__(self, results: dict[str, dict[str, Any]], dry_run: bool):
        self._results = results
        self._dry_run = dry_run

    def __getitem__(self, key: str) -> Any:
        if key in self._results:
            return self._results[key]
        if self._dry_run:
            return RuntimeRef(f"steps.{key}")
        from jinja2 import StrictUndefined

        # an Undefined (not an exception) so `steps.x is defined` still works in conditions
        return StrictUndefined(hint=f"steps.{key} has no result: step {key!r} has not run in this run")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)


def _make_env(shell: bool) -> SandboxedEnvironment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_shell_finalize if shell else None,
    )
    env.filters.update(
        quote=lambda v: Trusted(shlex.quote(str(v))),
        trusted=lambda v: Trusted(str(v)),
        pgquote=pg_quote,
        conninfo=conninfo_quote,
        slot_name=slot_name_default,
        regex_escape=lambda v: re.escape(str(v)),
        dirname=lambda v: os.path.dirname(str(v).rstrip("/")) or "/",
        basename=lambda v: os.path.basename(str(v).rstrip("/")),
    )
    return env


_ENVS: dict[bool, SandboxedEnvironment] = {}


def environment(shell: bool = False) -> SandboxedEnvironment:
    env = _ENVS.get(shell)
    if env is None:
        env = _ENVS[shell] = _make_env(shell)
    return env


# Compiled templates, remembered across runs (see load_code_cache): Jinja2's lexer, parser and
# code generator cost about a millisecond per template, a dozen of them per hook start.
_CODE: dict[str, bytes] = {}
_CODE_FILE: str | None = None
_CODE_NEW = False


def load_code_cache(path: str) -> None:
    """Use ``path`` (in state_dir/cache, named after the engine's code) for compiled templates."""
    import marshal

    global _CODE_FILE
    _CODE_FILE = path
    try:
        with open(path, "rb") as fh:
            data = marshal.load(fh)
        if isinstance(data, dict):
            _CODE.update(data)
    except (OSError, EOFError, ValueError, TypeError):
        pass


def save_code_cache() -> None:
    import marshal

    global _CODE_NEW
    if not _CODE_NEW or _CODE_FILE is None:
        return
    try:
        os.makedirs(os.path.dirname(_CODE_FILE), mode=0o700, exist_ok=True)
        tmp = f"{_CODE_FILE}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            marshal.dump(_CODE, fh)
        os.replace(tmp, _CODE_FILE)
        _CODE_NEW = False
    except OSError:
        pass  # an optimisation only


def compiled(source: str, shell: bool = False) -> Any:
    """A Jinja2 template for ``source``, compiled once and then reused from the code cache."""
    import hashlib
    import marshal

    global _CODE_NEW
    env = environment(shell)
    key = ("S" if shell else "P") + hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()
    blob = _CODE.get(key)
    if blob is not None:
        try:
            return env.template_class.from_code(env, marshal.loads(blob), env.make_globals(None))
        except (ValueError, TypeError, EOFError):
            pass
    python = None if shell else _GENERATED.pop(source, None)
    code = compile(python if python is not None else env.compile(source, raw=True), "<template>", "exec")
    _CODE[key] = marshal.dumps(code)
    _CODE_NEW = True
    return env.template_class.from_code(env, code, env.make_globals(None))


# Python code that validation already generated for a template (for the plain environment, not
# the shell one): compiled() takes it instead of lexing, parsing and generating it once more.
_GENERATED: dict[str, str] = {}


@functools.cache
def _tracking_generator() -> Any:
    """jinja2.meta's TrackingCodeGenerator, except that it keeps the code it generates.

    Generated as compiled() would (no name or file, the environment's own generator class and
    optimisation), so that code is exactly what compiled() would produce from the source.
    """
    from jinja2.compiler import Frame

    base = environment().code_generator_class

    class Tracking(base):  # type: ignore[valid-type, misc]
        def __init__(self, env: SandboxedEnvironment):
            super().__init__(env, None, None, None, False, env.optimized)
            self.undeclared_identifiers: set[str] = set()

        def enter_frame(self, frame: Frame) -> None:
            super().enter_frame(frame)
            for _, (action, param) in frame.symbols.loads.items():
                if action == "resolve" and param not in self.environment.globals:
                    self.undeclared_identifiers.add(param)

    return Tracking


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value)


def strip_braces(expr: str) -> str:
    text = expr.strip()
    if text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1:
        return text[2:-2].strip()
    return text


BUILTIN_NAMES = frozenset(
    {
        "config",
        "secrets",
        "steps",
        "params",
        "workflow",
        "run_id",
        "dry_run",
        "replication_slot",
        "extra_args",
    }
)


def undeclared(source: str, expression: bool = False) -> tuple[set[str], set[str]]:
    """Names a template reads without defining, and the step ids it reads via ``steps.X``."""
    names, steps = _undeclared(source, expression)
    return set(names), set(steps)


@functools.cache  # steps share many template strings ("{{ host }}", "x > 0"): analyse each once
def _undeclared(source: str, expression: bool) -> tuple[frozenset[str], frozenset[str]]:
    from jinja2 import meta, nodes

    env = environment()
    parts = substitute.expression_path(source) if expression else substitute.split(source)
    if parts is not None:  # no parse needed: the names are the first words of the paths
        paths = [parts] if isinstance(parts, tuple) else substitute.paths(parts)
        return (
            frozenset(p[0] for p in paths if p[0] not in env.globals),
            frozenset(p[1] for p in paths if p[0] == "steps" and len(p) > 1),
        )
    if expression:
        ast = env.parse("{{ (" + source + ") }}")
        names = meta.find_undeclared_variables(ast)
    else:  # the same analysis, keeping the code it generates for compiled() to use
        ast = env.parse(source)
        generator = _tracking_generator()(env)
        generator.visit(ast)
        names = generator.undeclared_identifiers
        _GENERATED[source] = generator.stream.getvalue()
    steps: set[str] = set()
    node: Any  # Getattr | Getitem: find_all is typed as returning the base class
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if isinstance(base, nodes.Name) and base.name == "steps":
            if isinstance(node, nodes.Getattr):
                steps.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                steps.add(node.arg.value)
    return frozenset(names), frozenset(steps)


def _template(source: str, shell: bool) -> Any:
    """Something with ``render(context)``: a plain substitution, or a compiled template."""
    parts = substitute.split(source)
    if parts is not None:
        return substitute.Substitution(environment(shell), parts)
    return compiled(source, shell)


def _expression(source: str) -> Any:
    """A callable of the context that evaluates ``source`` (without braces)."""
    path = substitute.expression_path(source)
    if path is not None:
        return substitute.PathExpression(environment(), path)
    return environment().compile_expression(source, undefined_to_none=False)


class Renderer:
    """Renders one step's fields against the run's context."""

    def __init__(
        self,
        context: dict[str, Any],
        *,
        step: str = "",
        file: str = "",
        line: int | None = None,
        base_dir: str = "",
    ):
        self.context = context
        self.step, self.file, self.line = step, file, line
        self.base_dir = base_dir
        self._cache: dict[tuple[bool, str], Any] = {}

    def for_step(self, step: str, file: str, line: int | None) -> Renderer:
        r = Renderer(self.context, step=step, file=file, line=line, base_dir=self.base_dir)
        r._cache = self._cache
        return r

    def template_file(self, relative: str, field: str = "src") -> str:
        """Render a template file that lives beside the workflow (e.g. templates/x.j2)."""
        path = os.path.join(self.base_dir, relative)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise RenderError(
                f"cannot read template {path}: {exc.strerror or exc}",
                file=self.file,
                line=self.line,
                step=self.step,
                field=field,
            ) from None
        try:
            return compiled(text).render(self.context)
        except NeedsRuntime:
            raise
        except Exception as exc:  # any failure inside a template is the template's error
            lineno = getattr(exc, "lineno", None)
            where = f"{path}:{lineno}: " if lineno else f"{path}: "
            raise RenderError(
                where + (getattr(exc, "message", None) or str(exc)),
                file=self.file,
                line=self.line,
                step=self.step,
                field=field,
            ) from None

    def _error(self, exc: Exception, field: str) -> RenderError:
        msg = getattr(exc, "message", None) or str(exc)
        return RenderError(msg, file=self.file, line=self.line, step=self.step, field=field)

    def text(self, source: Any, field: str = "", *, shell: bool = False) -> str:
        if not isinstance(source, str):
            return "" if source is None else str(source)
        if not is_template(source):
            return source
        key = (shell, source)
        try:
            tmpl = self._cache.get(key)
            if tmpl is None:
                tmpl = self._cache[key] = _template(source, shell)
            return tmpl.render(self.context)
        except NeedsRuntime:
            raise
        except RenderError:
            raise
        except Exception as exc:  # any failure inside an expression is the expression's error
            raise self._error(exc, field) from None

    def shell(self, source: Any, field: str = "command") -> str:
        return self.text(source, field, shell=True)

    def expr(self, source: Any, field: str = "when", extra: dict[str, Any] | None = None) -> Any:
        if isinstance(source, bool) or source is None:
            return bool(source) if source is not None else True
        if not isinstance(source, str):
            return source
        key = (False, "expr:" + source)
        try:
            fn = self._cache.get(key)
            if fn is None:
                fn = self._cache[key] = _expression(strip_braces(source))
            ctx = self.context if not extra else {**self.context, **extra}
            value = fn(ctx)
            from jinja2 import StrictUndefined

            if isinstance(value, StrictUndefined):
                str(value)  # raises UndefinedError with the variable's name
            return value
        except NeedsRuntime:
            raise
        except RenderError:
            raise
        except Exception as exc:  # any failure inside an expression is the expression's error
            raise self._error(exc, field) from None

    def value(self, source: Any, field: str = "") -> Any:
        """Render every string inside a structure (dicts, lists) with plain rendering."""
        if isinstance(source, str):
            return self.text(source, field)
        if isinstance(source, dict):
            return {k: self.value(v, f"{field}.{k}" if field else str(k)) for k, v in source.items()}
        if isinstance(source, list):
            return [self.value(v, f"{field}[{i}]") for i, v in enumerate(source)]
        return source

    def argv(self, source: Any, field: str = "command") -> list[str]:
        """A command given as a list: each element rendered to exactly one argument."""
        return [self.text(item, f"{field}[{i}]") for i, item in enumerate(source)]
