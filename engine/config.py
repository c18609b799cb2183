"""Site configuration: where things live, how to reach nodes, and secrets.

Looked up as ``--config``, else ``$PGPOOL_HOOK_CONFIG``, else
``/etc/pgpool2/pgpool-hook.yaml``, else built-in defaults that fit Debian's
packages.  The file is checked like a workflow (schema, file:line messages).
Secrets are read from the environment or files, never from workflow text, and
every resolved secret is registered with the masker.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import InvalidInput, Problem
from engine.masking import MASK

if TYPE_CHECKING:
    from engine.cache import ConfigEntry

DEFAULT_PATH = "/etc/pgpool2/pgpool-hook.yaml"


def shipped_workflows_dir() -> str:
    """The project's own workflows: beside the package in a checkout, or installed data."""
    import sys

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (
        os.path.join(here, "workflows"),
        os.path.join(sys.prefix, "share", "pgpool-hook", "workflows"),
    ):
        if os.path.isdir(candidate):
            return candidate
    return os.path.join(here, "workflows")


def _default_state_dir() -> str:
    system = "/var/lib/pgpool-hook"
    if os.access(system, os.W_OK) or (not os.path.exists(system) and os.access("/var/lib", os.W_OK)):
        return system
    return os.path.join(os.path.expanduser("~"), ".local", "state", "pgpool-hook")


DEFAULTS: dict[str, Any] = {
    "workflows_dir": None,
    "state_dir": None,
    "postgres": {
        "bin_dir": "/usr/lib/postgresql/15/bin",
        "superuser": "postgres",
        "database": "postgres",
        "replication_user": "repl",
        "passfile": "~/.pgpass",
        "conf_file": None,
        "connect_timeout": 10,
    },
    "ssh": {
        "user": "postgres",
        "port": 22,
        "key_file": "~/.ssh/id_rsa_pgpool",
        "host_key_policy": "accept-new",
        "known_hosts": "~/.ssh/known_hosts",
        "connect_timeout": 10,
    },
    "pcp": {
        "host": "localhost",
        "port": 9898,
        "user": "pgpool",
        "bin_dir": "/usr/sbin",
        "passfile": "~/.pcppass",
    },
    "replication_slot": "{{ host | slot_name }}",
    "secrets": {},
    "vars": {},
    "lock_timeout": 120,
}


# paths that may start with ~ (the hook user's home); expanded once, so templates see real paths
PATH_KEYS = (
    ("", "workflows_dir"),
    ("", "state_dir"),
    ("postgres", "passfile"),
    ("postgres", "conf_file"),
    ("ssh", "key_file"),
    ("ssh", "known_hosts"),
    ("pcp", "passfile"),
    ("pcp", "bin_dir"),
    ("postgres", "bin_dir"),
)


class SecretMissing(str):
    """Placeholder for a secret that could not be read; using it is an error."""


@dataclass
class Config:
    data: dict[str, Any]
    path: str | None
    secrets: dict[str, str] = field(default_factory=dict)
    secret_problems: dict[str, str] = field(default_factory=dict)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def workflows_dir(self) -> str:
        return os.path.expanduser(self.data.get("workflows_dir") or shipped_workflows_dir())

    @property
    def state_dir(self) -> str:
        return os.path.expanduser(self.data.get("state_dir") or _default_state_dir())

    def path_value(self, dotted: str) -> str:
        return os.path.expanduser(str(self.get(dotted, "")))

    def mask_values(self) -> list[str]:
        """Every value that must never appear in output: secrets and passfile passwords."""
        values = [v for v in self.secrets.values() if v]
        env_pw = os.environ.get("PGPASSWORD")
        if env_pw:
            values.append(env_pw)
        for key in ("postgres.passfile", "pcp.passfile"):
            values.extend(_passfile_passwords(self.path_value(key)))
        return values


