"""Replace secret values wherever text leaves the process (log, journal, dry-run)."""

from __future__ import annotations

from typing import Any

MASK = "********"


class Masker:
    def __init__(self, secrets: list[str] | None = None):
        # longest first so a secret containing another is masked whole
        self._values = sorted({s for s in (secrets or []) if s and len(s) >= 1}, key=len, reverse=True)

    def add(self, value: str) -> None:
        if value and value not in self._values:
            self._values.append(value)
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
