"""Load YAML while remembering the line and column of every key and item.

PyYAML forgets positions once it builds dicts, and silently keeps the last of
two duplicate keys.  Operators need ``file:line:column`` in every message, and
a duplicated ``when:`` that silently wins is exactly the 3 a.m. bug this
project exists to prevent, so this loader records positions and rejects
duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import yaml

from engine.errors import Problem

try:  # the C parser makes start-up measurably faster; positions still come from nodes
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - pure Python fallback
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Aliases let a small file stand for an enormous tree ("billion laughs"): everything
# after parsing walks the tree, so its size is bounded, counting each alias use again.
MAX_VALUES = 100_000

Pos = tuple[int, int]


class Map(dict):
    """A mapping that knows where it and each of its keys stand in the file."""

    pos: Pos = (0, 0)
    key_pos: dict[Any, Pos]


class Seq(list):
    """A sequence that knows where it and each of its items stand in the file."""

    pos: Pos = (0, 0)
    item_pos: list[Pos]


def _pos(node: yaml.Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    def __init__(self, stream: str, filename: str):
        super().__init__(stream)
        self.filename = filename
        self.problems: list[Problem] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Map:  # type: ignore[override]
        result = Map()
        result.pos = _pos(node)
        result.key_pos = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                self.problems.append(
                    Problem(self.filename, *_pos(key_node), "", "a mapping key must be a plain value")
                )
                continue
            if key in result.key_pos:
                first = result.key_pos[key][0]
                self.problems.append(
                    Problem(
                        self.filename,
                        *_pos(key_node),
                        str(key),
                        f"duplicate key (first defined at line {first})",
                    )
                )
                continue
            result.key_pos[key] = _pos(key_node)
            result[key] = self.construct_object(value_node, deep=True)
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> Seq:  # type: ignore[override]
        result = Seq(self.construct_object(child, deep=True) for child in node.value)
        result.pos = _pos(node)
        result.item_pos = [_pos(child) for child in node.value]
        return result


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_sequence)
# Timestamps would turn a value like 2024-01-01 into a date object no field expects.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in _BaseLoader.yaml_implicit_resolvers.items()
}


def _yaml_problem(filename: str, exc: yaml.YAMLError, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        # no mark, and its position counts bytes or characters depending on the parser:
        # the reader refuses the character anywhere, so its first occurrence is the place
        index = text.find(chr(exc.character))
        before = text[: max(index, 0)]
        return Problem(
            filename,
            before.count("\n") + 1 if index >= 0 else None,
            len(before) - (before.rfind("\n") + 1) + 1 if index >= 0 else None,
            "",
            f"not valid YAML: character #x{exc.character:04x}: {exc.reason}",
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else None
    col = mark.column + 1 if mark else None
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None and "\t" in problem or "found character '\\t'" in str(exc):
        problem = "tab character: YAML indentation must use spaces"
    elif mark is not None:
        lines = text.splitlines()
        if line and line <= len(lines) and "\t" in lines[line - 1][: max(col or 1, 1)]:
            problem = "tab character: YAML indentation must use spaces"
    return Problem(filename, line, col, "", f"not valid YAML: {problem}")


def _too_big(value: Any, limit: int) -> tuple[Pos, str] | None:
    """Where ``value`` nests deeper than ``limit`` levels or holds more than MAX_VALUES values.

    Iterative (no recursion limit), and it stops at the first excess, so an alias bomb
    costs MAX_VALUES steps here instead of hanging every later walk of the tree.
    """
    stack: list[tuple[Any, int, Pos]] = [(value, 0, getattr(value, "pos", (1, 1)))]
    count = 0
    while stack:
        item, depth, pos = stack.pop()
        pos = getattr(item, "pos", pos)
        if depth > limit:
            return pos, f"nested too deeply (more than {limit} levels)"
        count += 1
        if count > MAX_VALUES:
            return (
                pos,
                f"too many values (more than {MAX_VALUES}; YAML aliases count each time they are used)",
            )
        if isinstance(item, dict):
            stack.extend((v, depth + 1, pos) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1, pos) for v in item)
    return None


def parse(text: str, filename: str) -> tuple[Any, list[Problem]]:
    """Parse YAML text; returns the document (Map/Seq/scalars) and problems found."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_BYTES:
        return None, [Problem(filename, None, None, "", f"file is larger than {MAX_BYTES // 1024} KiB")]
    if not text.strip():
        return None, [Problem(filename, 1, 1, "", "file is empty: expected a YAML mapping")]
    loader = _Loader(text, filename)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(filename, exc, text)]
    except RecursionError:
        return None, [Problem(filename, None, None, "", f"nested too deeply (more than {MAX_DEPTH} levels)")]
    finally:
        loader.dispose()
    problems = list(loader.problems)
    too_big = _too_big(doc, MAX_DEPTH)
    if too_big is not None:
        (line, column), message = too_big
        return None, [*problems, Problem(filename, line, column, "", message)]
    return doc, problems


def load_file(path: str) -> tuple[Any, list[Problem]]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        return None, [Problem(path, None, None, "", f"cannot read file: {exc.strerror or exc}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, None, None, "", f"not UTF-8 text (byte {exc.start})")]
    return parse(text, path)


def locate(doc: Any, path: Iterator[Any] | list[Any] | tuple[Any, ...]) -> Pos | None:
    """Best known position of ``path`` inside ``doc``: the deepest node we can reach."""
    best: Pos | None = getattr(doc, "pos", None)
    node = doc
    for part in path:
        if isinstance(node, Map) and part in node:
            best = node.key_pos.get(part, best)
            node = node[part]
        elif isinstance(node, Seq) and isinstance(part, int) and 0 <= part < len(node):
            best = node.item_pos[part]
            node = node[part]
        else:
            break
        if getattr(node, "pos", None) and not isinstance(node, Map | Seq):
            best = node.pos
    return best


def path_text(path: list[Any] | tuple[Any, ...]) -> str:
    """``steps[3].sql.host`` style text for a path of keys and indexes."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def plain(value: Any) -> Any:
    """Drop position bookkeeping: Map/Seq become dict/list (for JSON and journals)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../..") else path
