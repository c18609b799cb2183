"""One line per event on stderr, where pgpool and PostgreSQL put hook output.

Every line carries the time, workflow, run id, step and attempt, so an
operator can grep the pgpool log for one run.  Secrets are masked here,
at the last moment, so no caller can forget.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from engine.masking import Masker


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Logger:
    def __init__(
        self, workflow: str, run_id: str, masker: Masker, stream: TextIO | None = None, quiet: bool = False
    ):
        self.workflow = workflow
        self.run_id = run_id
        self.masker = masker
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.step: str | None = None
        self.attempt: int | None = None

    def _write(self, text: str) -> None:
        if self.quiet:
            return
        try:
            self.stream.write(self.masker.text(text) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # pgpool may have closed our stderr; the journal still records
            pass

    def event(
        self, outcome: str, message: str = "", *, step: str | None = None, attempt: int | None = None
    ) -> None:
        if step is None:
            step = self.step
            attempt = attempt if attempt is not None else self.attempt
        parts = [_now(), f"pgpool-hook[{self.workflow} run={self.run_id}]"]
        if step:
            parts.append(f"step={step}")
        if attempt:
            parts.append(f"attempt={attempt}")
        parts.append(f"outcome={outcome}")
        if message:  # one event, one line: a value with a newline (a host name from pgpool's
            # arguments, a command's error) must not forge a line of its own in the log
            parts.append(message.replace("\r", "\\r").replace("\n", "\\n"))
        self._write(" ".join(parts))

    def output(self, stream: str, line: str) -> None:
        """A line of a command's output, streamed as it arrives."""
        tag = "stdout" if stream == "stdout" else "stderr"
        self._write(f"{_now()} pgpool-hook[{self.workflow} run={self.run_id}] step={self.step} {tag}| {line}")
