"""The end of a batch run: where every line stands, as JSON or for people."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Protocol

from ._args import API_KEY_ENV
from ._gallery import LiveGallery
from ._input import Entry
from ._ledger import Ledger, Record
from ._progress import Counts
from ._stop import Stop

__all__ = ["print_summary", "summarize"]

# A halt (see _output.HALTS) for people: what happened, and what to fix before
# running the same command again.
_HALTS = {
    "auth": ("the service refused the API key",
             f"Fix the key (${API_KEY_ENV} or --api-key)"),
    "balance": ("the balance of the API key is used up", "Top it up"),
    "disabled": ("the application of the API key is disabled", "Enable it"),
    "disk_full": ("the disk is full", "Free some space"),
    "manifest": ("the manifest cannot be written", "Free some space or fix its permissions"),
    "journal": ("the task journal cannot be written", "Free some space or fix its permissions"),
}


class Job(Protocol):
    """What a summary reads of a batch run (``BatchJob`` is one)."""

    @property
    def ledger(self) -> Ledger: ...
    @property
    def entries(self) -> list[Entry]: ...
    @property
    def counts(self) -> Counts: ...
    @property
    def out(self) -> Path: ...
    @property
    def gallery(self) -> LiveGallery: ...
    @property
    def stop(self) -> Stop: ...
    @property
    def resume(self) -> list[tuple[Entry, str]]: ...
    @property
    def skipped(self) -> int: ...
    @property
    def restarted_local(self) -> int: ...
    @property
    def kept_failed(self) -> int: ...
    @property
    def halted(self) -> tuple[str, str] | None: ...


def record_of(job: Job, entry: Entry) -> Record | None:
    """The record of this very request (not another request of the same line)."""
    record = job.ledger.find(entry.line, entry.key) if entry.request is not None else None
    if record is None:
        # An invalid line, or a valid one whose local image could not be uploaded.
        current = job.ledger.get(entry.line)
        return current if current is not None and current.status == "invalid" else None
    return record


def summarize(job: Job, wall_time: float) -> dict[str, Any]:
    """Where every line of the input stands now, from the ledger."""
    states: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    images = 0
    for entry in job.entries:
        record = record_of(job, entry)
        if record is None:
            states["not_started"] += 1
            continue
        status = record.status
        if status == "done":
            images += len(record.files)
        elif status in ("failed", "invalid"):
            reasons[record.reason or "error"] += 1
            status = "failed"
        elif status == "submitted":
            status = "running"
        states[status] += 1
    stopped = None
    if job.halted is not None:
        reason, message = job.halted
        stopped = {"reason": reason, "message": message}
    unsaved = sorted(
        ({"line": r.line, "task_id": r.task_id} for r in job.ledger.unsaved.values()
         if r.task_id),
        key=lambda item: (item["line"], item["task_id"] or ""),
    )
    return {
        "lines": len(job.entries),
        "done": states["done"],
        "done_now": job.counts.done,
        "skipped": job.skipped,
        "resumed": len(job.resume) - job.restarted_local,
        "failed": states["failed"],
        "failed_by_reason": dict(sorted(reasons.items())),
        "failed_not_retried": job.kept_failed,
        "running": states["running"],
        "not_started": states["not_started"],
        "images": images,
        "out": str(job.out),
        "manifest": str(job.ledger.path),
        "gallery": str(job.gallery.path),
        "wall_time": round(wall_time, 3),
        "interrupted": job.stop.interrupted,
        "stopped": stopped,
        "not_in_manifest": unsaved,
    }


def print_summary(summary: dict[str, Any], *, local: bool) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in summary["failed_by_reason"].items())
    print(
        f"{summary['lines']} lines: {summary['done']} done, {summary['failed']} failed"
        f"{f' ({reasons})' if reasons else ''}; {summary['images']} images in "
        f"{summary['out']}; {summary['wall_time']:.1f}s"
    )
    if summary["skipped"] or summary["resumed"]:
        print(
            f"this run: {summary['done_now']} done ({summary['resumed']} resumed by task id, "
            f"not paid again); {summary['skipped']} done earlier, skipped"
        )
    print(f"manifest: {summary['manifest']}  gallery: {summary['gallery']}")
    stopped = summary["stopped"]
    if stopped is not None and not summary["interrupted"]:
        what, fix = _HALTS.get(stopped["reason"], ("every line would fail", "Fix it"))
        print(
            f"stopped early: {what} ({stopped['message']}). "
            f"{summary['not_started']} line(s) not submitted. {fix}, then run the same "
            "command again: done lines are skipped, lines with a task id are waited on "
            "and downloaded (not paid again), the rest are submitted."
        )
    if summary["interrupted"]:
        running = summary["running"]
        print(
            f"interrupted: {running} running on the service, {summary['not_started']} not "
            "started. Run the same command again to resume: lines already submitted are "
            "waited on, not paid for again."
            + (" (With --local the next run starts a fresh local server, which runs them "
               "again at no cost.)" if local and running else "")
        )
    if summary["not_in_manifest"]:
        ids = " ".join(item["task_id"] for item in summary["not_in_manifest"])
        print(
            f"WARNING: {len(summary['not_in_manifest'])} task id(s) could not be written to "
            f"the manifest; keep them: flux-async task wait ID --out DIR fetches their "
            f"images without paying again: {ids}"
        )
    if summary["failed_not_retried"]:
        print(
            f"{summary['failed_not_retried']} line(s) failed in an earlier run and were not "
            "retried: add --retry-failed to submit them again (a new, paid task each)."
        )
