"""What a batch run does with each line, decided from the manifest before any request.

Per line, with its record for the same request (``key``):

* none (or ``invalid``): submitted;
* ``done`` with its files present: skipped;
* a task id and no result (``submitted``, ``done`` with files missing, or
  ``failed`` for a reason the task itself may not have: a timeout, a download or
  network error, a full disk, a refused key): waited on again by task id, free;
* ``failed`` otherwise: kept as failed, submitted again (paid) only with
  ``--retry-failed``; except failures that created nothing and only need the
  account fixed (``auth``, ``balance``, ``disabled``), and, with ``--local``,
  tasks of an earlier run's local server: those are simply submitted.

A line whose only records are for other requests, with task ids, is a *changed*
line (``changed_lines``): the command refuses to run unless ``--allow-changed``.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ._input import Entry
from ._ledger import RESOLVED_FAILURES, Ledger, Record

__all__ = ["Plan", "changed_lines", "file_prefix", "make_plan"]

# Failures without a task id that a new submission may simply retry, once the
# account is fixed: the service refused the key before creating anything.
_FREE_TO_RETRY = frozenset({"auth", "balance", "disabled"})


def changed_lines(entries: list[Entry], ledger: Ledger) -> list[Entry]:
    """Lines whose request is not the one the manifest holds a task id for.

    Running them would leave the manifest with two requests for one line; a run of
    another input into the same directory would read as nothing but such lines.
    """
    return [
        entry for entry in entries
        if entry.request is not None
        and ledger.find(entry.line, entry.key) is None
        and ledger.others(entry.line, entry.key)
    ]


def file_prefix(entry: Entry, ledger: Ledger) -> str:
    """The stem of the line's files; with another request's records on the same line
    (``--allow-changed``), the key keeps the two requests' files apart."""
    if entry.key and ledger.others(entry.line, entry.key):
        return f"{entry.prefix}-{entry.key[:6]}"
    return entry.prefix


@attrs.define
class Plan:
    fresh: list[Entry] = attrs.field(factory=list)
    resume: list[tuple[Entry, str]] = attrs.field(factory=list)  # with its task id
    invalid: list[Entry] = attrs.field(factory=list)
    changed: list[Entry] = attrs.field(factory=list)  # run as new lines (of `fresh`)
    skipped: int = 0  # done in an earlier run
    kept_failed: int = 0  # failed earlier, not retried


def make_plan(
    entries: list[Entry], ledger: Ledger, out: Path, *, retry_failed: bool, local: bool
) -> Plan:
    plan = Plan()
    for entry in entries:
        if entry.error is not None:
            plan.invalid.append(entry)
            continue
        record = ledger.find(entry.line, entry.key)
        current = ledger.get(entry.line)
        if record is None and current is not None and current.status != "invalid":
            plan.changed.append(entry)
        if record is None or record.status == "invalid":
            plan.fresh.append(entry)
        elif record.status == "done" and _files_present(record, out):
            plan.skipped += 1
        elif record.task_id and (
            record.status in ("submitted", "done")
            or (record.status == "failed" and record.reason not in RESOLVED_FAILURES)
        ):
            plan.resume.append((entry, record.task_id))
        elif record.status == "failed" and not retry_failed and not (
            record.reason in _FREE_TO_RETRY or (local and record.reason == "not_found")
        ):
            plan.kept_failed += 1
        else:
            plan.fresh.append(entry)
    return plan


def _files_present(record: Record, out: Path) -> bool:
    return bool(record.files) and all((out / name).is_file() for name in record.files)
