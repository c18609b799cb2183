"""The subcommands besides running and checking: ``graph``, ``history``, ``show``, ``serve``.

None of them connects to a server or changes anything; they read a workflow or
the journal and print.  Kept out of :mod:`engine.cli` so the run path imports
none of this.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse itself only when a parser is built: `run` parses without it
    import argparse

CONFIG_HELP = "config file (default: $PGPOOL_HOOK_CONFIG or /etc/pgpool2/pgpool-hook.yaml)"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the subcommands to ``sub`` (their handlers are in :data:`HANDLERS`)."""
    import argparse

    raw = argparse.RawDescriptionHelpFormatter
    g = sub.add_parser(
        "graph",
        help="draw a workflow's steps as a Mermaid or Graphviz diagram",
        formatter_class=raw,
        description="Print the step graph of WORKFLOW (a name in the workflows folder, or a path): one node\n"
        "per step (id and kind; exit steps rounded), `needs` arrows with the `when` conditions,\n"
        "thick `fallback` arrows and dashed `undo` arrows to the handlers. Nothing is run.",
        epilog="examples:\n"
        "  pgpool-hook graph follow_primary > follow_primary.mmd      # paste into a ```mermaid block\n"
        "  pgpool-hook graph --format dot failover | dot -Tsvg > failover.svg",
    )
    g.add_argument("--config", help=CONFIG_HELP)
    g.add_argument(
        "--format", choices=["mermaid", "dot"], default="mermaid", help="output format (default: mermaid)"
    )
    g.add_argument("workflow", help="workflow name or path")

    h = sub.add_parser(
        "history",
        help="list recent runs from the journal, newest first",
        formatter_class=raw,
        description="List the runs recorded in <state_dir>/journal.jsonl, newest first: start time (UTC),\n"
        "run id, workflow, node, arguments, outcome and duration. Outcomes: succeeded, exited N,\n"
        "rolled-back, rollback-incomplete, interrupted, failed (a guard), lock-timeout, and\n"
        "unfinished (no end record: the process was killed, or is still running).\n"
        "`pgpool-hook show RUN_ID` prints one run step by step.",
        epilog="examples:\n"
        "  pgpool-hook history                                   # the last 20 runs\n"
        "  pgpool-hook history --workflow follow_primary --limit 5\n"
        "  pgpool-hook history --json --limit 1 | jq -r .outcome        # for a monitoring check",
    )
    h.add_argument("--config", help=CONFIG_HELP + "; its state_dir holds the journal")
    h.add_argument(
        "--limit", type=int, default=20, metavar="N", help="show at most N runs (default 20; 0: all)"
    )
    h.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    h.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per run (run, started, workflow, node, args, "
        "outcome, exit_code, duration, failed_step, message), for monitoring",
    )

    s = sub.add_parser(
        "show",
        help="print one run from the journal step by step",
        formatter_class=raw,
        description="Print one recorded run: its arguments, then every step with its status, phase\n"
        "(fallback and undo steps are marked), attempts, duration, what was rendered (secrets\n"
        "appear masked, as they were journaled), the result, the error, the rollback, and the\n"
        "outcome. RUN_ID may be abbreviated to any unique prefix (see `pgpool-hook history`).",
        epilog="example: pgpool-hook show 3f2a9c",
    )
    s.add_argument("--config", help=CONFIG_HELP + "; its state_dir holds the journal")
    s.add_argument("--full", action="store_true", help="print every rendered line (default: the first 12)")
    s.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")

    r = sub.add_parser(
        "serve",
        help="keep a resident runner so hook calls skip Python's start-up",
        formatter_class=raw,
        description="Import the engine and its libraries once and wait on a Unix socket; every later\n"
        "`pgpool-hook` call of the same user hands its command to a worker forked from here\n"
        "instead of starting Python and importing everything again (100-250 ms less per hook).\n"
        "A call runs in its own process as before whenever no runner answers. The runner\n"
        "starts itself again when the engine's files change, and SIGHUP does the same. Run it as\n"
        "the user pgpool runs hooks as, e.g. with the systemd unit in examples/systemd/.",
        epilog="examples:\n"
        "  pgpool-hook serve                                   # socket: $PGPOOL_HOOK_SOCKET or "
        "/run/pgpool-hook/runner.sock\n"
        "  pgpool-hook serve --status                          # is a runner answering?\n"
        "  PGPOOL_HOOK_SOCKET=off pgpool-hook run ...          # one call without the runner",
    )
    r.add_argument("--socket", metavar="PATH", help="socket path (default: $PGPOOL_HOOK_SOCKET or "
                   "/run/pgpool-hook/runner.sock)")  # fmt: skip
    r.add_argument(
        "--status", action="store_true", help="only report whether a runner answers (exit 0 if so)"
    )


def cmd_graph(opts: argparse.Namespace) -> int:
    from engine import config as config_mod
    from engine import graph, validate
    from engine.cli import HOOK_NAMES

    cfg = config_mod.load(opts.config)
    name = opts.workflow
    if name in HOOK_NAMES and not os.path.exists(name):
        name = HOOK_NAMES[name]
    workflow = validate.load_workflow(validate.resolve_workflow_path(name, cfg.workflows_dir))
    sys.stdout.write(graph.render(workflow, opts.format))
    return 0


def _state_dir(opts: argparse.Namespace) -> str:
    from engine import config as config_mod

    return config_mod.load(opts.config).state_dir


def cmd_history(opts: argparse.Namespace) -> int:
    from engine import history

    show = history.history_json if opts.json else history.history
    for line in show(_state_dir(opts), opts.limit, opts.workflow):
        print(line)
    return 0


def cmd_show(opts: argparse.Namespace) -> int:
    from engine import history

    for line in history.show(_state_dir(opts), opts.run_id, full=opts.full):
        print(line)
    return 0


def cmd_serve(opts: argparse.Namespace) -> int:
    from engine import serve

    return serve.main(opts.socket, status_only=opts.status)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "graph": cmd_graph,
    "history": cmd_history,
    "show": cmd_show,
    "serve": cmd_serve,
}
