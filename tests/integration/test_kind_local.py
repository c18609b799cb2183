"""``local`` steps: real processes on this host; effects checked with ps and the filesystem."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kindtools import KindRunner
from proctools import processes_matching, unique_sleep, wait_no_process

from engine.errors import Interrupted

HOSTILE = ["$(touch {m})", "`touch {m}`", "; touch {m}", "a\ntouch {m}", "' \" {m}", "two  words {m}", "* ?"]


@pytest.mark.parametrize("template", HOSTILE)
def test_argv_and_shell_quoting_keep_values_literal(
    local_runner: KindRunner, tmp_path: Path, template: str
) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    value = template.format(m=marker)
    argv = local_runner.apply("local", {"command": ["printf", "%s|", "{{ v }}", "end"]}, v=value)
    assert argv.data["stdout"] == f"{value}|end|"
    shell = local_runner.apply("local", {"command": "printf '%s|' {{ v }} end", "shell": True}, v=value)
    assert shell.data["stdout"] == f"{value}|end|"
    plain = local_runner.apply(
        "local", "printf %s| {{ v }}", v=value
    )  # a plain string is split, then rendered
    assert plain.data["stdout"] == f"{value}|"
    assert not marker.exists()


def test_trusted_opts_out_of_quoting(local_runner: KindRunner) -> None:
    out = local_runner.apply(
        "local", {"command": "echo {{ a | trusted }} {{ b }}", "shell": True}, a="$((1+2))", b="$((1+2))"
    )
    assert out.data["stdout"] == "3 $((1+2))\n"


def test_env_cwd_stdin_and_exit_codes(local_runner: KindRunner, tmp_path: Path) -> None:
    value = "$(id) 'x'"
    out = local_runner.apply(
        "local",
        {"command": ["sh", "-c", 'printf "%s|%s|" "$GREETING" "$(pwd)"; cat'], "env": {"GREETING": "{{ v }}"},
         "cwd": str(tmp_path), "stdin": "from stdin"},
        v=value,
    )  # fmt: skip
    assert out.data["stdout"] == f"{value}|{tmp_path}|from stdin"
    failure = local_runner.fail("local", {"command": ["sh", "-c", "echo bad >&2; exit 4"]})
    assert failure.data["rc"] == 4 and "exit status 4: bad" in str(failure)
    assert local_runner.apply("local", {"command": ["sh", "-c", "exit 4"], "ok_codes": [4]}).ok
    missing = local_runner.fail("local", ["/nonexistent/pg_isready"])
    assert missing.data["rc"] == 127


def test_timeout_kills_the_whole_process_group(local_runner: KindRunner) -> None:
    fg, bg, grandchild = unique_sleep(), unique_sleep(), unique_sleep()
    start = time.monotonic()
    failure = local_runner.fail(
        "local",
        {
            "command": f"sleep {bg} & sh -c 'sleep {grandchild}; true' & echo started; sleep {fg}",
            "shell": True,
        },
        timeout=1,
    )
    elapsed = time.monotonic() - start
    assert failure.timed_out and "process group stopped" in str(failure)
    assert elapsed < 3.5, elapsed
    for arg in (fg, bg, grandchild):
        assert wait_no_process(f"sleep {arg}") == [], arg
    assert [line for _, _, line in local_runner.lines] == ["started"]


def test_interrupt_stops_the_process_group(local_runner: KindRunner) -> None:
    from engine.transport import local

    arg = unique_sleep()

    def on_line(stream: str, line: str) -> None:
        assert processes_matching(f"sleep {arg}")
        raise Interrupted("SIGTERM")

    with pytest.raises(Interrupted):
        local.run(f"echo started; sleep {arg}", shell=True, timeout=None, on_line=on_line)
    assert wait_no_process(f"sleep {arg}") == []
