"""``sql`` steps against a real PostgreSQL 15 server; state checked over a separate connection."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kindtools import KindRunner

HOSTILE = "'); DROP TABLE {table}; --"


@pytest.fixture
def pg(make_runner: Callable[..., KindRunner], pg_primary: Any) -> KindRunner:
    return make_runner(postgres={"passfile": str(pg_primary.passfile), "connect_timeout": 3})


@pytest.fixture
def table(pg_primary: Any) -> Iterator[str]:
    name = f"victim_{uuid.uuid4().hex[:10]}"
    pg_primary.query(f"CREATE TABLE {name} (id serial PRIMARY KEY, x text)")
    pg_primary.query(f"INSERT INTO {name} (x) VALUES ('keep')")
    yield name
    pg_primary.query(f"DROP TABLE IF EXISTS {name}")


def body(node: Any, **fields: Any) -> dict[str, Any]:
    return {"host": node.address, "port": node.port, **fields}


def slot_names(node: Any) -> list[str]:
    return [s["slot_name"] for s in node.slots()]


def test_autocommit_checkpoint_and_replication_slot(pg: KindRunner, pg_primary: Any) -> None:
    slot = f"it_{uuid.uuid4().hex[:8]}"
    assert pg.apply("sql", body(pg_primary, statement="CHECKPOINT")).ok
    created = pg.apply(
        "sql",
        body(pg_primary, statement="SELECT slot_name FROM pg_create_physical_replication_slot(%(slot)s)",
             params={"slot": "{{ name }}"}),
        name=slot,
    )  # fmt: skip
    assert created.data["rows"] == [{"slot_name": slot}]
    assert slot in slot_names(pg_primary)
    pg.apply("sql", body(pg_primary, statement="SELECT pg_drop_replication_slot(%(s)s)", params={"s": slot}))
    assert slot not in slot_names(pg_primary)


def test_hostile_value_is_a_bound_parameter_and_alters_nothing(
    pg: KindRunner, pg_primary: Any, table: str
) -> None:
    value = HOSTILE.format(table=table)
    pg.apply("sql", body(pg_primary, statement=f"INSERT INTO {table} (x) VALUES (%(v)s)", params={"v": "{{ v }}"}),
             v=value)  # fmt: skip
    rows = pg.apply("sql", body(pg_primary, statement=f"SELECT x FROM {table} WHERE x = %(v)s", params={"v": "{{ v }}"}),
                    v=value)  # fmt: skip
    assert rows.data["rows"] == [{"x": value}]
    # seen from outside: the table still exists with both rows, the hostile one verbatim
    assert pg_primary.query(f"SELECT x FROM {table} ORDER BY id") == [("keep",), (value,)]


def test_rows_are_mappings(pg: KindRunner, pg_primary: Any) -> None:
    out = pg.apply(
        "sql",
        body(pg_primary, statement="SELECT 1 AS a, 'two' AS b, NULL AS c, true AS d, '0/3000000'::pg_lsn AS lsn "
                                   "UNION ALL SELECT 2, 'three', NULL, false, '0/0'::pg_lsn ORDER BY a"),
    )  # fmt: skip
    assert out.data["rows"] == [
        {"a": 1, "b": "two", "c": None, "d": True, "lsn": "0/3000000"},
        {"a": 2, "b": "three", "c": None, "d": False, "lsn": "0/0"},
    ]
    assert out.data["row"] == out.data["rows"][0]


def test_transaction_commits_all_or_nothing(pg: KindRunner, pg_primary: Any, table: str) -> None:
    ok = pg.apply("sql", body(pg_primary, transaction=True, statements=[
        f"INSERT INTO {table} (x) VALUES ('t1')", f"INSERT INTO {table} (x) VALUES ('t2')"]))  # fmt: skip
    assert ok.ok
    failure = pg.fail("sql", body(pg_primary, transaction=True, statements=[
        f"INSERT INTO {table} (x) VALUES ('lost1')", f"INSERT INTO {table} (x) VALUES ('lost2')",
        "SELECT 1/0"]))  # fmt: skip
    assert "division by zero" in str(failure) and failure.data["sqlstate"] == "22012"
    assert [r[0] for r in pg_primary.query(f"SELECT x FROM {table} ORDER BY id")] == ["keep", "t1", "t2"]
    # without transaction: true each statement commits on its own
    pg.fail("sql", body(pg_primary, statements=[f"INSERT INTO {table} (x) VALUES ('auto')", "SELECT 1/0"]))
    assert pg_primary.scalar(f"SELECT count(*) FROM {table} WHERE x = 'auto'") == 1


def test_statement_timeout_is_enforced_on_the_server(pg: KindRunner, pg_primary: Any) -> None:
    tag = f"sleep-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    failure = pg.fail("sql", body(pg_primary, statement=f"SELECT pg_sleep(30) /* {tag} */"), timeout=1)
    assert time.monotonic() - start < 2.5
    assert failure.timed_out and "timed out after 1s" in str(failure)
    active = pg_primary.query("SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                              [f"%{tag}%"])  # fmt: skip
    assert active == []  # the server stopped the statement; nothing is left running


def test_closed_port_fails_fast(pg: KindRunner, pg_primary: Any) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((pg_primary.address, 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    failure = pg.fail("sql", {"host": pg_primary.address, "port": port, "statement": "SELECT 1"})
    assert time.monotonic() - start < 1
    assert "refused" in str(failure).lower()


def test_silent_listener_fails_within_the_connect_timeout(pg: KindRunner, pg_primary: Any) -> None:
    with socket.socket() as listener:  # completes the TCP handshake, never answers the startup packet
        listener.bind((pg_primary.address, 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        start = time.monotonic()
        failure = pg.fail("sql", {"host": pg_primary.address, "port": port, "statement": "SELECT 1",
                                  "connect_timeout": 2}, timeout=30)  # fmt: skip
        elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 3.5, elapsed  # libpq's minimum connect timeout is 2 s
    assert "timeout" in str(failure).lower()
