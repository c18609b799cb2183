"""The runner with a fake step kind and a fake clock: retries, polling, fallbacks, rollback, exits."""

from __future__ import annotations

import pytest

from engine.conductor import Status
from engine.errors import Interrupted
from engine.interpreter import DEFAULT_TIMEOUT


def steps(*lines: str) -> str:
    return "name: t\nsteps:\n" + "".join(lines)


def step(name: str, *extra: str) -> str:
    return f"  - id: {name}\n    local: [{name}]\n" + "".join(f"    {e}\n" for e in extra)


def handler(name: str, *extra: str) -> str:
    return step(name, *extra)


def statuses(h) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {sid: st.value for sid, st in h.runner.conductor.status.items()}


# ---- retry and backoff ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "failures", "calls", "sleeps", "code"),
    [
        ("{attempts: 5, delay: 1, backoff: 2, max_delay: 5}", 4, 5, [1, 2, 4, 5], 0),
        ("{attempts: 5, delay: 1, backoff: 2, max_delay: 5}", 9, 5, [1, 2, 4, 5], 1),
        ("{attempts: 3, delay: 0.5}", 1, 2, [0.5], 0),
        ("{attempts: 4, delay: 2, backoff: 3}", 9, 4, [2, 6, 18], 1),
        ("{attempts: 1}", 1, 1, [], 1),
        ("{attempts: 3, delay: 0}", 2, 3, [0, 0], 0),
    ],
)
def test_retry_counts_and_backoff(harness, retry, failures, calls, sleeps, code) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", f"retry: {retry}")), {"a": ["fail"] * failures})
    result = h.run()
    assert h.kind.calls == ["a"] * calls
    assert h.clock.sleeps == sleeps
    assert result.exit_code == code
    assert h.results["a"]["attempts"] == calls
    assert h.results["a"]["ok"] is (code == 0)


def test_default_retry_delay_is_one_second(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", "retry: {attempts: 3}")), {"a": ["fail", "fail"]})
    assert h.run().exit_code == 0
    assert h.clock.sleeps == [1.0, 1.0]


def test_until_polls_for_a_state(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("promoted", "retry: {attempts: 10, delay: 2, until: 'not result.in_recovery'}")),
        {"promoted": [{"in_recovery": True}, {"in_recovery": True}, {"in_recovery": False}]},
    )
    assert h.run().exit_code == 0
    assert h.kind.calls == ["promoted"] * 3
    assert h.clock.sleeps == [2, 2]
    assert h.results["promoted"]["in_recovery"] is False


def test_until_never_true_fails_the_step(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", "retry: {attempts: 3, delay: 1, until: 'result.rc == 7'}")))
    result = h.run()
    assert (result.exit_code, result.failed_step) == (1, "a")
    assert h.kind.calls == ["a"] * 3
    assert h.results["a"]["message"] == "until (result.rc == 7) not yet true"


def test_unexpected_exception_is_an_errored_outcome(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a")), {"a": ["error"]})
    result = h.run()
    assert result.exit_code == 1
    assert h.results["a"]["message"] == "RuntimeError: boom"
    final = [e for e in h.journal.events if e["event"] == "step"][-1]
    assert (final["step"], final["status"], final["errored"]) == ("a", "failed", True)


# ---- timeouts and the run deadline ---------------------------------------------------


def test_timeout_is_passed_per_attempt(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "timeout: 5", "retry: {attempts: 2, delay: 1}"), step("b")), {"a": ["timeout"]}
    )
    assert h.run().exit_code == 0
    assert h.kind.timeouts == [5, 5, DEFAULT_TIMEOUT]


def test_deadline_shortens_the_attempt_timeout(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        "deadline: 30\n" + steps(step("a", "timeout: 100"), step("b", "timeout: 100")), {"a": [("ok", 12)]}
    )
    assert h.run().exit_code == 0
    assert h.kind.timeouts == [30, 18]


def test_deadline_reached_stops_before_the_next_step_and_rolls_back(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        "deadline: 10\n" + steps(step("a", "undo: ua"), step("b")) + "handlers:\n" + handler("ua"),
        {"a": [("ok", 11)]},
    )
    result = h.run()
    assert (result.exit_code, result.status) == (1, "rolled-back")
    assert result.message == "step b failed: run deadline of 10s reached before this step; rolled back"
    assert h.kind.calls == ["a", "ua"]
    assert statuses(h) == {"a": "succeeded", "b": "cancelled"}


