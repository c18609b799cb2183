"""JSON Schemas of the workflow format and of the site config.

The step part is assembled from the registered step kinds, so a new kind
brings its own schema and nothing here changes.  ``pgpool-hook schema``
prints these documents; editors use them through the ``yaml-language-server``
comment at the top of each shipped workflow.
"""

from __future__ import annotations

from typing import Any

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
DURATION = {"type": "number", "exclusiveMinimum": 0}

_TEMPLATE_OR_BOOL = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "boolean"}]}
_IDS = {
    "anyOf": [
        {"type": "string", "pattern": ID_PATTERN},
        {"type": "array", "items": {"type": "string", "pattern": ID_PATTERN}},
    ]
}

COMMON_STEP_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "pattern": ID_PATTERN, "description": "Unique name; results are `steps.<id>`."},
    "description": {"type": "string", "description": "Free text, shown by the dry-run."},
    "when": {**_TEMPLATE_OR_BOOL, "description": "Jinja2 expression; the step is skipped when false."},
    "needs": {**_IDS, "description": "Steps that must finish first (default: the step above)."},
    "retry": {
        "type": "object",
        "additionalProperties": False,
        "description": "Try again after a failure, or poll until a condition holds.",
        "properties": {
            "attempts": {
                "type": "integer",
                "minimum": 1,
                "maximum": 10000,
                "description": "Attempts in all (default 1).",
            },
            "delay": {
                "type": "number",
                "minimum": 0,
                "description": "Seconds before the 2nd attempt (default 1).",
            },
            "backoff": {
                "type": "number",
                "minimum": 1,
                "description": "Factor applied to the delay each time (default 1).",
            },
            "max_delay": {"type": "number", "minimum": 0, "description": "Longest delay, in seconds."},
            "until": {
                "type": "string",
                "minLength": 1,
                "description": "Poll until this is true (uses `result`).",
            },
        },
    },
    "timeout": {**DURATION, "description": "Seconds per attempt; the step is stopped when it runs longer."},
    "on_error": {
        "anyOf": [
            {"enum": ["fail", "continue"]},
            {"type": "string", "pattern": ID_PATTERN},
            {"type": "array", "items": {"type": "string", "pattern": ID_PATTERN}, "minItems": 1},
        ],
        "description": "`fail` (default), `continue` (warn only) or handler id(s) to run instead.",
    },
    "undo": {**_IDS, "description": "Handler id(s) that compensate this step on rollback."},
    "guard": {
        "type": "boolean",
        "description": "A check before anything changes: failure ends the run, no rollback.",
    },
}


# What each field of a step kind means, for editor hovers and docs/reference.md (generated from
# this schema).  Written per kind, so they replace a shared description (like `command`'s).
FIELD_DOCS: dict[str, dict[str, str]] = {
    "sql": {
        "host": "Server to connect to.",
        "port": "Port (default 5432).",
        "database": "Database (default: config `postgres.database`).",
        "user": "User (default: config `postgres.superuser`).",
        "statement": "One SQL statement; fixed text, no Jinja2. Give this or `statements`.",
        "statements": "Statements run in order; the results are the last one's.",
        "params": "Values bound to `%(name)s` (a mapping) or `%s` (a list) placeholders; may use Jinja2.",
        "transaction": "Run all statements in one transaction (default: autocommit).",
        "connect_timeout": "Seconds to connect (default: config `postgres.connect_timeout`).",
    },
    "ssh": {
        "host": "Node to run the command on.",
        "command": "A string (run by the remote user's shell, every `{{ }}` value shell-quoted) "
        "or a list (one argument per item).",
        "user": "SSH user (default: config `ssh.user`).",
        "port": "SSH port (default: config `ssh.port`).",
        "env": "Environment variables for the command.",
        "ok_codes": "Exit statuses that count as success (default [0]).",
    },
    "local": {
        "command": "A list (an argument vector, no shell) or a string (split like a shell would, "
        "values quoted; run by /bin/sh only with `shell: true`).",
        "shell": "Run the string command with /bin/sh -c.",
        "env": "Environment variables added for the program.",
        "cwd": "Working folder.",
        "ok_codes": "Exit statuses that count as success (default [0]).",
        "stdin": "Text given on standard input.",
    },
    "template": {
        "dest": "Absolute path of the file to write.",
        "host": "Write over SFTP on this node (default: the pgpool host).",
        "allow_dotdot": "Allow `..` in `dest` coming from a value.",
    },
    "file": {
        "path": "Absolute path of the file or folder.",
        "host": "Work over SFTP on this node (default: the pgpool host).",
        "state": "`present` (default) or `touch`: exists; `absent`: removed; `line`: exactly one `line`; "
        "`line_absent`: no line matching `regexp`; `empty`: the folder's contents removed.",
        "allow_dotdot": "Allow `..` in `path` coming from a value.",
    },
    "exit": {
        "code": "Exit status 0-255 (default 0).",
        "message": "Jinja2 text for the log and the journal.",
    },
}


