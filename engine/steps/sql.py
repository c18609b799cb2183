"""``sql``: statements on a PostgreSQL server through psycopg 3.

The statement text is fixed in the workflow and may not contain Jinja: every
value travels as a bound parameter (``%(slot)s``), so nothing from pgpool's
arguments can change the SQL.  Autocommit is the default because CHECKPOINT
and the replication-slot functions refuse to run inside a transaction block;
``transaction: true`` wraps several statements in one.  Passwords come from
the passfile or a config secret, never from the workflow.
"""

from __future__ import annotations

import time
from typing import Any

from engine.errors import StepFailure
from engine.render import Renderer
from engine.steps.base import Action, Outcome

_SCALAR = {"type": ["string", "number", "boolean", "null"]}


class SqlKind:
    name = "sql"
    schema: dict[str, Any] = {
        "description": "Run SQL on a PostgreSQL server (values as bound parameters).",
        "type": "object",
        "required": ["host"],
        "additionalProperties": False,
        "properties": {
            "host": {"type": "string"},
            "port": {"type": ["string", "integer"]},
            "database": {"type": "string"},
            "user": {"type": "string"},
            "statement": {"type": "string", "minLength": 1},
            "statements": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            "params": {
                "anyOf": [
                    {"type": "object", "additionalProperties": _SCALAR},
                    {"type": "array", "items": _SCALAR},
                ]
            },
            "transaction": {"type": "boolean"},
            "connect_timeout": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    def check(self, body: Any, workflow_dir: str) -> list[tuple[tuple[Any, ...], str]]:
        out: list[tuple[tuple[Any, ...], str]] = []
        if ("statement" in body) == ("statements" in body):
            out.append(((), "give exactly one of `statement` or `statements`"))
        texts = (
            [("statement", body["statement"])]
            if "statement" in body
            else [(("statements", i), s) for i, s in enumerate(body.get("statements") or [])]
        )
        for where, text in texts:
            if "{{" in text or "{%" in text:
                rel = where if isinstance(where, tuple) else (where,)
                out.append((rel, "SQL text cannot contain Jinja2; pass values in `params` and use %(name)s"))
        return out

    def plan(self, body: Any, r: Renderer) -> Action:
        cfg = r.context.get("config") or {}
        pg = cfg.get("postgres", {}) if isinstance(cfg, dict) else {}
        host = r.text(body["host"], "host")
        port = r.text(str(body.get("port", "5432")), "port")
        database = r.text(body.get("database", pg.get("database", "postgres")), "database")
        user = r.text(body.get("user", pg.get("superuser", "postgres")), "user")
        statements = [body["statement"]] if "statement" in body else list(body["statements"])
        params = r.value(body.get("params")) if body.get("params") is not None else None
        target = f"{host}:{port}/{database}"
        text = [f"-- as {user} on {target}" + (" (one transaction)" if body.get("transaction") else "")]
        for stmt in statements:
            text += [stmt.rstrip().rstrip(";") + ";"]
        if params is not None:
            text.append(f"-- params: {params!r}")
        return Action(
            kind=self.name,
            target=target,
            summary=" ".join(statements[0].split())[:100],
            details={
                "host": host,
                "port": port,
                "database": database,
                "user": user,
                "statements": statements,
                "params": params,
                "transaction": bool(body.get("transaction")),
                "connect_timeout": body.get("connect_timeout", pg.get("connect_timeout", 10)),
            },
            text=text,
        )

    def apply(self, action: Action, rt: Any, timeout: float | None) -> Outcome:
        import psycopg
        from psycopg.rows import dict_row

        d = action.details
        connect_timeout = d["connect_timeout"]
        if timeout is not None:
            connect_timeout = min(connect_timeout, timeout)
        kwargs: dict[str, Any] = {
            "host": d["host"],
            "port": d["port"],
            "dbname": d["database"],
            "user": d["user"],
            "connect_timeout": max(int(connect_timeout + 0.999), 1),
            "application_name": "pgpool-hook",
        }
        passfile = rt.config.path_value("postgres.passfile")
        if passfile:
            kwargs["passfile"] = passfile
        secret = rt.config.get("postgres.password_secret")
        if secret and secret in rt.config.secrets:
            kwargs["password"] = rt.config.secrets[secret]
        if timeout is not None:
            kwargs["options"] = f"-c statement_timeout={max(int(timeout * 1000), 1)}"
        start = time.monotonic()
        try:
            with psycopg.connect(autocommit=not d["transaction"], row_factory=dict_row, **kwargs) as conn:
                rows: list[dict[str, Any]] = []
                rowcount = -1
                with conn.cursor() as cur:
                    for stmt in d["statements"]:
                        cur.execute(stmt, d["params"])
                        rowcount = cur.rowcount
                        rows = [dict(row) for row in cur.fetchall()] if cur.description else []
        except psycopg.errors.QueryCanceled as exc:
            raise StepFailure(
                f"statement timed out after {timeout:g}s", {"sqlstate": exc.sqlstate}, timed_out=True
            ) from None
        except psycopg.Error as exc:
            detail = (str(exc).strip().splitlines() or ["error"])[0]
            elapsed = time.monotonic() - start
            timed_out = timeout is not None and elapsed >= timeout * 0.95 and exc.sqlstate is None
            raise StepFailure(detail, {"sqlstate": exc.sqlstate}, timed_out=timed_out) from None
        rows = [{k: _jsonable(v) for k, v in row.items()} for row in rows]
        return Outcome(
            ok=True,
            data={"rows": rows, "row": rows[0] if rows else None, "rowcount": rowcount},
            message=f"{len(rows)} row(s)" if rows else f"rowcount {rowcount}",
        )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


KIND = SqlKind()