def test_deadline_reached_before_a_retry(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        "deadline: 10\n" + steps(step("a", "retry: {attempts: 5, delay: 4}")),
        {"a": [("fail", 3), ("fail", 3), "ok"]},
    )
    result = h.run()
    assert result.exit_code == 1
    assert h.kind.calls == ["a", "a"]  # 3s + 4s wait + 3s = 10s: no time for another 4s wait
    assert h.clock.sleeps == [4]
    assert h.results["a"]["message"] == "exit status 1; run deadline reached before retry"


# ---- on_error ------------------------------------------------------------------------


def test_on_error_continue(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("warn", "on_error: continue"), step("b", "when: not steps.warn.ok")), {"warn": ["fail"]}
    )
    result = h.run()
    assert (result.exit_code, result.status) == (0, "succeeded")
    assert h.kind.calls == ["warn", "b"]
    assert statuses(h) == {"warn": Status.CONTINUED.value, "b": "succeeded"}
    assert "outcome=continuing on_error: continue" in h.log


def test_fallback_success_continues_the_run(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "on_error: [fb1, fb2]"), step("b")) + "handlers:\n" + handler("fb1") + handler("fb2"),
        {"a": ["fail"]},
    )
    result = h.run()
    assert result.exit_code == 0
    assert h.kind.calls == ["a", "fb1", "fb2", "b"]
    assert statuses(h) == {"a": "recovered", "b": "succeeded"}


def test_fallback_failure_fails_the_run(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "on_error: fb"), step("b")) + "handlers:\n" + handler("fb"),
        {"a": ["fail"], "fb": ["fail"]},
    )
    result = h.run()
    assert (result.exit_code, result.failed_step) == (1, "a")
    assert h.kind.calls == ["a", "fb"]
    assert statuses(h) == {"a": "failed", "b": "cancelled"}


def test_fallback_skipped_by_its_when_fails_the_run(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "on_error: fb")) + "handlers:\n" + handler("fb", "when: false"), {"a": ["fail"]}
    )
    assert h.run().exit_code == 1
    assert h.kind.calls == ["a"]


# ---- rollback ------------------------------------------------------------------------

UNDOS = "handlers:\n" + "".join(handler(f"u{x}") for x in "abcd")


def test_rollback_in_reverse_order_of_completion_including_the_failed_step(harness) -> None:  # type: ignore[no-untyped-def]
    # file order a b c d; needs make the run order b, c, a, d; d fails
    wf = steps(
        step("a", "undo: ua", "needs: [c]"),
        step("b", "undo: ub", "needs: []"),
        step("c", "undo: uc", "needs: []"),
        step("d", "undo: ud", "needs: [a]"),
    )
    h = harness(wf + UNDOS, {"d": ["fail"]})
    result = h.run()
    assert (result.exit_code, result.status, result.failed_step) == (1, "rolled-back", "d")
    assert h.kind.calls == ["b", "c", "a", "d", "ud", "ua", "uc", "ub"]
    assert result.message == "step d failed: exit status 1; rolled back"
    rollback = [e for e in h.journal.events if e["event"] == "rollback"]
    assert rollback == [{"event": "rollback", "steps": ["d", "a", "c", "b"]}]


def test_undo_failure_exits_3_and_the_other_undos_still_run(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "undo: ua"), step("b", "undo: ub"), step("c", "undo: uc")) + UNDOS,
        {"c": ["fail"], "ub": ["fail"]},
    )
    result = h.run()
    assert (result.exit_code, result.status) == (3, "rollback-incomplete")
    assert result.message == "step c failed: exit status 1; rollback INCOMPLETE"
    assert h.kind.calls == ["a", "b", "c", "uc", "ub", "ua"]
    assert "outcome=undo-failed undo ub of b failed; continuing" in h.log


def test_undo_has_its_own_retry(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "undo: ua"), step("b"))
        + "handlers:\n"
        + handler("ua", "retry: {attempts: 3, delay: 7}"),
        {"b": ["fail"], "ua": ["fail", "fail"]},
    )
    assert h.run().exit_code == 1
    assert h.kind.calls == ["a", "b", "ua", "ua", "ua"]
    assert h.clock.sleeps == [7, 7]


