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
    "description": {"type": "string"},
    "when": {**_TEMPLATE_OR_BOOL, "description": "Jinja2 expression; the step is skipped when false."},
    "needs": {**_IDS, "description": "Steps that must finish first (default: the step above)."},
    "retry": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "attempts": {"type": "integer", "minimum": 1, "maximum": 10000},
            "delay": {"type": "number", "minimum": 0},
            "backoff": {"type": "number", "minimum": 1},
            "max_delay": {"type": "number", "minimum": 0},
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


def step_schema(kinds: dict[str, Any]) -> dict[str, Any]:
    props = dict(COMMON_STEP_PROPERTIES)
    for name, kind in kinds.items():
        props[name] = kind.schema
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
                    "name": {"type": "string", "pattern": ID_PATTERN},
                    "type": {"enum": ["str", "int", "bool"]},
                    "default": {},
                    "description": {"type": "string"},
                },
            },
        ]
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
            "name": {"type": "string", "pattern": ID_PATTERN},
            "description": {"type": "string"},
            "params": {"type": "array", "items": param},
            "vars": {"type": "object", "propertyNames": {"pattern": ID_PATTERN}},
            "deadline": {**DURATION, "description": "Seconds for the whole run, rollback excluded."},
            "lock": {
                "type": "string",
                "description": "Jinja2 text naming the lock (default: workflow name).",
            },
            "lock_timeout": {"type": "number", "minimum": 0},
            "extra_args": {
                "type": "boolean",
                "description": "Accept arguments beyond `params` (default true).",
            },
            "steps": {"type": "array", "minItems": 1, "items": step},
            "handlers": {"type": "array", "items": step},
        },
    }


def config_schema() -> dict[str, Any]:
    s = {"type": "string"}
    port = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]}
    secret = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {"env": s, "file": s, "value": s},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://pgpool-hook.invalid/schema/config.json",
        "title": "pgpool-hook configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "workflows_dir": s,
            "state_dir": s,
            "postgres": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "bin_dir": s,
                    "superuser": s,
                    "database": s,
                    "replication_user": s,
                    "passfile": s,
                    "password_secret": s,
                    "conf_file": {"type": ["string", "null"]},
                    "connect_timeout": DURATION,
                },
            },
            "ssh": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "user": s,
                    "port": port,
                    "key_file": s,
                    "host_key_policy": {"enum": ["strict", "accept-new", "ignore"]},
                    "known_hosts": s,
                    "connect_timeout": DURATION,
                },
            },
            "pcp": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"host": s, "port": port, "user": s, "bin_dir": s, "passfile": s},
            },
            "replication_slot": {"type": "string", "minLength": 1},
            "secrets": {"type": "object", "additionalProperties": secret},
            "vars": {"type": "object"},
            "lock_timeout": {"type": "number", "minimum": 0},
        },
    }
