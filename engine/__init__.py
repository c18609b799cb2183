"""pgpool-hook: one runner for every Pgpool-II hook, driven by YAML workflows.

The package is laid out by concern so the architecture reads from the tree:

* ``source``      — YAML loading that remembers where every value came from
* ``schema`` / ``validate`` — JSON Schema plus semantic checks, all errors at once
* ``model``       — the typed workflow the checks produce
* ``config``      — site configuration and secrets
* ``render``      — sandboxed Jinja2, shell quoting, secret masking
* ``conductor``   — decides what runs next; never executes anything
* ``interpreter`` — the runner loop: retries, timeouts, deadline, rollback
* ``steps``       — one module per step kind, registered in ``steps/__init__``
* ``transport``   — local and SSH/SFTP access used by the step kinds
* ``journal`` / ``lock`` / ``log`` — what a run leaves behind
* ``cli``         — the ``pgpool-hook`` command
"""

__version__ = "0.1.0"
