"""The ``pgpool-hook`` command, and the hook names pgpool calls it by.

pgpool runs hooks as ``sh -c`` strings or as fixed file names in PGDATA, so
the same program answers to ``failover.sh``, ``follow_primary.sh``,
``recovery_1st_stage`` and ``pgpool_remote_start`` and then takes exactly the
arguments pgpool passes — including ``-1`` and empty strings, which option
parsing must not eat.  Every user error ends here as a message and an exit
code, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from engine import commands
from engine.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    HookError,
    Interrupted,
    InvalidInput,
    Problem,
    RenderError,
)

if TYPE_CHECKING:
    import argparse

# the file names pgpool (or an operator's pgpool.conf) may call us by
HOOK_NAMES = {
    "failover": "failover",
    "failover.sh": "failover",
    "follow_primary": "follow_primary",
    "follow_primary.sh": "follow_primary",
    "recovery_1st_stage": "recovery_1st_stage",
    "recovery_1st_stage.sh": "recovery_1st_stage",
    "pgpool_remote_start": "remote_start",
    "pgpool_remote_start.sh": "remote_start",
}

EPILOG = """\
exit codes: 0 success (or a deliberate exit 0), 1 failed and rolled back,
2 invalid input (nothing ran), 3 failed and rollback incomplete.

examples:
  pgpool-hook validate                       # check every workflow in the workflows folder
  pgpool-hook run --dry-run failover 0 pg1 5432 /var/lib/postgresql/15/main 1 pg2 0 0 5432 \\
      /var/lib/postgresql/15/main pg1 5432   # show what a failover of node 0 would do
  pgpool-hook run follow_primary %d %h %p %D %m %H %M %P %r %R   # as pgpool's follow_primary_command
  pgpool-hook graph follow_primary           # the step graph, as Mermaid (--format dot: Graphviz)
  pgpool-hook history                        # recent runs and their outcomes
  pgpool-hook show 3f2a9c                    # one run step by step (a prefix of its run id)

