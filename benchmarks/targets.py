"""flux_async's figures against the targets of the issue, and the others against it.

Every figure is a ratio or a count measured in the run being printed: nothing is
compared with a number from another run, and nothing here asserts a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from benchmarks.scenarios import Scenario

__all__ = ["format_relative", "format_targets", "targets"]

#: Requests per task (submissions + task queries) allowed in every scenario that runs
#: its tasks to their results.
MAX_REQUESTS_PER_TASK = 1.25
#: Client CPU per task over the batch-polling floor's, scenario 1.
MAX_CPU_RATIO = 1.2
#: RSS per pending task, scenario 2, in bytes.
MAX_BYTES_PENDING = 3 * 1024
#: Wall time over the simulated perfect client's, polling, at the vendor's limits.
MAX_VS_IDEAL = 1.05
#: Wall time over the bound set by limits tighter than the defaults.
MAX_VS_BOUND_TIGHT = 1.25

#: The row whose figures are held to the targets, per scenario (scenario 5 is about
#: ``generate``; the others run ``map``).
MEASURED = {"5": "flux_async_generate"}


def _find(rows: Sequence[dict[str, Any]], scenario: str, contender: str) -> dict[str, Any] | None:
    for row in rows:
        if row["scenario"] == scenario and row["contender"] == contender:
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# A target line: (what, measured as text, target as text, met: True/False/None = n/a).
Line = tuple[str, str, str, bool | None]


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit + 1e-9


def _text(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def targets(rows: Sequence[dict[str, Any]], scenarios: Sequence[Scenario]) -> list[Line]:
    """Every target of the issue that this run measured, with its verdict."""
    out: list[Line] = []

    def add(what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        out.append((what, value, target, ok))

    for s in scenarios:
        row = _find(rows, s.key, MEASURED.get(s.key, "flux_async"))
        if row is None:
            continue
        k = f"[{s.key}]"
        if s.mode == "complete":
            rpt = row["requests_per_task"]
            add(f"{k} requests per task ({row['label']})",
                f"{rpt:.3f} ({row['submissions_per_task']:.3f} + {row['queries_per_task']:.3f})",
                f"<= {MAX_REQUESTS_PER_TASK}", _at_most(rpt, MAX_REQUESTS_PER_TASK))
        if s.key == "1":
            if row["p50"] is not None:
                add(f"{k} notice latency p50 / p99 (polling)",
                    f"{row['p50']:.3f} / {row['p99']:.3f} s", "<= 0.6 / <= 1.5 s",
                    row["p50"] <= 0.6 and row["p99"] <= 1.5)
            floor = _find(rows, "1", "floor_batch")
            r = _ratio(row["cpu_per_task"], floor["cpu_per_task"] if floor else None)
            detail = "" if r is None or floor is None else (
                f" ({row['cpu_per_task'] * 1000:.3f} / {floor['cpu_per_task'] * 1000:.3f} ms)")
            add(f"{k} CPU per task / floor: retrieve_batch's", _text(r, ".2f", "x") + detail,
                f"<= {MAX_CPU_RATIO}x", _at_most(r, MAX_CPU_RATIO))
        if s.key == "2":
            per = row.get("rss_per_pending")
            floor = _find(rows, "2", "floor_batch")
            floor_per = floor.get("rss_per_pending") if floor else None
            detail = "" if floor_per is None else f" (floor {floor_per / 1024:.2f} KB)"
            add(f"{k} RSS per pending task ({row.get('pending')} pending)",
                _text(None if per is None else per / 1024, ".2f", " KB") + detail,
                "<= 3 KB", _at_most(per, MAX_BYTES_PENDING))
            batch = s.flux_settings.get("batch_size", 50)
            limit = math.ceil(s.n / batch)
            qpr = row.get("queries_per_round")
            add(f"{k} queries per poll round", _text(qpr, ".1f"),
                f"<= ceil({s.n}/{batch}) = {limit}", _at_most(qpr, limit))
        if s.key == "3":
            add(f"{k} answers with 429", str(row["rate_limited"]), "0", row["rate_limited"] == 0)
            add(f"{k} wall time / perfect client's (polling)", _vs(row, "ideal"),
                f"<= {MAX_VS_IDEAL}x", _at_most(row.get("vs_ideal"), MAX_VS_IDEAL))
            add(f"{k}   wall time / bound (polling)", _vs(row, "bound"))
        if s.key == "4":
            add(f"{k} wall time / bound", _vs(row, "bound"), f"<= {MAX_VS_BOUND_TIGHT}x",
                _at_most(row.get("vs_bound"), MAX_VS_BOUND_TIGHT))
            add(f"{k}   wall time / perfect client's", _vs(row, "ideal"))
            add(f"{k}   answers with 429 (reported)", _counts_429(row))
    for s in scenarios:  # callback mode, where it ran
        row = _find(rows, s.key, "flux_async_callback")
        if row is None:
            continue
        if row["p50"] is not None:
            add(f"[{s.key}] notice latency p50 (callback)", f"{row['p50'] * 1000:.1f} ms",
                "< 50 ms", row["p50"] < 0.05)
        if s.key == "3":
            add("[3]   wall time / perfect client's (callback)", _vs(row, "ideal"))
    return out


def _vs(row: dict[str, Any], what: str) -> str:
    ratio = row.get(f"vs_{what}")
    if ratio is None:
        return "-"
    return f"{ratio:.3f}x ({row['wall']:.1f} / {row[what]:.1f} s)"


def _counts_429(row: dict[str, Any]) -> str:
    total = row["rate_limited"]
    if row.get("rate_limited_submissions") is None:
        return str(total)
    return (f"{total} ({row['rate_limited_submissions']} subm, "
            f"{row['rate_limited_queries']} qry)")


def format_targets(rows: Sequence[dict[str, Any]], scenarios: Sequence[Scenario]) -> str:
    lines = ["Targets (flux_async at the issue's targets; every ratio within this run):"]
    for what, value, target, ok in targets(rows, scenarios):
        verdict = "" if not target else ("n/a" if ok is None else "met" if ok else "NOT MET")
        lines.append(f"  {what:<46} {value:<30} {target:<22} {verdict}".rstrip())
    return "\n".join(lines)


def format_relative(rows: Sequence[dict[str, Any]], scenarios: Sequence[Scenario]) -> str:
    """Every other contender's figures over flux_async's, scenario by scenario."""
    lines = ["Others relative to flux_async (scenario 5: to flux_async: generate; same scenario,"
             " same run; >1 = more than it):"]
    metrics = [("wall", "wall"), ("requests/task", "requests_per_task"), ("p50", "p50"),
               ("p99", "p99"), ("CPU/task", "cpu_per_task"), ("peak RSS", "peak_rss_mb"),
               ("RSS/pending", "rss_per_pending")]
    for s in scenarios:
        base_key = MEASURED.get(s.key, "flux_async")
        base = _find(rows, s.key, base_key)
        if base is None:
            continue
        for row in rows:
            if row["scenario"] != s.key or row["contender"] == base_key:
                continue
            if s.mode == "pending" and (row.get("pending") or 0) < s.n:
                lines.append(f"  [{s.key}] {row['label']:<22} never had all tasks pending")
                continue
            parts = []
            for name, key in metrics:
                r = _ratio(row.get(key), base.get(key))
                if r is not None:
                    parts.append(f"{name} {r:.2f}x")
            lines.append(f"  [{s.key}] {row['label']:<22} " + ", ".join(parts))
    return "\n".join(lines) if len(lines) > 1 else ""
