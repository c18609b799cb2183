"""Replace secret values wherever text leaves the process (log, journal, dry-run)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

MASK = "********"


# How a secret can look once a workflow has quoted it: shell words, postgresql.conf and
# libpq conninfo literals (also one inside the other, as in primary_conninfo), Python repr.
_ENCODINGS: tuple[Callable[[str], str], ...] = (
    shlex.quote,
    lambda v: v.replace("\\", "\\\\").replace("'", "''"),  # pgquote
    lambda v: v.replace("\\", "\\\\").replace("'", "\\'"),  # conninfo
    lambda v: repr(v)[1:-1],
)


def _variants(secret: str) -> set[str]:
    once = {encode(secret) for encode in _ENCODINGS}
    return {secret} | once | {encode(v) for v in once for encode in _ENCODINGS}


class Masker:
    def __init__(self, secrets: list[str] | None = None):
        # longest first so a secret containing another (or a quoted form of it) is masked whole
        self._values = sorted({v for s in (secrets or []) if s for v in _variants(s)}, key=len, reverse=True)

    def add(self, value: str) -> None:
        if value and value not in self._values:
            self._values.extend(v for v in _variants(value) if v not in self._values)
            self._values.sort(key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._values:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def deep(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        return value