def _passfile_passwords(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        # host:port:db:user:password (pgpass) or host:port:user:password (pcppass); '\:' escapes
        fields = line.replace("\\:", "\0").split(":")
        if len(fields) >= 4:
            pw = fields[-1].replace("\0", ":").replace("\\\\", "\\")
            user = fields[-2].replace("\0", ":")
            # a password equal to its user name is no secret (a lab habit); masking it would
            # blank out every "postgres" in the log
            if pw and pw != user:
                out.append(pw)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("secrets", "vars"):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``--set a.b=c`` pairs as a nested mapping; values parsed as YAML scalars."""
    if not pairs:
        return {}  # a hook's usual start: no --set, and no YAML import for it
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidInput(f"--set {pair!r}: expected KEY=VALUE, e.g. --set ssh.port=2222")
        key, raw = pair.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise InvalidInput(f"--set {pair!r}: the key must be dotted names, e.g. vars.promote_timeout")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list) or value is None:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidInput(f"--set {pair!r}: {part} is set twice")
        node[parts[-1]] = value
    return result


def _resolve_secrets(spec: dict[str, Any], base_dir: str) -> tuple[dict[str, str], dict[str, str]]:
    values: dict[str, str] = {}
    problems: dict[str, str] = {}
    for name, how in spec.items():
        if not isinstance(how, dict) or len(how) != 1:
            continue
        ((kind, ref),) = how.items()
        if kind == "env":
            val = os.environ.get(str(ref))
            if val is None:
                problems[name] = f"environment variable {ref} is not set"
                continue
            values[name] = val
        elif kind == "file":
            path = os.path.join(base_dir, os.path.expanduser(str(ref)))
            try:
                with open(path, encoding="utf-8") as fh:
                    values[name] = fh.read().rstrip("\n")
            except OSError as exc:
                problems[name] = f"cannot read {path}: {exc.strerror or exc}"
        else:
            values[name] = str(ref)
    return values, problems


def _slot_rule_problems(rule: str, doc: Any, path: str | None) -> list[Problem]:
    """The replication_slot rule may only use host, port and node_id (checked now, not at failover time)."""
    from jinja2 import TemplateSyntaxError

    from engine import source
    from engine.render import undeclared

    from_file = isinstance(doc, dict) and doc.get("replication_slot") == rule
    pos = source.locate(doc, ["replication_slot"]) if from_file else None
    where = (path or "--set") if from_file else "--set"
    try:
        names, _ = undeclared(rule)
    except TemplateSyntaxError as exc:
        names, message = set(), f"Jinja2 syntax error: {exc.message}"
    else:
        unknown = sorted(names - {"host", "port", "node_id"})
        message = f"unknown name {unknown[0]!r}: the rule can use host, port and node_id" if unknown else ""
    if not message:
        return []
    return [Problem(where, pos[0] if pos else None, pos[1] if pos else None, "replication_slot", message)]


def _secret_literals(*docs: Any) -> list[Any]:
    """Every value written under ``secrets:`` (in the file or ``--set``), except env and file names."""
    found: list[Any] = []
    todo: list[tuple[Any, Any]] = [(d.get("secrets"), None) for d in docs if isinstance(d, dict)]
    while todo:
        node, key = todo.pop()
        if isinstance(node, dict):
            todo.extend((v, k) for k, v in node.items())
        elif isinstance(node, list):
            todo.extend((v, key) for v in node)
        elif node is not None and node != "" and key not in ("env", "file"):
            found.append(node)
    return found


def _hide(message: str, literals: list[Any]) -> str:
    """The message with each literal as it is quoted there (repr: a one-letter secret spares words)."""
    for value in sorted(literals, key=lambda v: len(repr(v)), reverse=True):
        message = message.replace(repr(value), repr(MASK) if isinstance(value, str) else MASK)
    return message


def find_path(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    env = os.environ.get("PGPOOL_HOOK_CONFIG")
    if env:
        return env
    return DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None


def _named_state_dir(raw: dict[str, Any], overrides: dict[str, Any] | None) -> str:
    """The state_dir that settings not yet checked name (where the checks' record is kept)."""
    state_dir = (overrides or {}).get("state_dir") or raw.get("state_dir")
    return os.path.expanduser(str(state_dir)) if state_dir else _default_state_dir()


def _read(path: str | None, overrides: dict[str, Any] | None, entry: ConfigEntry | None) -> dict[str, Any]:
    """The file's settings merged with ``overrides``, as plain data; raises InvalidInput.

    With ``entry`` (a real run), an input that passed the checks before is only parsed,
    and one that passes them now is remembered.
    """
    from engine import source

    raw: dict[str, Any] = {}
    problems: list[Problem] = []
    doc: Any = None
    if path is not None:
        doc, problems = source.load_file(path)
        # an empty file means "all defaults", like a file of comments only
        problems = [p for p in problems if not p.message.startswith("file is empty")]
        if doc is not None and not isinstance(doc, dict):
            problems.append(Problem(path, 1, 1, "", "the config must be a YAML mapping of settings"))
        elif isinstance(doc, dict):
            raw = doc
    if not problems and entry is not None and entry.passed(_named_state_dir(raw, overrides)):
        raw = _merge(raw, overrides) if overrides else raw
    elif not problems:
        from engine.schema import config_schema
        from engine.validate import schema_problems

        if raw:
            problems = schema_problems(config_schema(), raw, doc, path or "--set")
        if overrides and not problems:  # checked apart, so a bad --set is not blamed on the file
            raw = _merge(raw, overrides)
            problems = schema_problems(config_schema(), raw, None, "--set")
        if not problems and isinstance(raw.get("replication_slot"), str):
            problems = _slot_rule_problems(raw["replication_slot"], doc, path)
    if problems:
        literals = _secret_literals(doc, overrides)  # the schema's messages quote values
        problems = [dataclasses.replace(p, message=_hide(p.message, literals)) for p in problems]
        raise InvalidInput(problems, hint="fix the config file (see docs/configuration.md)")
    plain: dict[str, Any] = source.plain(raw)
    if entry is not None:
        entry.remember(_named_state_dir(plain, overrides), None if _secret_literals(plain) else plain)
    return plain


def _remembered(path: str | None, overrides: dict[str, Any] | None) -> ConfigEntry | None:
    """What the cache holds for the config's current content and ``overrides``."""
    from engine.cache import ConfigEntry, read_source

    data = read_source(path) if path is not None else b""
    return ConfigEntry(data, overrides) if data is not None else None


def load(
    explicit: str | None = None, overrides: dict[str, Any] | None = None, *, remember: bool = False
) -> Config:
    """Load, check and merge the config; raises InvalidInput with every problem found.

    With ``remember`` (a real run), an input that passed the checks before is not checked
    again, and its settings come from the cache without parsing YAML (see engine.cache);
    settings holding a secret's value are not cached, only the fact that they passed.
    """
    path = find_path(explicit)
    entry = _remembered(path, overrides) if remember else None
    raw = entry.data if entry is not None else None
    if raw is None:
        raw = _read(path, overrides, entry)
    data = _merge(DEFAULTS, raw)
    for section, key in PATH_KEYS:
        node = data.get(section) if section else data
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = os.path.expanduser(node[key])
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    secrets, secret_problems = _resolve_secrets(data.get("secrets") or {}, base_dir)
    return Config(data=data, path=path, secrets=secrets, secret_problems=secret_problems)


def find_workflow(name: str, workflows_dir: str) -> str | None:
    """A workflow given as a path, or the file a name stands for in the workflows folder
    (None: no such file). Kept here, not in validate, so a run finds its file without
    importing the checks."""
    if os.sep in name or name.endswith((".yaml", ".yml")):
        return name
    for ext in (".yaml", ".yml"):
        candidate = os.path.join(workflows_dir, name + ext)
        if os.path.exists(candidate):
            return candidate
    return None
