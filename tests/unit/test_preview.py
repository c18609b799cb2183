"""`run --dry-run --diff` for file steps: read-only unified diffs; the closing line; colour rules."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from engine import context, plan, preview, validate
from engine.cli import main
from engine.masking import Masker
from engine.steps import KINDS

from .helpers import make_config

WF = """
name: edits
params: [dir]
steps:
  - id: port
    file: {{path: "{{{{ dir }}}}/postgresql.conf", state: line, line: "port = 5433", regexp: "^port\\\\s*="}}
  - id: include
    file: {{path: "{{{{ dir }}}}/postgresql.conf", state: line, line: "include_if_exists = 'x.conf'"}}
  - id: conninfo
    file: {{path: "{{{{ dir }}}}/auto.conf", state: line_absent, regexp: "^primary_conninfo"}}
  - id: nothing_to_drop
    file: {{path: "{{{{ dir }}}}/auto.conf", state: line_absent, regexp: "^primary_slot_name"}}
  - id: gone
    file: {{path: "{{{{ dir }}}}/old.signal", state: absent}}
  - id: signal
    file: {{path: "{{{{ dir }}}}/standby.signal", state: touch}}
  - id: slots
    file: {{path: "{{{{ dir }}}}/pg_replslot", state: empty}}
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "postgresql.conf").write_text("listen_addresses = '*'\nport = 5432\ninclude_if_exists = 'x.conf'\n")
    (d / "auto.conf").write_text("# auto\nprimary_conninfo = 'host=old'\nwork_mem = 4MB\n")
    (d / "old.signal").write_text("x\n")
    (d / "pg_replslot").mkdir()
    (d / "pg_replslot" / "pg1").mkdir()
    (d / "pg_replslot" / "pg2").mkdir()
    return d


def snapshot(d: Path) -> dict[str, Any]:
    return {
        str(p): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))
    }


def test_diff_of_file_steps_is_read_only(tmp_path: Path, data: Path, capsys: Any) -> None:
    (tmp_path / "wf.yaml").write_text(WF.format())
    (tmp_path / "c.yaml").write_text(f"state_dir: {tmp_path / 'state'}\n")
    before = snapshot(data)
    code = main(
        [
            "run",
            "--config",
            str(tmp_path / "c.yaml"),
            "--dry-run",
            "--diff",
            str(tmp_path / "wf.yaml"),
            str(data),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert snapshot(data) == before
    assert not (tmp_path / "state").exists()
    conf = f"{data}/postgresql.conf"
    port = out.split("[1] port (file)")[1].split("[2]")[0]
    assert f"--- {conf} (now)" in port and f"+++ {conf} (after)" in port
    assert "-port = 5432" in port and "+port = 5433" in port
    assert "[2] include (file)\n    local:" in out
    assert out.split("[2] include (file)")[1].split("[3]")[0].rstrip().endswith("(no change)")
    conninfo = out.split("[3] conninfo (file)")[1].split("[4]")[0]
    assert "-primary_conninfo = 'host=old'" in conninfo and "+work_mem" not in conninfo
    assert out.split("[4] nothing_to_drop (file)")[1].split("[5]")[0].rstrip().endswith("(no change)")
    assert "-x" in out.split("[5] gone (file)")[1].split("[6]")[0]
    assert "(it would be created, empty)" in out
    assert "(would remove 2 entries: pg1, pg2)" in out
    last = out.splitlines()[-1]
    assert (
        last
        == "would run 7 step(s): 5 file on this host; 2 file step(s) would change nothing; nothing was changed"
    )


def test_without_diff_file_steps_show_what_they_would_do(tmp_path: Path, data: Path, capsys: Any) -> None:
    (tmp_path / "wf.yaml").write_text(WF.format())
    assert main(["run", "--dry-run", str(tmp_path / "wf.yaml"), str(data)]) == 0
    out = capsys.readouterr().out
    assert "(now)" not in out
    assert "exactly one line 'port = 5433'" in out
    assert out.splitlines()[-1] == "would run 7 step(s): 7 file on this host; nothing was changed"


def test_missing_files(tmp_path: Path) -> None:
    from engine.log import Logger
    from engine.runtime import Runtime

    text = WF.format()
    (tmp_path / "wf.yaml").write_text(text)
    wf = validate.load_workflow(str(tmp_path / "wf.yaml"))
    cfg = make_config()
    params = context.bind_params(wf, [str(tmp_path / "nowhere")])
    _, r = context.build(wf, cfg, params, dry_run=True, run_id="dry-run")
    rt = Runtime(cfg, Logger("edits", "dry-run", Masker(), quiet=True))
    out = io.StringIO()
    assert plan.dry_run(wf, r, KINDS, Masker(), out=out, colour=False, rt=rt, params=params) == 0
    text = out.getvalue()
    assert "(no such file: the step would fail)" in text
    assert "(the folder would be created)" in text


def test_summary_groups_by_kind_and_target() -> None:
    line = preview.summary(
        [
            ("ssh", "pg2", False),
            ("sql", "pg1:5432/postgres", False),
            ("ssh", "pg2", False),
            ("local", None, False),
        ],
        ended=True,
    )
    assert line == (
        "would run 4 step(s) and then exit early: 2 ssh on pg2, 1 sql on pg1:5432/postgres, "
        "1 local (target known at run time); nothing was changed"
    )
    assert preview.summary([], ended=False) == "would run 0 step(s); nothing was changed"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "wf.yaml").write_text("name: c\nsteps:\n  - id: a\n    local: ['true']\n")
    wf = validate.load_workflow(str(tmp_path / "wf.yaml"))
    _, r = context.build(wf, make_config(), {}, dry_run=True, run_id="dry-run")

    def render(out: io.StringIO) -> str:
        plan.dry_run(wf, r, KINDS, Masker(), out=out)
        return out.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\033[" in render(FakeTTY())
    assert "\033[" not in render(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033[" not in render(FakeTTY())
    assert os.environ["NO_COLOR"] == "1"


def test_diff_lines_are_coloured_on_a_terminal() -> None:
    c = plan._colour(True)
    assert preview.colour_diff("+port = 5433", c) == "\033[32m+port = 5433\033[0m"
    assert preview.colour_diff("-port = 5432", c) == "\033[31m-port = 5432\033[0m"
    assert preview.colour_diff("--- a (now)", c).startswith("\033[1m")
    assert preview.colour_diff(" same", c) == " same"
    plain = plan._colour(False)
    assert preview.colour_diff("+x", plain) == "+x"


def test_an_unreadable_file_says_the_diff_is_unavailable_and_what_to_do(
    tmp_path: Path, data: Path, monkeypatch: Any
) -> None:
    from engine.log import Logger
    from engine.runtime import Runtime

    (tmp_path / "wf.yaml").write_text(WF.format())
    wf = validate.load_workflow(str(tmp_path / "wf.yaml"))
    cfg = make_config()
    params = context.bind_params(wf, [str(data)])
    _, r = context.build(wf, cfg, params, dry_run=True, run_id="dry-run")
    rt = Runtime(cfg, Logger("edits", "dry-run", Masker(), quiet=True))

    def refuse(action: Any, rt: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setitem(preview.DIFFS, "file", refuse)
    out = io.StringIO()
    assert plan.dry_run(wf, r, KINDS, Masker(), out=out, colour=False, rt=rt, params=params) == 0
    assert (
        "(diff unavailable: PermissionError: [Errno 13] Permission denied; check that the host"
        in out.getvalue()
    )
    assert "or leave out --diff)" in out.getvalue()
