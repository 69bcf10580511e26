"""``flux-async batch``: a file of prompts through ``client.map``, kept in a ledger.

The rules that make a run resumable (the manifest is described in ``_ledger``):

* A line's task id is written to the manifest the moment the service gives it
  (map's ``submitted`` event), before anything waits on it.
* On a later run (``_plan``): ``done`` with its files present is skipped; a
  line with a task id and no result is waited on again by task id, which costs
  nothing; a line never submitted is submitted. Lines whose task failed, or
  whose submission may or may not have reached the service, are paid for again
  only with ``--retry-failed``.
* A task id the service does not know fails the line (``not_found``): it is never
  silently submitted again, except with ``--local``, where every run starts a
  fresh local server that cannot know the previous one's tasks.
* A line whose request differs from what the manifest holds a task id for
  (another input file, or an edited line) is refused before any request
  (``_plan.changed_lines``); ``--allow-changed`` runs it as a new line and the manifest
  keeps the earlier record and its task id (see ``_ledger``).
* Ctrl-C stops feeding prompts, waits briefly for submissions already sent to
  return their task ids (so none is paid twice), then cancels the rest: waits
  and downloads (a download leaves no partial file). The manifest stays valid.
* A failure every later line would meet too (``HALTS``: the API key refused or
  out of balance, the application disabled, a full disk, a manifest that cannot
  be written) stops feeding lines the same way, without cancelling anything:
  tasks already submitted are paid, so they are waited on and downloaded, and
  the summary says how to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from flux_async import (
    DownloadError,
    EditRequest,
    FluxClient,
    FluxError,
    ImageResult,
    MapEvent,
    NotFoundError,
    Recovered,
    SubmissionUncertainError,
    TaskFailedError,
)

from ._connect import connect, service_name
from ._feed import Feed
from ._gallery import LiveGallery
from ._images import uploaded
from ._input import Entry, request_fields
from ._ledger import Ledger, Record
from ._output import HALTS, PROG, download_failure, print_json, reason_of, strerror, warn
from ._plan import file_prefix, make_plan
from ._progress import Counts, Reporter, make_reporter
from ._stop import Stop
from ._summary import print_summary, summarize

__all__ = ["JOURNAL_NAME", "BatchJob", "run_batch"]

#: The task journal of a batch, in its output directory: every paid submission of
#: every run, so a run killed at any moment (SIGKILL included) never pays twice.
JOURNAL_NAME = ".journal.db"
# How long a graceful stop waits for submissions on the wire to return a task id.
STOP_GRACE = 15.0
# Download answers meaning the image is gone for good (an expired CDN link).
_GONE = frozenset({403, 404, 410})


class BatchJob:
    """One run over the lines of a batch file; see the module docstring for the rules."""

    def __init__(
        self,
        client: FluxClient,
        ledger: Ledger,
        entries: list[Entry],
        *,
        label: str,
        local: bool,
        service: str,
        retry_failed: bool,
        reporter: Reporter,
        stop: Stop,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.entries = entries
        self.out = ledger.directory
        self.label = label
        self.local = local
        self.service = service
        self.retry_failed = retry_failed
        self.reporter = reporter
        self.stop = stop
        self.counts = Counts()
        self.feed = Feed(client.max_concurrency, prepare=self._upload,
                         release=client.release_key)
        self.fresh: list[Entry] = []
        self.resume: list[tuple[Entry, str]] = []
        self.skipped = 0  # done in an earlier run
        self.kept_failed = 0  # failed earlier, not retried
        self.restarted_local = 0  # stale --local task ids submitted again
        self.cut_off = 0  # submissions cancelled mid-request by a hard stop
        self.halted: tuple[str, str] | None = None  # (reason, message) of a halt
        self._sent: set[int] = set()  # map indexes that got a task id
        self._unsent = 0  # map indexes that failed before getting one
        self._downloads = anyio.Semaphore(max(4, client.max_concurrency))
        self._resume_scope = anyio.CancelScope()
        self._settled = anyio.Event()  # set when a taken line gets a task id or fails
        self._parts_before = _parts(self.out)
        self.gallery = LiveGallery(self.out, entries, ledger, on_error=reporter.note)

    # --- planning --------------------------------------------------------------------

    def plan(self) -> None:
        """Sort every line into skip / wait again / submit (see ``_plan``)."""
        plan = make_plan(self.entries, self.ledger, self.out, retry_failed=self.retry_failed,
                         local=self.local)
        for entry in plan.invalid:
            self._invalid(entry)
        for entry in plan.changed:
            self.reporter.note(
                f"{PROG}: {self.label}:{entry.line}: the line changed since the manifest was "
                "written; running it as a new line"
            )
        self.fresh, self.resume = plan.fresh, plan.resume
        self.skipped, self.kept_failed = plan.skipped, plan.kept_failed

    def _write(self, record: Record) -> None:
        self.ledger.write(record)
        error = self.ledger.write_error
        if error is not None:
            self._halt("manifest", f"cannot write {self.ledger.path}: {error.strerror or error}")

    def _halt(self, reason: str, message: str) -> None:
        """Stop feeding lines: every later one would fail the same way."""
        if self.halted is not None:
            return
        self.halted = (reason, message)
        self.feed.stop()
        self.reporter.note(
            f"{PROG}: stopping: {message}; no more lines are submitted "
            "(tasks already submitted are still waited on and downloaded)"
        )

    def _invalid(self, entry: Entry) -> None:
        self.reporter.note(f"{PROG}: {self.label}:{entry.line}: {entry.error}; line skipped")
        self._write(Record(entry.line, "invalid", error=entry.error, reason="invalid_input"))
        self.counts.total += 1
        self.counts.failed += 1

    # --- running ---------------------------------------------------------------------

    async def run(self) -> None:
        self.counts.total += len(self.fresh) + len(self.resume)
        self.counts.submitted = len(self.resume)
        for entry in self.fresh:
            record = self.ledger.find(entry.line, entry.key)
            # A line that failed before is paid for again (as the plan decided): its
            # key, which would answer the recorded failure, is freed first.
            self.feed.put(entry, again=record is not None and record.status == "failed")
        self.reporter.start(self.counts)
        try:
            with self.stop.scope():
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._watch_stop)
                    outer.start_soon(self.gallery.run)
                    async with anyio.create_task_group() as work:
                        work.start_soon(self._resume_all)
                        work.start_soon(self._submit_all, work)
                    outer.cancel_scope.cancel()
        finally:
            # After a hard stop, lines cut off between "taken" and "task id known".
            self.cut_off = self.submitting if self.stop.interrupted else 0
            self.gallery.finish(interrupted=self.stop.interrupted)
            self.reporter.close()
            # Every download of this run is over: a temporary file made since the
            # start is a leftover (some library versions leave them when the disk
            # is full). The lock keeps other batches out of this directory.
            for part in _parts(self.out) - self._parts_before:
                with contextlib.suppress(OSError):
                    part.unlink()

    @property
    def submitting(self) -> int:
        """Lines handed to map that have neither a task id nor a failure yet."""
        return len(self.feed.taken) - len(self._sent) - self._unsent

    async def _watch_stop(self) -> None:
        await self.stop.requested.wait()
        self.feed.stop()
        self._resume_scope.cancel()  # waiting on a task is free to resume later
        if self.submitting:
            self.reporter.note(
                f"{PROG}: stopping: waiting for {self.submitting} submission(s) in progress "
                "to return their task ids (Ctrl-C again to stop at once)"
            )
        with anyio.move_on_after(STOP_GRACE):
            while self.submitting > 0:
                self._settled = anyio.Event()
                await self._settled.wait()
        self.stop.cancel()

    def _report(self) -> None:
        self.reporter.update(self.counts)
        self.gallery.changed()

    async def _upload(self, entry: Entry) -> Entry | None:
        """Upload a line's local image just before it is submitted (uploads are free)."""
        assert isinstance(entry.request, EditRequest)
        assert entry.image is not None
        try:
            request = await uploaded(self.client, entry.request, entry.image)
        except FluxError as exc:
            # Nothing was paid: "invalid" lines run again next time, without --retry-failed.
            self.reporter.note(f"{PROG}: {self.label}:{entry.line}: upload failed: {exc}")
            self._write(Record(entry.line, "invalid", error=str(exc), reason="upload"))
            self.counts.failed += 1
            self._report()
            return None
        return attrs.evolve(entry, request=request)

    async def _resume_all(self) -> None:
        """Wait again on the task ids an earlier run recorded, without submitting."""
        try:
            with self._resume_scope:
                if self.resume:
                    await self._resume(self.resume)
        finally:
            # Only now is it known which lines go back to the feed (stale ids).
            self.feed.close()

    async def _resume(self, items: list[tuple[Entry, str]]) -> None:
        known: set[str] | None
        try:
            # One query per 50 ids tells which ids the service knows, at once,
            # instead of each wait noticing after a few poll rounds.
            known = {task.id for task in await self.client.get_tasks(t for _, t in items)}
        except FluxError as exc:
            warn(f"could not look the earlier tasks up ({exc}); waiting on each")
            known = None
        if known is not None and self.local and len(known) < len(items):
            self.reporter.note(
                f"{PROG}: --local: {len(items) - len(known)} task(s) of an earlier run "
                "belonged to its own local server, gone with it; generating them again "
                "(free, local)"
            )
        async with anyio.create_task_group() as group:
            for entry, task_id in items:
                if known is not None and task_id not in known:
                    self._stale(entry, task_id)
                else:
                    group.start_soon(self._wait_again, entry, task_id)

    async def _wait_again(self, entry: Entry, task_id: str) -> None:
        try:
            result = await self.client.wait(task_id)
        except NotFoundError:
            self._stale(entry, task_id)
        except TaskFailedError as exc:
            if self.retry_failed:
                self._resubmit(entry, task_id, "task_failed", f"task {task_id} failed ({exc}); "
                               "submitting the line again")
            else:
                self._failed(entry, exc, task_id)
        except FluxError as exc:
            self._failed(entry, exc, task_id)
        else:
            await self._download(entry, result, resumed=True)

    def _resubmit(self, entry: Entry, task_id: str, reason: str, why: str) -> None:
        """Send a resumed line back to the feed: it gets a new task (paid, unless local).

        The old task's end is recorded first: the ledger gives a line a new task
        only once its old one can yield nothing more.
        """
        assert entry.request is not None
        self._write(Record(entry.line, "failed", key=entry.key,
                           request=request_fields(entry.request), task_id=task_id,
                           error=why, reason=reason))
        self.reporter.note(f"{PROG}: {self.label}:{entry.line}: {why}")
        self.counts.submitted -= 1  # counted as submitted at the start; counted again
        self.feed.put(entry, again=True)

    def _stale(self, entry: Entry, task_id: str) -> None:
        if self.local:
            # The local server of an earlier run is gone with its tasks; submitting
            # again costs nothing locally. (Noted once, in _resume.)
            self.restarted_local += 1
            assert entry.request is not None
            self._write(Record(entry.line, "failed", key=entry.key,
                               request=request_fields(entry.request), task_id=task_id,
                               error="task of an earlier local server", reason="not_found"))
            self.counts.submitted -= 1
            self.feed.put(entry, again=True)
            return
        self._record_failure(
            entry, "not_found", task_id,
            f"task {task_id} is not known to {self.service} (was the manifest written "
            "against another server or API key?); --retry-failed submits the line again",
        )

    async def _submit_all(self, work: TaskGroup) -> None:
        # aclosing: a cancelled loop closes map at once, which cancels its requests.
        outcomes = self.client.map(self.feed.requests(), on_event=self._on_event)
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                entry = self.feed.taken[outcome.index]
                self.feed.release()
                if outcome.result is not None:
                    work.start_soon(self._download, entry, outcome.result)
                else:
                    assert outcome.error is not None
                    self._failed(entry, outcome.error, outcome.task_id)

    def _on_event(self, event: MapEvent) -> None:
        if event.kind == "submitted":
            entry = self.feed.taken[event.index]
            assert entry.request is not None
            # Written (and flushed) before anything else happens to this task.
            self._write(
                Record(entry.line, "submitted", key=entry.key,
                       request=request_fields(entry.request), task_id=event.task_id)
            )
            self._sent.add(event.index)
            self.counts.submitted += 1
            self._settled.set()
            self._report()
        elif event.kind == "failed" and event.index not in self._sent:
            self._unsent += 1
            self._settled.set()

    async def _download(self, entry: Entry, result: ImageResult, *, resumed: bool = False) -> None:
        async with self._downloads:
            try:
                paths = await self.client.download(
                    result, self.out, prefix=file_prefix(entry, self.ledger), overwrite=True
                )
            except Exception as raised:
                exc = download_failure(raised)
                if exc is None:
                    raise
                if reason_of(exc) == "disk_full":
                    # The task id stays in the manifest: a later run downloads, not pays.
                    message = (f"could not save the images of task {result.task_id} "
                               f"in {self.out}: {strerror(exc)}")
                    self._record_failure(entry, "disk_full", result.task_id, message)
                    return
                gone = isinstance(exc, DownloadError) and exc.status in _GONE
                if resumed and gone and self.retry_failed:
                    # An earlier run's images have expired: only a new task brings them.
                    self._resubmit(entry, result.task_id, "images_gone",
                                   f"the images of task {result.task_id} are gone ({exc}); "
                                   "submitting the line again")
                    return
                hint = "; the image is gone: --retry-failed generates it again" if gone else ""
                self._record_failure(entry, "download", result.task_id, f"{exc}{hint}")
                return
        assert entry.request is not None
        self._write(
            Record(entry.line, "done", key=entry.key, request=request_fields(entry.request),
                   task_id=result.task_id, files=[p.name for p in paths])
        )
        self.counts.done += 1
        self._report()

    def _failed(
        self, entry: Entry, exc: BaseException, task_id: str | None, *, reason: str | None = None
    ) -> None:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, SubmissionUncertainError):
            message += "; --retry-failed submits it again, possibly paying twice"
        self._record_failure(entry, reason or reason_of(exc), task_id, message)

    def _record_failure(
        self, entry: Entry, reason: str, task_id: str | None, message: str
    ) -> None:
        assert entry.request is not None
        self._write(
            Record(entry.line, "failed", key=entry.key, request=request_fields(entry.request),
                   task_id=task_id, error=message, reason=reason)
        )
        self.counts.failed += 1
        self.reporter.note(f"{PROG}: {self.label}:{entry.line}: failed ({reason}): {message}")
        self._report()
        if reason in HALTS:
            self._halt(reason, message)


