"""Templates that only substitute values, rendered without Jinja2's parser and compiler.

Jinja2 spends about 0.2 ms lexing, parsing, generating Python and compiling each distinct
template, and validation parses each once more to find the names it reads: a 10,000-step
workflow has some 20,000 distinct ones.  Most are text with ``{{ name }}`` or
``{{ name.attr }}`` in it, or a condition like ``steps.check.ok``, and the code Jinja2
compiles for those does nothing but look each name up, pass it through the sandbox's
``getattr``, finalize it (shell quoting) and join the pieces.  This module recognises
exactly that shape and makes those same calls on the same environment, so results, error
messages and sandbox checks stay Jinja2's own.  Anything else (filters, operators,
literals, subscripts, whitespace control, comments, blocks, line breaks) is left to Jinja2.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2.sandbox import SandboxedEnvironment

Path = tuple[str, ...]  # `a.b.c` as ("a", "b", "c")

# words Jinja2 parses as something other than a name (literals, operators, `self`), and
# `result`, which compile_expression assigns: these always go to Jinja2
_RESERVED = frozenset(
    {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else"}
    | {"self", "result", "loop", "caller", "super", "varargs", "kwargs"}
)


@functools.cache  # compiled on first use: a hook's start-up is failover time
def _pattern() -> re.Pattern[str]:
    return re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*")


def _path(text: str, start: int = 0, end: int | None = None) -> Path | None:
    m = _pattern().fullmatch(text, start, len(text) if end is None else end)
    if m is None:
        return None
    path = tuple(m.group(1).split("."))
    return None if any(part in _RESERVED for part in path) else path


def split(source: str) -> list[str | Path] | None:
    """The template as text pieces and name paths, or None when Jinja2 has to handle it."""
    if "{%" in source or "{#" in source or "\r" in source:  # blocks, comments, newline rewriting
        return None
    parts: list[str | Path] = []
    pos = 0
    while True:
        start = source.find("{{", pos)
        if start < 0:
            break
        end = source.find("}}", start + 2)
        path = _path(source, start + 2, end) if end >= 0 else None
        if path is None:
            return None
        if start > pos:
            parts.append(source[pos:start])
        parts.append(path)
        pos = end + 2
    if pos < len(source):
        parts.append(source[pos:])
    return parts


def expression_path(source: str) -> Path | None:
    """An expression that is just a name path (``steps.check.ok``), or None."""
    return _path(source)


def paths(parts: list[str | Path]) -> list[Path]:
    return [p for p in parts if isinstance(p, tuple)]


def resolve(env: SandboxedEnvironment, context: dict[str, Any], path: Path) -> Any:
    """What Jinja2's compiled code computes for ``path``: context, then globals, then undefined."""
    name = path[0]
    if name in context:
        value = context[name]
    elif name in env.globals:
        value = env.globals[name]
    else:
        value = env.undefined(name=name)
    for attr in path[1:]:
        value = env.getattr(value, attr)
    return value


class Substitution:
    """Stands in for a compiled template of text and ``{{ path }}`` pieces (``render(context)``)."""

    __slots__ = ("_env", "_parts")

    def __init__(self, env: SandboxedEnvironment, parts: list[str | Path]):
        self._env = env
        self._parts = parts

    def render(self, context: dict[str, Any]) -> str:
        env = self._env
        finalize = env.finalize
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)  # template data: never finalized
            elif finalize is None:
                out.append(str(resolve(env, context, part)))
            else:
                out.append(str(finalize(resolve(env, context, part))))
        return "".join(out)


class PathExpression:
    """Stands in for ``compile_expression(path, undefined_to_none=False)``: call with the context."""

    __slots__ = ("_env", "_path")

    def __init__(self, env: SandboxedEnvironment, path: Path):
        self._env = env
        self._path = path

    def __call__(self, context: dict[str, Any]) -> Any:
        return resolve(self._env, context, self._path)