`pgpool-hook COMMAND --help` describes a command.  Manual: docs/ (workflows.md, workflow-format.md,
reference.md, configuration.md, recipes.md).
"""


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="pgpool-hook",
        description="Run Pgpool-II hooks (failover, follow-primary, online recovery) as YAML workflows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a workflow with pgpool's arguments",
        description="Run WORKFLOW (a name in the workflows folder, or a path) with the arguments pgpool\n"
        "passes. Everything after WORKFLOW is passed through untouched, including -1 and empty\n"
        "strings. With --dry-run, print every step rendered for these arguments and change nothing.",
        epilog="examples:\n"
        "  pgpool-hook run --dry-run remote_start 10.0.0.2 /var/lib/postgresql/15/main\n"
        "  pgpool-hook run --dry-run --diff follow_primary 1 pg2 5432 /var/lib/postgresql/15/main 0 pg1 0 0 "
        "5432 ''\n"
        "  pgpool-hook run --set vars.promote_timeout=120 failover %d %h %p %D %m %H %M %P %r %R %N %S",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(run)
    run.add_argument("workflow", help="workflow name or path")
    run.add_argument(
        "args", nargs=argparse.REMAINDER, help="the hook's arguments, exactly as pgpool gives them"
    )

    val = sub.add_parser(
        "validate",
        help="check workflows and config without running anything",
        description="Check YAML syntax, the schema and the semantics (ids, needs cycles, undo and fallback "
        "references, Jinja2 syntax and undefined variables). Reports every error as "
        "file:line:column and exits 2 if there is any.",
        epilog="example: pgpool-hook validate workflows/follow_primary.yaml",
    )
    val.add_argument(
        "--config", help="config file (default: $PGPOOL_HOOK_CONFIG or /etc/pgpool2/pgpool-hook.yaml)"
    )
    val.add_argument(
        "files", nargs="*", help="workflow files (default: every workflow in the workflows folder)"
    )

    ins = sub.add_parser(
        "install",
        help="write the recovery shims into PGDATA and print the pgpool.conf lines",
        description="Write executable recovery_1st_stage and pgpool_remote_start files into the primary's "
        "PGDATA (pgpool only runs files with these names there) and print the failover_command, "
        "follow_primary_command and recovery_1st_stage_command lines. Safe to run again.",
        epilog="example: pgpool-hook install --pgdata /var/lib/postgresql/15/main "
        "--config /etc/pgpool2/pgpool-hook.yaml",
    )
    ins.add_argument("--pgdata", required=True, help="the primary's data directory")
    ins.add_argument("--config", help="config file the hooks should use")
    ins.add_argument("--runner", help="command that starts pgpool-hook (default: this program)")

    sch = sub.add_parser(
        "schema",
        help="print the JSON Schema of workflows or of the config",
        description="Print the JSON Schema (draft 2020-12) of the workflow format (default) or of the "
        "config file. Editors with a YAML language server complete and check keys with it: start a "
        "file with `# yaml-language-server: $schema=PATH`. The same schemas are in schema/ of the "
        "source tree, and docs/reference.md describes every key.",
        epilog="example: pgpool-hook schema config > /etc/pgpool2/pgpool-hook.schema.json",
    )
    sch.add_argument(
        "which",
        nargs="?",
        choices=["workflow", "config"],
        default="workflow",
        help="which schema (default: workflow)",
    )

    tst = sub.add_parser(
        "test",
        help="rehearse workflows: run test cases with pretend step results, touching nothing",
        description="Run rehearsal cases: each names a workflow, pgpool's arguments, the result each step "
        "pretends to return, and the steps and exit code expected. The real interpreter renders and "
        "decides; nothing connects, writes or runs. One line per case; exit 0 if all pass, 1 if any "
        "fails, 2 if a case file is invalid. See docs/rehearsal.md.",
        epilog="example: pgpool-hook test workflows/tests/follow_primary_rewind_fails.yaml",
    )
    tst.add_argument(
        "--config", help="config file (default: $PGPOOL_HOOK_CONFIG or /etc/pgpool2/pgpool-hook.yaml)"
    )
    tst.add_argument("-v", "--verbose", action="store_true", help="print each rehearsed run's log")
    tst.add_argument(
        "cases", nargs="*", help="case files or folders (default: every case in <workflows folder>/tests)"
    )
    res = sub.add_parser(
        "resume",
        help="re-run a failed run from the step that failed, skipping the steps that succeeded",
        description="Re-run run RUN_ID (see `pgpool-hook history`) with the same workflow, arguments and "
        "--set overrides, starting at the step that failed; steps that succeeded and were not undone "
        "are skipped and their results restored. Refused (exit 2, saying why) if the run succeeded, is "
        "still running, or the workflow changed in a step it would skip.",
        epilog="example: pgpool-hook resume 3f2a9c1b7d40",
    )
    res.add_argument(
        "--config", help="config file (default: $PGPOOL_HOOK_CONFIG or /etc/pgpool2/pgpool-hook.yaml)"
    )
    res.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="add or change a config override"
    )
    res.add_argument("run_id", metavar="RUN_ID", help="the id (or a unique prefix) of the run to resume")
    commands.add_parsers(sub)  # graph, history, show
    return p


# the options of `run`: (attribute, takes a value); _add_run_options gives their help
RUN_OPTIONS = {
    "--config": ("config", True),
    "--dry-run": ("dry_run", False),
    "--diff": ("diff", False),
    "--set": ("set", True),
    "--from": ("from_step", True),
}
VALUE_OPTIONS = frozenset(option for option, (_, takes_value) in RUN_OPTIONS.items() if takes_value)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="config file (default: $PGPOOL_HOOK_CONFIG or /etc/pgpool2/pgpool-hook.yaml)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show what would run; connect to nothing, change nothing"
    )
    p.add_argument("--diff", action="store_true", help="with --dry-run: read existing files and show a diff")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for this run, e.g. --set vars.promote_timeout=120",
    )
    p.add_argument(
        "--from",
        dest="from_step",
        metavar="STEP",
        help="start at STEP, treating the steps before it as done (refused if a later step reads "
        "their results)",
    )


def _install_signal_handlers() -> None:
    state = {"raised": False}

    def handler(signum: int, frame: Any) -> None:
        if state["raised"]:
            return  # already stopping: let the rollback finish
        state["raised"] = True
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, handler)


def cmd_run(opts: argparse.Namespace) -> int:
    from engine import cache, context
    from engine import config as config_mod
    from engine.masking import Masker

    overrides = config_mod.parse_set(opts.set)
    cfg = config_mod.load(opts.config, overrides, remember=not opts.dry_run)
    name = opts.workflow
    if name in HOOK_NAMES and not os.path.exists(name):
        name = HOOK_NAMES[name]  # `run pgpool_remote_start` means the remote_start workflow
    path = _workflow_path(name, cfg.workflows_dir)
    # a real run remembers what validated; a dry-run writes nothing at all
    cache_dir = None if opts.dry_run else os.path.join(cfg.state_dir, "cache")
    workflow = cache.cached_workflow(path, cache_dir) if cache_dir is not None else None
    if workflow is None:  # new or changed: validate (which imports YAML, JSON Schema, Jinja2)
        from engine import validate

        workflow = validate.load_workflow(path, cache_dir=cache_dir)
    params = context.bind_params(workflow, list(opts.args))
    masker = Masker(cfg.mask_values())
    opts.masker = masker  # main() masks the error it prints, too (a render error can quote a value)
    run_id = os.urandom(6).hex()  # the 48 random bits of uuid4().hex[:12], without uuid's import
    if opts.dry_run and opts.from_step:
        raise InvalidInput(
            "--from does not combine with --dry-run: run --dry-run without it to see every step"
        )
    if opts.dry_run:
        from engine import gcpause, plan
        from engine.steps import KINDS

        try:
            ctx, r = context.build(workflow, cfg, params, dry_run=True, run_id="dry-run")
        except RenderError as exc:  # a var that cannot be rendered for these arguments
            where = Problem(exc.file or path, exc.line, None, exc.field, exc.detail)
            raise InvalidInput(where) from None
        rt = None
        if opts.diff:
            from engine.log import Logger
            from engine.runtime import Runtime

            rt = Runtime(cfg, Logger(workflow.name, "dry-run", masker, quiet=True))
        try:
            with gcpause.paused():
                return plan.dry_run(workflow, r, KINDS, masker, rt=rt, params=params)
        finally:
            if rt is not None:
                rt.close()
    from engine.run import execute

    done = None
    if opts.from_step:
        from engine import resume
        from engine.log import Logger

        start = resume.from_step(workflow, opts.from_step)
        done = start.done
        for note in start.notes:
            Logger(workflow.name, run_id, masker).event("starting", note)
    return execute(
        workflow,
        cfg,
        params,
        masker,
        run_id,
        list(opts.args),
        done=done,
        overrides=overrides,
        from_step=opts.from_step,
    )


def cmd_validate(opts: argparse.Namespace) -> int:
    from engine import config as config_mod
    from engine import validate
    from engine.errors import Problem

    problems: list[Problem] = []
    files = list(opts.files)
    try:
        cfg = config_mod.load(opts.config)
    except InvalidInput as exc:
        problems.extend(exc.problems)
        cfg = None
    if not files:
        wdir = cfg.workflows_dir if cfg else config_mod.shipped_workflows_dir()
        if os.path.isdir(wdir):
            files = sorted(os.path.join(wdir, f) for f in os.listdir(wdir) if f.endswith((".yaml", ".yml")))
        if not files:
            problems.append(Problem(wdir, None, None, "", "no workflow files found"))
    for f in files:
        try:
            validate.load_workflow(f)
            print(f"ok: {f}")
        except InvalidInput as exc:
            problems.extend(exc.problems)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} error(s); fix them and run validate again", file=sys.stderr)
        return EXIT_INVALID
    return 0


def cmd_schema(opts: argparse.Namespace) -> int:
    import json

    from engine import schema

    doc = schema.workflow_schema() if opts.which == "workflow" else schema.config_schema()
    print(json.dumps(doc, indent=2))
    return 0


def cmd_test(opts: argparse.Namespace) -> int:
    from engine import rehearsal

    return rehearsal.main(list(opts.cases), opts.config, verbose=opts.verbose)


def cmd_resume(opts: argparse.Namespace) -> int:
    from engine import resume

    return resume.resume(opts)


def cmd_install(opts: argparse.Namespace) -> int:
    import shlex

    from engine.install import install

    return install(opts.pgdata, opts.config, shlex.split(opts.runner) if opts.runner else None)


def _hook_argv(name: str, argv: list[str]) -> list[str]:
    """`failover.sh 0 host ...` → `run failover 0 host ...` (options allowed before the args)."""
    out = ["run"]
    rest = list(argv)
    while rest:
        if rest[0] in ("--config", "--set") and len(rest) > 1:
            out += rest[:2]
            rest = rest[2:]
        elif rest[0].startswith(("--config=", "--set=")) or rest[0] == "--dry-run":
            out.append(rest.pop(0))
        else:
            break
    return out + [HOOK_NAMES[name]] + rest


def _workflow_path(name: str, workflows_dir: str) -> str:
    """What validate.resolve_workflow_path finds, without importing validate for a name that exists.

    validate imports YAML (~15 ms); a workflow that is not there is its to explain.
    """
    from engine.config import find_workflow

    found = find_workflow(name, workflows_dir)
    if found is not None:
        return found
    from engine import validate

    return validate.resolve_workflow_path(name, workflows_dir)


def _parse_run(argv: list[str]) -> argparse.Namespace | None:
    """`run [OPTIONS] WORKFLOW ARG...` parsed by hand, or None: then argparse parses ``argv``.

    Importing argparse and building the parser tree cost ~10 ms of every hook start.  Only
    the options' exact spellings are taken here, with values that cannot be taken for an
    option; anything else (an abbreviation, --help, a missing value, `--` before WORKFLOW)
    goes to argparse, errors and help included.  The result has exactly the attributes
    argparse gives (as a SimpleNamespace: argparse is not imported for it).
    """
    if not argv or argv[0] != "run":
        return None
    opts: dict[str, Any] = {
        dest: None if takes_value else False for dest, takes_value in RUN_OPTIONS.values()
    }
    opts.update(command="run", set=[])
    i = 1
    while i < len(argv):
        option, eq, value = argv[i].partition("=")
        if option not in RUN_OPTIONS:
            if argv[i].startswith("-"):
                return None
            # everything after WORKFLOW is the hook's, untouched (-1, '', --set ...)
            return cast("argparse.Namespace", SimpleNamespace(**opts, workflow=argv[i], args=argv[i + 1 :]))
        dest, takes_value = RUN_OPTIONS[option]
        if not takes_value:
            if eq:
                return None  # `--dry-run=x`: argparse's error
            opts[dest] = True
        else:
            if not eq:
                i += 1
                if i == len(argv) or argv[i].startswith("-"):
                    return None
                value = argv[i]
            if dest == "set":
                opts["set"].append(value)
            else:
                opts[dest] = value
        i += 1
    return None  # no WORKFLOW: argparse says so


def _split_run(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`run [OPTIONS] WORKFLOW ARG...` → (what argparse parses, the hook's arguments untouched).

    argparse drops a `--` that directly follows WORKFLOW, so the hook's arguments never reach it.
    """
    if not argv or argv[0] != "run":
        return argv, None
    i = 1
    while i < len(argv):
        if argv[i] in VALUE_OPTIONS:
            i += 2
        elif argv[i] == "--":
            return argv[: i + 2], argv[i + 2 :]
        elif argv[i].startswith("-") and argv[i] != "-":
            i += 1
        else:
            return argv[: i + 1], argv[i + 1 :]
    return argv, None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = os.path.basename(prog if prog is not None else sys.argv[0])
    if name in HOOK_NAMES:
        argv = _hook_argv(name, argv)
    opts = _parse_run(argv)
    if opts is None:
        parser = _parser()
        argv, hook_args = _split_run(argv)
        opts = parser.parse_args(argv)
        if hook_args is not None:
            opts.args = hook_args
        if opts.command is None:
            parser.print_help()
            return EXIT_INVALID
    handlers = {
        "run": cmd_run,
        "validate": cmd_validate,
        "schema": cmd_schema,
        "install": cmd_install,
        "test": cmd_test,
        "resume": cmd_resume,
    }
    handlers.update(commands.HANDLERS)
    if opts.command in ("run", "resume"):
        _install_signal_handlers()

    def say(text: str) -> None:
        masker = getattr(opts, "masker", None)
        print(masker.text(text) if masker is not None else text, file=sys.stderr)

    try:
        return handlers[opts.command](opts)
    except InvalidInput as exc:
        say(exc.render())
        return EXIT_INVALID
    except HookError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except Interrupted as exc:
        print(f"error: interrupted by {exc} before the run started; nothing was changed", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `--dry-run | head`: the reader left; not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush is quiet
        return EXIT_FAILED
    except Exception as exc:  # a bug: say so plainly; the traceback only on request
        if os.environ.get("PGPOOL_HOOK_DEBUG"):
            raise
        say(f"internal error: {type(exc).__name__}: {exc} (set PGPOOL_HOOK_DEBUG=1 for a traceback)")
        return EXIT_FAILED


def entry() -> None:
    """The console script: run, flush, and leave without interpreter teardown.

    Once psycopg and paramiko are loaded, a normal interpreter exit spends 100-180 ms
    finalizing their objects; pgpool waits for the hook's exit, and every file, journal
    and connection is already closed by then, so there is nothing left to tear down.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