def _described(kind_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a kind's schema with the descriptions of FIELD_DOCS."""
    import copy

    schema = copy.deepcopy(schema)
    docs = FIELD_DOCS.get(kind_name, {})
    objects = [schema] + [alt for alt in schema.get("anyOf", []) if alt.get("type") == "object"]
    for obj in objects:
        for field, prop in (obj.get("properties") or {}).items():
            if field in docs:
                prop["description"] = docs[field]
    return schema


def step_schema(kinds: dict[str, Any]) -> dict[str, Any]:
    props = dict(COMMON_STEP_PROPERTIES)
    for name, kind in kinds.items():
        props[name] = _described(name, kind.schema)
    return {
        "type": "object",
        "required": ["id"],
        "additionalProperties": False,
        "properties": props,
    }


def workflow_schema() -> dict[str, Any]:
    from engine.steps import KINDS

    param = {
        "anyOf": [
            {"type": "string", "pattern": ID_PATTERN},
            {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": ID_PATTERN,
                        "description": "The variable the argument is bound to.",
                    },
                    "type": {"enum": ["str", "int", "bool"], "description": "Default `str`."},
                    "default": {"description": "Makes the argument optional."},
                    "description": {"type": "string", "description": "Free text, e.g. pgpool's `%d`."},
                },
            },
        ],
        "description": "A name, or a mapping with `name`, `type`, `default` and `description`.",
    }
    step = step_schema(KINDS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://pgpool-hook.invalid/schema/workflow.json",
        "title": "pgpool-hook workflow",
        "type": "object",
        "required": ["name", "steps"],
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "pattern": ID_PATTERN,
                "description": "The workflow's name: log lines, the journal, the default lock.",
            },
            "description": {"type": "string", "description": "Free text."},
            "params": {
                "type": "array",
                "items": param,
                "description": "The positional arguments, in the order pgpool passes them.",
            },
            "vars": {
                "type": "object",
                "propertyNames": {"pattern": ID_PATTERN},
                "description": "Named values rendered once, in order; the config's `vars` replace them by name.",
            },
            "deadline": {**DURATION, "description": "Seconds for the whole run, rollback excluded."},
            "lock": {
                "type": "string",
                "description": "Jinja2 text naming the lock (default: workflow name).",
            },
            "lock_timeout": {
                "type": "number",
                "minimum": 0,
                "description": "Seconds to wait for the lock (0: the config's `lock_timeout`).",
            },
            "extra_args": {
                "type": "boolean",
                "description": "Accept arguments beyond `params` (default true).",
            },
            "steps": {"type": "array", "minItems": 1, "items": step, "description": "The steps, in order."},
            "handlers": {
                "type": "array",
                "items": step,
                "description": "Steps that run only as another step's `undo` or `on_error` fallback.",
            },
        },
    }


def config_schema() -> dict[str, Any]:
    def s(description: str) -> dict[str, Any]:
        return {"type": "string", "description": description}

    def port(description: str) -> dict[str, Any]:
        return {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}],
            "description": description,
        }

    secret = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "description": "Exactly one source: `env`, `file` or `value`.",
        "properties": {
            "env": s("Read from this environment variable."),
            "file": s("Read from this file (trailing newlines dropped; relative to the config's folder)."),
            "value": s("Written here, in the config itself."),
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://pgpool-hook.invalid/schema/config.json",
        "title": "pgpool-hook configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "workflows_dir": s("Folder where `run NAME` finds NAME.yaml and `validate` looks."),
            "state_dir": s("Folder of the journal (journal.jsonl) and the run locks."),
            "postgres": {
                "type": "object",
                "additionalProperties": False,
                "description": "PostgreSQL on the nodes.",
                "properties": {
                    "bin_dir": s("Folder of pg_ctl, pg_rewind, pg_basebackup, pg_isready."),
                    "superuser": s("Default user of `sql` steps; pg_rewind's source user."),
                    "database": s("Default database of `sql` steps."),
                    "replication_user": s("User of primary_conninfo and pg_basebackup."),
                    "passfile": s("Password file of `sql` steps (absolute: also put in primary_conninfo)."),
                    "password_secret": s("Name of a secret used as the password of `sql` steps."),
                    "conf_file": {
                        "type": ["string", "null"],
                        "description": "The nodes' postgresql.conf when it is not in PGDATA.",
                    },
                    "connect_timeout": {**DURATION, "description": "Seconds to connect in `sql` steps."},
                },
            },
            "ssh": {
                "type": "object",
                "additionalProperties": False,
                "description": "How the hook reaches the nodes.",
                "properties": {
                    "user": s("User on the nodes."),
                    "port": port("SSH port of the nodes."),
                    "key_file": s("Private key; the only credential tried."),
                    "host_key_policy": {
                        "enum": ["strict", "accept-new", "ignore"],
                        "description": "`strict`: known hosts only; `accept-new`: add unknown nodes, "
                        "refuse changed keys; `ignore`: no check (test labs only).",
                    },
                    "known_hosts": s("The known hosts file."),
                    "connect_timeout": {**DURATION, "description": "Seconds to connect to a node."},
                },
            },
            "pcp": {
                "type": "object",
                "additionalProperties": False,
                "description": "pgpool's PCP interface, for pcp_attach_node and friends.",
                "properties": {
                    "host": s("PCP address."),
                    "port": port("PCP port."),
                    "user": s("PCP user."),
                    "bin_dir": s("Folder of the pcp_* programs."),
                    "passfile": s("PCP password file (given as PCPPASSFILE)."),
                },
            },
            "replication_slot": {
                "type": "string",
                "minLength": 1,
                "description": "Jinja2 rule naming a node's slot, from `host`, `port` and `node_id`.",
            },
            "secrets": {
                "type": "object",
                "additionalProperties": secret,
                "description": "Named secrets, used as `{{ secrets.NAME }}` and masked everywhere.",
            },
            "vars": {"type": "object", "description": "Values that replace workflow vars of the same name."},
            "lock_timeout": {
                "type": "number",
                "minimum": 0,
                "description": "Seconds a run waits for its lock, unless the workflow sets one.",
            },
        },
    }
