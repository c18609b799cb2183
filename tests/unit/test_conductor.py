"""The conductor: status transitions as a table, and which steps may start."""

from __future__ import annotations

import pytest

from engine import validate
from engine.conductor import TRANSITIONS, BadTransition, Conductor, Status

ALLOWED = {
    (Status.PENDING, Status.RUNNING),
    (Status.PENDING, Status.SKIPPED),
    (Status.PENDING, Status.CANCELLED),
    (Status.PENDING, Status.DONE),
    (Status.RUNNING, Status.SUCCEEDED),
    (Status.RUNNING, Status.SKIPPED),
    (Status.RUNNING, Status.FAILED),
    (Status.RUNNING, Status.CONTINUED),
    (Status.RUNNING, Status.RECOVERED),
}


def conductor(write, steps: str) -> Conductor:  # type: ignore[no-untyped-def]
    return Conductor(validate.load_workflow(write("name: t\nsteps:\n" + steps)))


def test_transition_table_is_exactly_the_documented_one() -> None:
    table = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize("old", list(Status))
@pytest.mark.parametrize("new", list(Status))
def test_set_follows_the_table(write, old: Status, new: Status) -> None:  # type: ignore[no-untyped-def]
    c = conductor(write, "  - id: a\n    exit: 0\n")
    c.status["a"] = old
    if (old, new) in ALLOWED:
        c.set("a", new)
        assert c.status["a"] is new
    else:
        with pytest.raises(
            BadTransition, match=f"step a: {old.value} -> {new.value} is not a valid transition"
        ):
            c.set("a", new)
        assert c.status["a"] is old


def run_all(c: Conductor, outcome: dict[str, Status] | None = None) -> list[str]:
    """Drive the conductor like the runner does: first ready step, one at a time."""
    order = []
    while ready := c.ready():
        step = ready[0]
        c.set(step.id, Status.RUNNING)
        result = (outcome or {}).get(step.id, Status.SUCCEEDED)
        c.set(step.id, result)
        order.append(step.id)
        if result is Status.FAILED:
            c.stop("failed")
    return order


def test_file_order_by_default(write) -> None:  # type: ignore[no-untyped-def]
    c = conductor(write, "".join(f"  - id: {s}\n    exit: 0\n" for s in "dcba"))
    assert [s.needs for s in c.steps] == [(), ("d",), ("c",), ("b",)]
    assert [s.id for s in c.ready()] == ["d"]
    assert run_all(c) == ["d", "c", "b", "a"]


def test_needs_dag_order(write) -> None:  # type: ignore[no-untyped-def]
    c = conductor(
        write,
        "  - id: a\n    exit: 0\n    needs: [c]\n"
        "  - id: b\n    exit: 0\n    needs: []\n"
        "  - id: c\n    exit: 0\n    needs: []\n"
        "  - id: d\n    exit: 0\n    needs: [a, b]\n",
    )
    assert [s.id for s in c.ready()] == ["b", "c"]
    assert run_all(c) == ["b", "c", "a", "d"]


@pytest.mark.parametrize("status", [Status.SKIPPED, Status.CONTINUED, Status.RECOVERED])
def test_skipped_continued_and_recovered_satisfy_needs(write, status: Status) -> None:  # type: ignore[no-untyped-def]
    c = conductor(write, "  - id: a\n    exit: 0\n  - id: b\n    exit: 0\n")
    assert run_all(c, {"a": status}) == ["a", "b"]


def test_failure_stops_and_cancels_the_rest(write) -> None:  # type: ignore[no-untyped-def]
    c = conductor(
        write, "  - id: a\n    exit: 0\n  - id: b\n    exit: 0\n  - id: c\n    exit: 0\n    needs: []\n"
    )
    assert run_all(c, {"a": Status.FAILED}) == ["a"]
    assert c.stopped == "failed"
    assert c.status == {"a": Status.FAILED, "b": Status.CANCELLED, "c": Status.CANCELLED}
    assert c.ready() == [] and c.finished()
    assert c.blocked() == []


def test_stop_keeps_the_first_reason(write) -> None:  # type: ignore[no-untyped-def]
    c = conductor(write, "  - id: a\n    exit: 0\n")
    c.stop("deadline")
    c.stop("interrupted")
    assert (c.stopped, c.status["a"]) == ("deadline", Status.CANCELLED)


def test_done_before_counts_as_satisfied(write) -> None:  # type: ignore[no-untyped-def]
    c = conductor(write, "  - id: a\n    exit: 0\n  - id: b\n    exit: 0\n")
    c.set("a", Status.DONE)
    assert run_all(c) == ["b"]
