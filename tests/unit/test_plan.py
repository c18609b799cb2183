"""Dry-run: every step rendered for the given arguments, nothing connected or changed."""

from __future__ import annotations

import io

from engine import context, plan, validate
from engine.masking import Masker
from engine.steps import KINDS

from .helpers import make_config

WORKFLOW = """
name: demo
params: [{name: node_id, type: int}, host]
steps:
  - id: nothing_to_do
    when: node_id < 0
    exit: {code: 0, message: "no node"}
  - id: probe
    local: ["pg_isready", "-h", "{{ host }}"]
    retry: {attempts: 3, delay: 2, backoff: 2, until: "result.rc == 0"}
    timeout: 5
  - id: promote
    when: steps.probe.rc == 0
    ssh: {host: "{{ host }}", command: "pg_ctl promote -D /data/{{ host }}"}
    undo: demote
    on_error: continue
  - id: slot
    sql:
      host: "{{ host }}"
      statement: SELECT pg_create_physical_replication_slot(%(slot)s)
      params: {slot: "{{ replication_slot(host=host) }}"}
  - id: conf
    template: {dest: /etc/x.conf, content: "password={{ secrets.pw }}\\nhost={{ host }}\\n"}
  - id: stop
    exit: {code: 3, message: "done with {{ host }}"}
  - id: after
    local: ["true"]
handlers:
  - id: demote
    local: ["echo", "{{ steps.promote.rc }}"]
"""


def dry_run(write, args: list[str], text: str = WORKFLOW) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    wf = validate.load_workflow(write(text, "demo.yaml"))
    cfg = make_config()
    cfg.secrets = {"pw": "TopSecret"}
    _, r = context.build(wf, cfg, context.bind_params(wf, args), dry_run=True, run_id="dry-run")
    out = io.StringIO()
    code = plan.dry_run(
        wf, r, KINDS, Masker(cfg.mask_values()), out=out, colour=False, params=context.bind_params(wf, args)
    )
    return code, out.getvalue()


def test_dry_run_shows_every_step(write, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out = dry_run(write, ["1", "pg-2.lan"])
    assert code == 0
    assert out.splitlines() == [
        f"dry-run of demo ({tmp_path / 'demo.yaml'}) — nothing is executed",
        "arguments: node_id=1, host='pg-2.lan'",
        "",
        "[1] nothing_to_do (exit, when node_id < 0 → false)",
        "",
        "[2] probe (local)",
        "    $ pg_isready -h pg-2.lan",
        "    retry 3x every 2s ×2 until result.rc == 0; timeout 5s",
        "",
        "[3] promote (ssh, when steps.probe.rc == 0 → depends on steps.probe)",
        "    pg-2.lan$ pg_ctl promote -D /data/pg-2.lan",
        "    on error: continue; undo: demote",
        "",
        "[4] slot (sql)",
        "    -- as postgres on pg-2.lan:5432/postgres",
        "    SELECT pg_create_physical_replication_slot(%(slot)s);",
        "    -- params: {'slot': 'pg_2_lan'}",
        "",
        "[5] conf (template)",
        "    --- local:/etc/x.conf",
        "    password=********",
        "    host=pg-2.lan",
        "",
        "[6] stop (exit)",
        "",
        "[7] after (local) — not reached: an earlier exit step ends the run",
        "    $ true",
        "",
        "handlers (run only as undo or fallback)",
        "  demote (local)",
        "    (rendered at run time: uses steps.promote.rc)",
        "",
        "would run 4 step(s) and then exit early: 1 local on this host, 1 ssh on pg-2.lan, "
        "1 sql on pg-2.lan:5432/postgres, 1 template on this host; nothing was changed",
    ]
    assert "TopSecret" not in out


def test_dry_run_exit_condition_true(write) -> None:  # type: ignore[no-untyped-def]
    code, out = dry_run(write, ["-1", ""])
    assert code == 0
    assert "[1] nothing_to_do (exit, when node_id < 0 → true)" in out
    assert "[2] probe (local) — not reached: an earlier exit step ends the run" in out
    assert out.splitlines()[-1] == "would run 0 step(s) and then exit early; nothing was changed"


def test_dry_run_render_error_exits_1(write) -> None:  # type: ignore[no-untyped-def]
    text = "name: t\nparams: [p]\nsteps:\n  - id: a\n    file: {path: '/srv/{{ p }}'}\n"
    code, out = dry_run(write, ["../etc"], text)
    assert code == 1
    assert "    error: path '/srv/../etc' climbs out with '..' (from a value, not the workflow)" in out
    assert out.splitlines()[-1].startswith("1 step(s) could not be rendered for these arguments; check ")