def _parts(directory: Path) -> set[Path]:
    """The temporary files of downloads in ``directory``."""
    try:
        return set(directory.glob(".flux-*.part"))
    except OSError:
        return set()


async def _run(
    args: argparse.Namespace, entries: list[Entry], ledger: Ledger, label: str
) -> int:
    stop = Stop(graceful=True)
    stop.install()
    job: BatchJob | None = None
    started = time.monotonic()
    try:
        reporter = make_reporter(quiet=args.quiet, transient=args.json)

        def on_recovered(recovered: Recovered) -> None:
            # Tasks an earlier run left running are waited on through their lines;
            # a submission it left of unknown fate is said now (its line fails so).
            if recovered.task_id is None:
                line = (recovered.idempotency_key or "").split("-")[1:2]
                reporter.note(
                    f"{PROG}: {label}:{line[0] if line else '?'}: a submission was on its way "
                    "when an earlier run ended; whether it created a task is unknown, so it "
                    "is not sent again (--retry-failed sends it, possibly paying twice)")

        # --local: its server, and every task of it, ends with the run: nothing to keep.
        journal = None if args.local else ledger.directory / JOURNAL_NAME
        async with connect(args, journal=journal, on_recovered=on_recovered) as client:
            job = BatchJob(
                client, ledger, entries, label=label, local=args.local,
                service=service_name(args), retry_failed=args.retry_failed,
                reporter=reporter, stop=stop,
            )
            job.plan()
            await job.run()
        if job.cut_off and not args.local:
            warn(
                f"{job.cut_off} submission(s) in progress were cut off; the journal keeps "
                "them: the next run waits on those that made a task and pays for none of "
                "them again (one whose fate is unknown is reported instead)"
            )
    except Exception:
        if job is not None:  # where every line stands is worth the most now
            _report(args, job, started)
        raise
    finally:
        stop.uninstall()
    assert job is not None
    summary = _report(args, job, started)
    if stop.interrupted:
        return stop.exit_status
    return 1 if summary["failed"] or summary["stopped"] else 0


def _report(args: argparse.Namespace, job: BatchJob, started: float) -> dict[str, Any]:
    if job.ledger.unsaved:
        # Appending failed (a full disk): one more try to get every record on disk.
        with contextlib.suppress(OSError):
            job.ledger.compact()
    summary = summarize(job, time.monotonic() - started)
    if args.json:
        print_json(summary)
    else:
        print_summary(summary, local=args.local)
    return summary


def run_batch(args: argparse.Namespace, entries: list[Entry], ledger: Ledger) -> int:
    """Run the job with ``ledger`` already open; returns the exit status."""
    label = "<stdin>" if args.file == "-" else args.file
    return asyncio.run(_run(args, entries, ledger, label))
