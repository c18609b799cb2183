"""Generated workflows for measuring the runner itself (no cluster needed).

``noop_workflow()`` has one step that does nothing (a deliberate ``exit 0``): running it
costs interpreter start, imports, config and workflow loading, the journal and the log,
and nothing else.  ``scaled_workflow(n)`` has ``n`` steps cycling through the step kinds
(sql, ssh, file, local) with a ``when`` condition and templated fields, for
``--dry-run``: the cost of validating, rendering and planning should grow linearly in ``n``,
also when each step reads the previous step's result.
"""

from __future__ import annotations

from pathlib import Path

NOOP_NAME = "bench_noop"
SCALED_PARAMS = ("h", "p", "d")  # host, port, data directory: short, for the size limit
SCALED_ARGS = ("127.0.0.1", "5432", "/var/lib/postgresql/15/main")


def noop_workflow() -> str:
    return (
        f"name: {NOOP_NAME}\n"
        "description: One step that does nothing; measures the runner's own cost.\n"
        "steps:\n"
        "  - id: done\n"
        '    exit: {code: 0, message: "nothing to do"}\n'
    )


def _step(i: int, reference_previous: bool = False) -> str:
    """One step on one line (flow style): 10,000 of them must fit the 1 MiB file limit."""
    when = f"steps.s{i - 1}.ok" if reference_previous and i > 0 else "x > 0"
    head = f'  - {{id: s{i}, when: "{when}", '
    kind = i % 4
    if kind == 0:
        body = f'sql: {{host: "{{{{ h }}}}", statement: "SELECT %(n)s", params: {{n: "{{{{ x + {i} }}}}"}}}}'
    elif kind == 1:
        body = f'ssh: {{host: "{{{{ h }}}}", command: "ls {{{{ d }}}}/{i}"}}'
    elif kind == 2:
        body = f'file: {{host: "{{{{ h }}}}", path: "{{{{ d }}}}/f{i}", state: touch}}'
    else:
        body = f'local: ["true", "{{{{ h }}}}", "{{{{ x + {i} }}}}"]'
    return head + body + "}\n"


def scaled_workflow(n: int, reference_previous: bool = False) -> str:
    """A valid workflow of ``n`` steps (``n`` >= 1), under 1 MiB up to 10,000 steps.

    With ``reference_previous`` every step's condition reads the previous step's result
    (``steps.s<i-1>.ok``), as real hooks do with ``steps.node_status.rc``: validation then
    has to work out which steps are certain to have run before each one.
    """
    params = "".join(f"  - {{name: {p}}}\n" for p in SCALED_PARAMS)
    return (
        f"name: bench_steps_{n}\n"
        f"description: {n} synthetic steps for the dry-run scaling test.\n"
        f"params:\n{params}"
        "vars:\n"
        "  x: 1\n"
        "steps:\n" + "".join(_step(i, reference_previous) for i in range(n))
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return path
