"""template, file and local steps applied on this host (tmp folders only): change detection,
atomic writes, restore on rollback, timeouts that stop the whole process group."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from engine.errors import StepFailure
from engine.log import Logger
from engine.masking import Masker
from engine.render import Renderer, StepResults
from engine.runtime import Runtime
from engine.steps import KINDS
from engine.transport import local

from .helpers import make_config


@pytest.fixture
def rt() -> Runtime:
    return Runtime(make_config(), Logger("t", "r", Masker(), stream=io.StringIO()))


def r(**values: object) -> Renderer:
    return Renderer({"steps": StepResults({}, False), "config": make_config().data, **values})


def apply(kind: str, body: dict, rt: Runtime, **values: object):  # type: ignore[no-untyped-def,type-arg]
    action = KINDS[kind].plan(body, r(**values))
    return action, KINDS[kind].apply(action, rt, 5)


def test_template_writes_only_when_different_and_reverts(tmp_path: Path, rt: Runtime) -> None:
    dest = tmp_path / "myrecovery.conf"
    dest.write_text("old\n")
    os.chmod(dest, 0o640)
    body = {"dest": str(dest), "content": "primary_slot_name = {{ s | pgquote }}\n"}
    action, out = apply("template", body, rt, s="pg_2")
    assert (out.ok, out.changed, out.data) == (
        True,
        True,
        {"changed": True, "dest": str(dest), "created": False},
    )
    assert dest.read_text() == "primary_slot_name = 'pg_2'\n"
    assert dest.stat().st_mode & 0o777 == 0o640  # the existing mode is kept
    assert [p.name for p in tmp_path.iterdir()] == ["myrecovery.conf"]  # no temporary file left
    _, again = apply("template", body, rt, s="pg_2")
    assert (again.changed, again.message) == (False, "unchanged")
    restored = KINDS["template"].revert(action, out, rt, 5)
    assert restored.ok and dest.read_text() == "old\n"


def test_template_created_file_is_removed_on_revert(tmp_path: Path, rt: Runtime) -> None:
    dest = tmp_path / "new.conf"
    action, out = apply("template", {"dest": str(dest), "content": "x\n", "mode": "0600"}, rt)
    assert out.data["created"] is True and dest.stat().st_mode & 0o777 == 0o600
    KINDS["template"].revert(action, out, rt, 5)
    assert not dest.exists()


@pytest.mark.parametrize(
    ("before", "body", "after", "changed"),
    [
        (None, {"state": "touch"}, "", True),
        ("keep\n", {"state": "present"}, "keep\n", False),
        ("x\n", {"state": "absent"}, None, True),
        (None, {"state": "absent"}, None, False),
        (
            "a\nport = 5432\n",
            {"state": "line", "line": "port = 5433", "regexp": "^port"},
            "a\nport = 5433\n",
            True,
        ),
        (
            "port = 5433\n",
            {"state": "line", "line": "port = 5433", "regexp": "^port"},
            "port = 5433\n",
            False,
        ),
        (None, {"state": "line", "line": "x = 1", "create": True}, "x = 1\n", True),
    ],
)
def test_file_states_and_revert(tmp_path: Path, rt: Runtime, before, body, after, changed) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "f.conf"
    if before is not None:
        path.write_text(before)
    action, out = apply("file", {"path": str(path), **body}, rt)
    assert out.ok and out.changed is changed
    assert (path.read_text() if path.exists() else None) == after
    if changed:
        KINDS["file"].revert(action, out, rt, 5)
        assert (path.read_text() if path.exists() else None) == before


def test_file_line_needs_the_file_unless_create(tmp_path: Path, rt: Runtime) -> None:
    with pytest.raises(StepFailure, match="does not exist"):
        apply("file", {"path": str(tmp_path / "none"), "state": "line", "line": "x"}, rt)


def test_file_empty_removes_contents_only(tmp_path: Path, rt: Runtime) -> None:
    data = tmp_path / "pgdata"
    (data / "base").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "base" / "1").write_text("")
    _, out = apply("file", {"path": str(data), "state": "empty"}, rt)
    assert (out.changed, out.data["removed"]) == (True, 2)
    assert data.is_dir() and list(data.iterdir()) == []


def test_local_command_output_and_failure(rt: Runtime) -> None:
    _, out = apply("local", {"command": ["sh", "-c", "echo one; echo two"]}, rt)
    assert (out.data["rc"], out.data["stdout_lines"]) == (0, ["one", "two"])
    with pytest.raises(StepFailure) as info:
        apply("local", {"command": ["sh", "-c", "echo bad >&2; exit 3"]}, rt)
    assert str(info.value) == "exit status 3: bad"
    assert (info.value.data["rc"], info.value.data["stderr"]) == (3, "bad\n")
    with pytest.raises(StepFailure, match="program not found: /nonexistent/prog"):
        apply("local", {"command": ["/nonexistent/prog"]}, rt)
    _, out = apply("local", {"command": ["sh", "-c", "exit 1"], "ok_codes": [0, 1]}, rt)
    assert out.data["rc"] == 1


def test_local_env_stdin_and_hostile_argument(tmp_path: Path, rt: Runtime) -> None:
    body = {
        "command": "sh -c 'cat; echo \" $X\"' {{ v }}",
        "env": {"X": "{{ v }}"},
        "stdin": "in",
        "cwd": str(tmp_path),
    }
    _, out = apply("local", body, rt, v="$(touch pwned)")
    assert out.data["stdout"] == "in $(touch pwned)\n"
    assert list(tmp_path.iterdir()) == []


def test_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    start = time.monotonic()
    res = local.run(["sh", "-c", f"(sleep 0.6; touch {marker}) & sleep 30"], timeout=0.3)
    assert res.timed_out and res.rc == -1
    assert time.monotonic() - start < 3
    time.sleep(0.8)
    assert not marker.exists()  # the background child was stopped too


def test_local_step_timeout_is_a_failure(rt: Runtime) -> None:
    action = KINDS["local"].plan({"command": ["sleep", "30"]}, r())
    with pytest.raises(StepFailure) as info:
        KINDS["local"].apply(action, rt, 0.2)
    assert info.value.timed_out is True
    assert str(info.value) == "timed out after 0.2s; process group stopped"
