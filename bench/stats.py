"""Summaries of paired measurements, the issue's targets, and the terminal table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def paired(ours: Sequence[float | None], theirs: Sequence[float | None]) -> dict[str, Any]:
    """Medians/min/max of both sides, per-pair ratio ours/theirs and difference, their medians."""
    pairs = [(a, b) for a, b in zip(ours, theirs, strict=True) if a is not None and b is not None]
    ratios = [a / b for a, b in pairs if b > 0]
    diffs = [a - b for a, b in pairs]
    return {
        "ours": summary(ours),
        "theirs": summary(theirs),
        "pairs": len(pairs),
        "ratios": ratios,
        "ratio_median": statistics.median(ratios) if ratios else None,
        "diffs": diffs,
        "diff_median": statistics.median(diffs) if diffs else None,
    }


@dataclass(frozen=True)
class Target:
    """``kind`` is "ratio" (median per-pair ratio ours/theirs <= limit) or "diff"
    (median ours - median theirs <= limit seconds)."""

    case: str
    metric: str
    kind: str
    limit: float
    text: str


TARGETS = (
    Target("failover_primary", "writable", "ratio", 1.0, "ratio <= 1.0"),
    Target("failover_standby", "hook", "ratio", 1.0, "ratio <= 1.0"),
    Target("follow_rewind", "hook", "ratio", 0.8, "ratio <= 0.8"),
    Target("follow_skip", "hook", "diff", 0.100, "<= sample + 100 ms"),
    Target("recovery_1st_stage", "hook", "ratio", 1.0, "ratio <= 1.0"),
    Target("remote_start", "hook", "ratio", 1.0, "ratio <= 1.0"),
    Target("e2e", "writable", "ratio", 1.0, "ratio <= 1.0"),
    Target("e2e", "streaming", "ratio", 1.0, "ratio <= 1.0"),
    Target("noop_run", "run", "diff", 0.080, "<= python3 -c pass + 80 ms"),
    Target("noop_run_local", "run", "diff", 0.080, "<= python3 -c pass + 80 ms"),
)


def evaluate(target: Target, result: dict[str, Any] | None) -> dict[str, Any]:
    """{"target", "value", "met"} for one target on one paired result (None: not measured)."""
    out: dict[str, Any] = {"case": target.case, "metric": target.metric, "target": target.text}
    if not result or not result.get("pairs"):
        return {**out, "value": None, "met": None}
    if target.kind == "ratio":
        value = result["ratio_median"]
    else:
        value = result["ours"]["median"] - result["theirs"]["median"]
    return {**out, "value": value, "met": value is not None and value <= target.limit}


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])
