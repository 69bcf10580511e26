"""Every supported Python, and the oldest redis-py and aiohttp we claim: ``nox`` sessions.

``.ci/run`` runs the whole suite on one interpreter (3.11) in its own virtualenv,
then these sessions (``pip install "nox[uv]"``, then ``nox``):

- ``quick-3.10``, ``quick-3.12``, ``quick-3.13``: a representative part of the
  suite (``QUICK`` below: the protocol without I/O, the network edge over real
  sockets, and end-to-end runs against the local server) on each other supported
  interpreter, in well under a minute each;
- ``redis_oldest``: the Redis coordinator's tests on redis-py 5.0.1, the oldest
  the ``redis`` extra allows, on the oldest Python (the whole suite runs on the
  newest redis-py);
- ``aiohttp_oldest``: the client end to end and the local server on aiohttp 3.10.11,
  the oldest the package allows;
- ``docs``: ``mkdocs build --strict`` (not among the default sessions: ``.ci/run``
  builds the site in its own virtualenv; ``nox -s docs`` for a developer).

A missing interpreter fails its session (``error_on_missing_interpreters``), so a
machine without one cannot pass silently. Interpreters are looked for on
``PATH`` and among pyenv's versions (``$PYENV_ROOT/versions/3.X.*/bin``), which
are not on ``PATH`` unless pyenv selects them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import nox

#: The interpreters of the quick part: every supported version but the one the
#: whole suite runs on (``.ci/run``'s, 3.11). Keep in step with pyproject's
#: ``requires-python`` and classifiers.
QUICK_PYTHONS = ["3.10", "3.12", "3.13"]

#: The quick part: files (or tests) whose failure on one interpreter would most
#: likely be that interpreter's. Timing-heavy scale tests stay in the whole suite.
QUICK = [
    # the protocol without I/O, and the layout rules
    "tests/test_models.py",
    "tests/test_validation.py",
    "tests/test_protocol.py",
    "tests/test_state.py",
    "tests/test_retry.py",
    "tests/test_limits.py",
    "tests/test_submission.py",
    "tests/test_tracker.py",
    "tests/test_following.py",
    "tests/test_flights.py",
    "tests/test_grace.py",
    "tests/test_poller_done.py",
    "tests/test_public_api.py",
    "tests/test_layout.py",
    # the network edge and the local server, over real sockets
    "tests/test_http.py",
    "tests/test_download.py",
    "tests/testing",
    # end to end against the local server: calls, map, cancellation, callbacks
    # (aiohttp, Starlette, FastAPI), uploads, the blocking client, the CLI
    "tests/test_client.py",
    "tests/test_bulk.py",
    "tests/test_paid_tasks_kept.py",
    "tests/test_callbacks.py",
    "tests/test_asgi.py::test_callbacks_resolve_waits_without_any_task_query",
    "tests/test_asgi.py::test_callbacks_without_a_waiter",
    "tests/test_asgi.py::test_no_client_attached_answers_503",
    "tests/test_upload.py",
    "tests/test_sync.py",
    "tests/test_cli.py::test_generate_and_edit_json",
    # idempotency keys and the journal: SQLite, its writer thread, file locks;
    # the plain ASGI receiver and the download guard
    "tests/test_journal.py",
    "tests/test_journal_processes.py::test_four_processes_with_one_key_create_one_task",
    "tests/test_asgi_app.py",
    "tests/test_hostile_downloads.py",
]

#: Tests of the files above left to the whole suite: scale and timing tests of
#: several seconds each, which say nothing more about one interpreter.
QUICK_SKIP = [
    "test_two_hundred_gathered_generations",
    "test_the_key_is_never_shown",
    "test_tighter_server_limits_only_change_the_429_rate",
    "test_client_at_the_server_limits_gets_no_429",
    "test_query_429s_slow_the_poller_but_lose_nothing",
    "test_faulty_submissions_end_typed_and_are_never_sent_twice",
    "test_breaking_out_of_map_cancels_the_rest",
    "test_map_never_holds_more_than_max_concurrency_in_flight",
    "test_connect_errors_are_retried_until_the_service_is_up",
    "test_tasks_the_task_store_does_not_know_yet_are_all_delivered",
    "test_cli_edit",
    "test_batch_lines_with_local_images",
    "test_failed_polls_are_retried_not_surfaced",
    "test_early_posts_for_other_task_ids_displace_nothing",
    "test_map_ordered_keeps_input_order",
]

#: The oldest redis-py the ``redis`` extra allows (``redis>=5.0.1``).
REDIS_OLDEST = "5.0.1"
REDIS_TESTS = ["tests/redis/test_coordinator.py", "tests/redis/test_clients.py"]

#: The oldest aiohttp the package allows (``aiohttp>=3.10``), and what runs on it: the
#: client end to end, the journal, downloads and uploads, callbacks, the local server.
AIOHTTP_OLDEST = "3.10.11"
AIOHTTP_TESTS = ["tests/test_client.py", "tests/test_journal.py", "tests/testing",
                 "tests/test_download.py", "tests/test_hostile_downloads.py",
                 "tests/test_callbacks.py", "tests/test_upload.py", "tests/test_sync.py"]

nox.options.sessions = [*(f"quick-{v}" for v in QUICK_PYTHONS), "redis_oldest",
                        "aiohttp_oldest"]
nox.options.error_on_missing_interpreters = True
# Never fetch an interpreter: a missing one is reported, not papered over.
nox.options.download_python = "never"
# uv makes each session's virtualenv in seconds; plain virtualenv when uv is absent.
nox.options.default_venv_backend = "uv|virtualenv"


def _version_of(python: str) -> str | None:
    """``"3.10"`` for an interpreter that runs, else None (a pyenv shim of a version
    pyenv does not select is on ``PATH`` but fails)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _pyenv_pythons(version: str) -> list[str]:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}"))

    def release(path: str) -> list[int]:  # .../versions/3.10.13/bin/python3.10: [3, 10, 13]
        return [int(n) for n in re.findall(r"\d+", Path(path).parents[1].name)]

    return sorted(found, key=release, reverse=True)  # the newest patch release first


