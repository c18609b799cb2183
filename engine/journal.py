"""Append-only JSON-lines record of every run, in ``state_dir/journal.jsonl``.

Each event is written and flushed as it happens, so a run killed with
``kill -9`` still leaves ``run_started`` and the steps it finished — enough
for ``history`` to show it as unfinished and for a re-run to know what
already happened.  Secrets are masked before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from engine.masking import Masker

FILE_NAME = "journal.jsonl"


class Journal:
    def __init__(self, state_dir: str, run_id: str, masker: Masker):
        self.path = os.path.join(state_dir, FILE_NAME)
        self.run_id = run_id
        self.masker = masker
        self._fh: Any = None
        self.error: str | None = None
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        except OSError as exc:
            self.error = f"cannot write journal {self.path}: {exc.strerror or exc}"

    def write(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"ts": round(time.time(), 3), "run": self.run_id, "event": event, **self.masker.deep(fields)}
        try:
            self._fh.write(json.dumps(record, default=str, sort_keys=False) + "\n")
            self._fh.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._fh is not None:
            try:
                os.fsync(self._fh.fileno())
            except OSError:
                pass
            self._fh.close()
            self._fh = None


def read_events(state_dir: str) -> Iterator[dict[str, Any]]:
    path = os.path.join(state_dir, FILE_NAME)
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line torn by kill -9: skip it
                continue


def runs(state_dir: str) -> dict[str, list[dict[str, Any]]]:
    """Events grouped by run id, in the order runs started."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for ev in read_events(state_dir):
        grouped.setdefault(str(ev.get("run")), []).append(ev)
    return grouped
