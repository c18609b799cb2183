"""The registry of step kinds: the one place a new kind is added.

Each kind lives in its own module and exposes an object with ``name``,
``schema``, ``plan`` and ``apply`` (see :mod:`engine.steps.base`).  Modules
here import nothing heavy at import time: psycopg and paramiko are loaded
by ``apply`` only when a run actually has such a step.
"""

from __future__ import annotations

from typing import Any

from engine.steps import exit as exit_kind
from engine.steps import file as file_kind
from engine.steps import local as local_kind
from engine.steps import sql as sql_kind
from engine.steps import ssh as ssh_kind
from engine.steps import template as template_kind

KINDS: dict[str, Any] = {
    kind.KIND.name: kind.KIND
    for kind in (sql_kind, ssh_kind, template_kind, file_kind, local_kind, exit_kind)
}