def _put_on_path(versions: list[str]) -> None:
    """Put the directory of a working ``python3.X`` first on ``PATH`` for each version."""
    dirs = []
    for version in versions:
        for candidate in [f"python{version}", *_pyenv_pythons(version)]:
            if _version_of(candidate) == version:
                if os.sep in candidate:
                    dirs.append(os.path.dirname(candidate))
                break
    if dirs:
        os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_put_on_path([*QUICK_PYTHONS, "3.11"])


def _pytest(session: nox.Session, what: str, *args: str) -> None:
    """Run pytest, then log one line saying which interpreter passed what, with the
    counts (``.ci/run`` gathers these lines into its summary)."""
    report = Path(session.create_tmp(), "junit.xml")
    session.run("python", "-m", "pytest", "-q", f"--junitxml={report}", *args,
                *session.posargs)
    root = ElementTree.parse(report).getroot()
    suite = root.find("testsuite") if root.tag == "testsuites" else root
    assert suite is not None
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    if tests == skipped:  # nothing ran: not a pass
        session.error(f"{what}: no test ran")
    version = session.run("python", "-c", "import platform; print(platform.python_version())",
                          silent=True)
    counts = f"{tests - skipped} passed" + (f", {skipped} skipped" if skipped else "")
    session.log(f"Python {str(version).strip()}: {what}: {counts}")


@nox.session(python=QUICK_PYTHONS)
def quick(session: nox.Session) -> None:
    """The quick part of the suite on one interpreter."""
    session.install("-e", ".[tests,cli]")
    _pytest(session, "the quick part of the suite", *QUICK,
            "-k", " and ".join(f"not {name}" for name in QUICK_SKIP))


@nox.session(python=QUICK_PYTHONS[0])
def redis_oldest(session: nox.Session) -> None:
    """The Redis coordinator on the oldest redis-py the ``redis`` extra allows.

    On the oldest Python too, the other end of the range: there redis-py times
    its reads with the ``async_timeout`` package, not ``asyncio.timeout``.
    """
    if shutil.which("redis-server") is None:  # the tests would skip, and pass
        session.error("redis-server is not installed (Debian: apt-get install redis-server)")
    session.install("-e", ".[tests]", f"redis=={REDIS_OLDEST}")
    installed = session.run("python", "-c", "import redis; print(redis.__version__)",
                            silent=True)
    if str(installed).strip() != REDIS_OLDEST:
        session.error(f"expected redis-py {REDIS_OLDEST}, got {installed}")
    _pytest(session, f"the Redis coordinator's tests on redis-py {REDIS_OLDEST}",
            *REDIS_TESTS)


@nox.session(python=QUICK_PYTHONS[0])
def aiohttp_oldest(session: nox.Session) -> None:
    """The client and the local server on the oldest aiohttp the package allows."""
    session.install("-e", ".[tests,cli]", f"aiohttp=={AIOHTTP_OLDEST}")
    installed = session.run("python", "-c", "import aiohttp; print(aiohttp.__version__)",
                            silent=True)
    if str(installed).strip() != AIOHTTP_OLDEST:
        session.error(f"expected aiohttp {AIOHTTP_OLDEST}, got {installed}")
    _pytest(session, f"the client and the local server on aiohttp {AIOHTTP_OLDEST}",
            *AIOHTTP_TESTS, "-k", " and ".join(f"not {name}" for name in QUICK_SKIP))


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site as CI does: a broken link fails it."""
    session.install("-e", ".[docs]")
    site = Path(session.create_tmp(), "site")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site),
                env={"NO_MKDOCS_2_WARNING": "1"})  # Material's banner about its future