def test_several_undos_of_one_step_run_in_the_order_written(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", "undo: [ub, ua]"), step("b")) + UNDOS, {"b": ["fail"]})
    h.run()
    assert h.kind.calls == ["a", "b", "ub", "ua"]


def test_skipped_and_unstarted_steps_are_not_undone(harness) -> None:  # type: ignore[no-untyped-def]
    wf = steps(
        step("a", "undo: ua"),
        step("b", "undo: ub", "when: false"),
        step("c", "undo: uc"),
        step("d", "undo: ud"),
    )
    h = harness(wf + UNDOS, {"c": ["fail"]})
    result = h.run()
    assert result.exit_code == 1
    assert h.kind.calls == ["a", "c", "uc", "ua"]
    assert statuses(h) == {"a": "succeeded", "b": "skipped", "c": "failed", "d": "cancelled"}
    assert h.results["b"] == {"ok": False, "skipped": True, "status": "skipped"}


def test_a_step_that_failed_to_render_never_started_and_is_not_undone(harness) -> None:  # type: ignore[no-untyped-def]
    wf = steps(step("a", "undo: ua"), "  - id: b\n    local: ['{{ steps.a.nope }}']\n    undo: ub\n")
    h = harness(wf + UNDOS)
    result = h.run()
    assert (result.exit_code, result.failed_step) == (1, "b")
    assert h.kind.calls == ["a", "ua"]
    assert "has no attribute 'nope'" in h.results["b"]["message"]


def test_an_unexpected_error_in_plan_fails_the_step_and_rolls_back(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", "undo: ua"), step("crash", "undo: ub")) + UNDOS)
    result = h.run()
    assert (result.exit_code, result.status, result.failed_step) == (1, "rolled-back", "crash")
    assert h.results["crash"]["message"] == "KeyError: 'oops'"
    assert h.kind.calls == ["a", "ua"]


def test_guard_failure_exits_1_without_rollback(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "undo: ua"), step("check", "guard: true"), step("c")) + UNDOS, {"check": ["fail"]}
    )
    result = h.run()
    assert (result.exit_code, result.status, result.failed_step) == (1, "failed", "check")
    assert result.message == "guard check failed: exit status 1; nothing was changed, no rollback"
    assert h.kind.calls == ["a", "check"]


def test_interrupt_rolls_back_the_started_steps(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", "undo: ua"), step("b", "undo: ub"), step("c")) + UNDOS)
    real_apply = h.kind.apply

    def apply(action, rt, timeout):  # type: ignore[no-untyped-def]
        if action.details["name"] == "b":
            h.kind.calls.append("b")
            raise Interrupted("SIGTERM")
        return real_apply(action, rt, timeout)

    h.kind.apply = apply
    result = h.run()
    assert (result.exit_code, result.status) == (1, "interrupted")
    assert result.message == "interrupted; rolled back"
    assert h.kind.calls == ["a", "b", "ub", "ua"]


# ---- exit steps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_body", "code", "calls"),
    [
        ("0", 0, ["a"]),
        ("{code: 0, message: nothing to do}", 0, ["a"]),
        ("{code: 5, message: odd}", 5, ["a"]),
        ("{code: 5, rollback: true}", 5, ["a", "ua"]),
        ("{code: 0, rollback: true}", 0, ["a", "ua"]),
    ],
)
def test_exit_step_ends_the_run_with_its_code(harness, exit_body: str, code: int, calls: list[str]) -> None:  # type: ignore[no-untyped-def]
    h = harness(steps(step("a", "undo: ua"), f"  - id: stop\n    exit: {exit_body}\n", step("never")) + UNDOS)
    result = h.run()
    assert (result.exit_code, result.status) == (code, "exited")
    assert h.kind.calls == calls
    assert statuses(h)["never"] == "cancelled"


def test_exit_with_rollback_that_fails_is_exit_3_for_code_0(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("a", "undo: ua"), "  - id: stop\n    exit: {code: 0, rollback: true}\n") + UNDOS,
        {"ua": ["fail"]},
    )
    assert h.run().exit_code == 3


def test_exit_step_with_false_when_is_skipped(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        "params: [{name: n, type: int}]\n"
        + steps(
            "  - id: stop\n    when: n < 0\n    exit: {code: 0, message: 'node {{ n }}'}\n", step("work")
        ),
        args=["2"],
    )
    assert h.run().exit_code == 0
    assert h.kind.calls == ["work"]


def test_results_of_earlier_steps_feed_later_ones(harness) -> None:  # type: ignore[no-untyped-def]
    h = harness(
        steps(step("probe"), "  - id: use\n    local: ['{{ steps.probe.rc }}-{{ steps.probe.attempts }}']\n"),
        {"probe": [{"rc": 0, "stdout": "x"}]},
    )
    assert h.run().exit_code == 0
    assert h.kind.calls == ["probe", "0-1"]
    assert h.results["probe"] == {
        "rc": 0,
        "stdout": "x",
        "ok": True,
        "status": "succeeded",
        "message": "done",
        "attempts": 1,
        "changed": False,
    }
