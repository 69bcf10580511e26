"""``flux-async``: the command line of flux_async (also ``python -m flux_async``).

Built on the public API of ``flux_async`` (and ``flux_async.testing`` for
``--local`` and ``serve``) only. ``main()`` maps every outcome to an exit status
and never lets a traceback out unless ``--debug`` asks for it:

* 0 everything done; 1 something failed (a task, a download, a batch line, or a
  batch stopped early because every later line would fail: key, balance, disk);
* 2 bad usage or configuration, found before any request (unknown option, bad
  value, missing key, unreadable file, unwritable --out, a manifest written for
  other requests, another batch on the same --out);
* 130 interrupted by Ctrl-C (143 by SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from flux_async import ConfigurationError, FluxError, GenerateRequest, ValidationError

from ._args import UsageError, build_parser
from ._batch import run_batch
from ._commands import edit, gallery, generate, serve, task_get, task_wait
from ._connect import check_key
from ._input import Defaults, Entry, InputError, parse_lines, read_source
from ._ledger import UNREADABLE_NAME, Ledger, LedgerBusyError
from ._output import PROG, error, warn
from ._plan import changed_lines

__all__ = ["main"]

# Exceptions that mean "you asked for something impossible": exit status 2.
_USAGE_ERRORS = (UsageError, ConfigurationError, ValidationError, InputError, LedgerBusyError)


def batch(args: argparse.Namespace) -> int:
    """Check everything that can be checked before any request, then run the job."""
    # The command-line defaults are checked once here rather than on every line.
    GenerateRequest("check", model=args.model, size=args.size, count=args.count)
    text, by_name = read_source(args.file)
    defaults = Defaults(model=args.model, size=args.size, count=args.count)
    # A line's image path is relative to the batch file's directory.
    base = None if args.file == "-" else Path(args.file).resolve().parent
    entries = parse_lines(text, jsonl=True if by_name else None, defaults=defaults, base=base)
    if not entries:
        raise UsageError(f"{'standard input' if args.file == '-' else args.file} has no prompts")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    ledger = Ledger(out)
    try:
        ledger.open()
    except OSError as exc:
        raise UsageError(f"cannot use {out} for the manifest: {exc.strerror or exc}") from None
    except ImportError as exc:  # the cli extra is not installed
        raise UsageError(str(exc)) from None
    try:
        if ledger.torn:
            salvaged = (f", {ledger.salvaged} of them with a task id recovered"
                        if ledger.salvaged else "")
            warn(f"{ledger.path}: {ledger.torn} unreadable record(s), such as one torn by a "
                 f"killed run{salvaged}; copied to {out / UNREADABLE_NAME}; lines without a "
                 "readable record run again")
        changed = changed_lines(entries, ledger)
        if changed and not args.allow_changed:
            raise UsageError(_changed_message(args.file, ledger, changed))
        return run_batch(args, entries, ledger)
    finally:
        ledger.close()


def _changed_message(source: str, ledger: Ledger, changed: list[Entry]) -> str:
    lines = ", ".join(str(e.line) for e in changed[:5]) + (", ..." if len(changed) > 5 else "")
    name = "standard input" if source == "-" else source
    return (
        f"{ledger.path} was written for other requests: {len(changed)} line(s) of {name} "
        f"(line {lines}) differ from the requests it holds task ids for. Nothing was sent. "
        "To run this file, pick another --out; to resume the earlier job, run it with its "
        "own input file. --allow-changed runs the changed lines as new (paid) tasks and "
        "keeps the earlier records and task ids in the manifest."
    )


def _command(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    if args.command == "task":
        return task_get if args.task_command == "get" else task_wait
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "generate": generate, "edit": edit, "batch": batch, "serve": serve, "gallery": gallery,
    }
    return commands[args.command]


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, if there is just one."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1:
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


class _StderrHandler(logging.Handler):
    """Log lines on standard error, looked up at each line: a live progress display
    swaps ``sys.stderr`` to keep messages above its bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{PROG}: {self.format(record)}", file=sys.stderr, flush=True)
        except Exception:  # a logging failure must not fail the command
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else 2
    debug = bool(getattr(args, "debug", False))
    logger = logging.getLogger("flux_async")
    handler = _StderrHandler()
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        if args.command not in ("serve", "gallery"):
            check_key(args)  # first: before reading input or starting anything
        return _command(args)(args)
    except KeyboardInterrupt:  # only where the loop cannot catch signals (Windows)
        warn("interrupted")
        return 130
    except BaseException as exc:
        leaf = _leaf(exc)
        if debug:
            traceback.print_exception(exc)
        if isinstance(leaf, _USAGE_ERRORS):
            error(str(leaf))
            return 2
        if isinstance(leaf, FluxError):
            error(str(leaf))
            return 1
        if isinstance(leaf, OSError):
            error(f"{leaf.strerror or leaf}" + (f": {leaf.filename}" if leaf.filename else ""))
            return 1
        if isinstance(leaf, KeyboardInterrupt):
            warn("interrupted")
            return 130
        if not isinstance(leaf, Exception):
            raise  # SystemExit and the like
        error(f"unexpected {type(leaf).__name__}: {leaf} (--debug shows the traceback)")
        return 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
