"""From raw measurements to the table and the ratios the README shows.

A row joins what the client process measured with what the server counted:
notice latency is ``arrival - finish`` per task id, the server having recorded
each task's finish (epoch) and the client the moment the caller held the result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.scenarios import CONTENDER_LABELS, Scenario, bound_seconds, ideal_seconds

__all__ = ["combine", "format_notes", "format_table", "make_row", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def make_row(s: Scenario, client: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """One table row from the client's measurements and the server's final stats."""
    requests = server.get("requests", {})
    n = s.n
    per = client.get("pending") if s.mode == "pending" else n
    per = per or n
    finish = server.get("finish_times", {})
    latencies = [
        arrived - finish[task_id]
        for task_id, arrived in client.get("arrivals", {}).items()
        if task_id in finish
    ]
    failures = sum(client.get("failures", {}).values())
    if s.mode == "complete":
        # Tasks neither delivered nor failed (a job that ended early) are failures too.
        failures += max(0, n - len(client.get("arrivals", {})) - failures)
    duplicates = sum(c - 1 for c in server.get("duplicate_prompts", {}).values())
    row: dict[str, Any] = {
        "scenario": s.key,
        "contender": client["contender"],
        "label": CONTENDER_LABELS[client["contender"]],
        "n": n,
        "wall": client.get("wall"),
        "submissions_per_task": requests.get("images", 0) / n,
        "queries_per_task": (requests.get("retrieve", 0) + requests.get("retrieve_batch", 0)) / n,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "cpu_per_task": client["cpu"] / per if client.get("cpu") is not None else None,
        "cpu_user_per_task": client["cpu_user"] / per if "cpu_user" in client else None,
        "cpu_system_per_task": client["cpu_system"] / per if "cpu_system" in client else None,
        "peak_rss_mb": client["peak_rss_kb"] / 1024 if "peak_rss_kb" in client else None,
        "rate_limited": server.get("rate_limited", 0),
        "duplicates": duplicates,
        "failures": failures,
        "failure_kinds": client.get("failures", {}),
        "tasks_created": server.get("tasks_created"),
        "partial": client.get("partial", False),
    }
    row["requests_per_task"] = row["submissions_per_task"] + row["queries_per_task"]
    # The server counts 429s in one number; a submission answered anything but 429
    # creates a task here (no faults are injected), so the rest were 429s.
    if row["rate_limited"] and row["tasks_created"] is not None:
        on_submissions = max(0, requests.get("images", 0) - row["tasks_created"])
        row["rate_limited_submissions"] = on_submissions
        row["rate_limited_queries"] = row["rate_limited"] - on_submissions
    durations = client.get("durations") or {}
    bound = bound_seconds(s, durations)
    if bound is not None and row["wall"] is not None:
        row["bound"] = bound
        row["vs_bound"] = row["wall"] / bound
        # Submission order = order of creation = finish minus generation time.
        created = sorted(
            (finish[t] - d, d) for t, d in durations.items() if t in finish
        )
        ideal = ideal_seconds(s, [d for _, d in created])
        if ideal is not None:
            row["ideal"] = ideal
            row["vs_ideal"] = row["wall"] / ideal
    if s.mode == "pending":
        pending = client.get("pending") or 0
        row["pending"] = pending
        growth = (client.get("rss_pending_kb", 0) - client.get("rss_before_kb", 0)) * 1024
        row["rss_growth_mb"] = growth / 2**20
        if pending >= n:
            row["rss_per_pending"] = growth / pending
        hold = client.get("hold", {})
        if hold.get("ids_queried"):
            # Requests it takes to ask about every pending task once, and how often
            # each pending task is asked about.
            row["queries_per_round"] = pending * hold["queries"] / hold["ids_queried"]
            row["poll_period"] = hold["seconds"] * pending / hold["ids_queried"]
        row["hold"] = hold
    return row


#: Counters summed over repeated runs; every other number is the median of the runs.
_SUMMED = ("rate_limited", "rate_limited_submissions", "rate_limited_queries", "duplicates",
           "failures")


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a contender: medians, and sums of the counters."""
    if len(runs) == 1:
        return dict(runs[0], runs=1)
    row = dict(runs[0])
    for key, value in runs[0].items():
        if key in _SUMMED:
            row[key] = sum(r.get(key) or 0 for r in runs)
        elif isinstance(value, float) or key in ("p50", "p99", "wall"):
            values = [r[key] for r in runs if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
    kinds: dict[str, int] = {}
    for r in runs:
        for kind, count in r.get("failure_kinds", {}).items():
            kinds[kind] = kinds.get(kind, 0) + count
    row["failure_kinds"] = kinds
    row["runs"] = len(runs)
    row["cpu_per_task_runs"] = [r.get("cpu_per_task") for r in runs]
    errors = [r["error"] for r in runs if r.get("error")]
    if errors:
        row["error"] = "; ".join(errors)
    return row


def _fmt(value: Any, spec: str, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    return format(value, spec).rjust(width)


COLUMNS: list[tuple[str, str, str, int]] = [
    # header, row key, format, width
    ("wall s", "wall", ".1f", 7),
    ("x bound", "vs_bound", ".3f", 7),
    ("x ideal", "vs_ideal", ".3f", 7),
    ("subm/task", "submissions_per_task", ".3f", 9),
    ("qry/task", "queries_per_task", ".3f", 9),
    ("req/task", "requests_per_task", ".3f", 9),
    ("p50 s", "p50", ".3f", 7),
    ("p99 s", "p99", ".3f", 7),
    ("CPU ms/task", "cpu_per_task_ms", ".3f", 11),
    ("peak RSS MB", "peak_rss_mb", ".1f", 11),
    ("B/pending", "rss_per_pending", ".0f", 9),
    ("qry/round", "queries_per_round", ".1f", 9),
    ("429s", "rate_limited", "d", 5),
    ("dup", "duplicates", "d", 4),
    ("fail", "failures", "d", 5),
]


def format_table(rows: Iterable[dict[str, Any]], scenarios: Sequence[Scenario]) -> str:
    titles = {s.key: s.title for s in scenarios}
    label_width = max(len(label) for label in CONTENDER_LABELS.values())
    header = "  ".join([f"{'':2}", "contender".ljust(label_width)] + [
        h.rjust(w) for h, _, _, w in COLUMNS
    ])
    lines = [header, "-" * len(header)]
    current = None
    for row in rows:
        if row["scenario"] != current:
            current = row["scenario"]
            lines.append(f"[{current}] {titles.get(current, '')}")
        values = dict(row)
        if row.get("cpu_per_task") is not None:
            values["cpu_per_task_ms"] = row["cpu_per_task"] * 1000
        cells = [_fmt(values.get(key), spec, w) for _, key, spec, w in COLUMNS]
        lines.append("  ".join(["  ", row["label"].ljust(label_width), *cells]))
    return "\n".join(lines)


def _limits(s: Scenario) -> str:
    parts = []
    if s.max_in_flight is not None:
        parts.append(f"{s.max_in_flight} in flight")
    if s.submit_rate is not None:
        parts.append(f"{s.submit_rate:g} submissions/s")
    if s.query_rate is not None:
        parts.append(f"{s.query_rate:g} queries/s")
    if not parts:
        return "none"
    return ", ".join(parts) + " (429 beyond, without Retry-After)"


def format_notes(scenarios: Sequence[Scenario], rows: Sequence[dict[str, Any]]) -> str:
    """What each scenario ran, and which flux_async settings differ from the defaults."""
    lines = []
    for s in scenarios:
        settings = ", ".join(f"{k}={v}" for k, v in s.flux_settings.items()) or "none"
        limits = "server limits: " + _limits(s)
        lines.append(
            f"[{s.key}] {s.n} tasks, generation {s.generation[0]:g}-{s.generation[1]:g} s; "
            f"{limits}."
        )
        lines.append(f"    flux_async settings changed from defaults: {settings}.")
        lines.append(
            f"    vendor SDK and floors: semaphore of {s.concurrency}; floors poll every "
            f"{s.floor_interval:g} s, {s.floor_batch} ids per retrieve_batch"
            + (f", submit at most {s.floor_submit_rate:g}/s" if s.floor_submit_rate else "")
            + "."
        )
        if s.mode == "pending":
            lines.append(
                "    stops once every task is pending, then holds that state "
                f"{s.hold:g} s; wall s = time until all pending."
            )
        bound = bound_seconds(s)
        if bound is not None:
            lines.append(
                f"    bound set by the limits: max(N / submit rate, sum of generation times / "
                f"max in flight) = {bound:.1f} s for the mean generation time; x bound uses "
                "the generation times the server drew in each run."
            )
        if s.parallel:
            lines.append("    contenders ran at the same time, each against its own server.")
        if s.repeat > 1:
            once = ", ".join(CONTENDER_LABELS[c] for c in s.once if c in s.contenders)
            lines.append(
                f"    {s.repeat} runs of each contender in rotating order"
                + (f" ({once}: one run)" if once else "")
                + ": medians shown (429s, duplicates and failures summed over the runs)."
            )
        for row in rows:
            if row["scenario"] != s.key:
                continue
            notes = []
            if row.get("poll_period") is not None:
                notes.append(f"each pending task asked about every {row['poll_period']:.1f} s")
            if s.mode == "pending" and row.get("pending", s.n) < s.n:
                notes.append(
                    f"only {row.get('pending')} of {s.n} pending after {s.pending_deadline:g} s"
                    + (" (its event loop stuck: partial measurements)" if row.get("partial")
                       else "")
                    + f", RSS +{row.get('rss_growth_mb', 0):.1f} MB for {s.n} jobs started"
                )
            if row.get("rate_limited_submissions") is not None:
                notes.append(f"429s: {row['rate_limited_submissions']} on submissions, "
                             f"{row['rate_limited_queries']} on queries")
            if row.get("failure_kinds"):
                notes.append(f"failures: {row['failure_kinds']}")
            if row.get("error"):
                notes.append(row["error"])
            if notes:
                lines.append(f"    {row['label']}: " + "; ".join(notes))
    return "\n".join(lines)
