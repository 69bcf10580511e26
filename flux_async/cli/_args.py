"""The command line: ``flux-async generate | edit | batch | gallery | task get | task wait |
serve``.

Options that say where and how to connect live on a parent parser shared by
every command, so ``--local`` and ``--json`` work after any command name.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from flux_async import __version__
from flux_async._core.settings import API_KEY_ENV, BASE_URL_ENV

#: Addresses downloads may reach although the download guard refuses them, comma-separated.
DOWNLOAD_ALLOW_ENV = "FLUX_ASYNC_DOWNLOAD_ALLOW"

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DOWNLOAD_ALLOW_ENV",
    "UsageError",
    "base_url_problem",
    "build_parser",
    "check_out_dir",
    "generation_time",
    "rate",
]

_EPILOG = f"""\
The API key is read from ${API_KEY_ENV}; prefer it to --api-key, which
other users of the machine can see in the process list. --local runs everything
against a bundled local server instead: no key, no network, real PNG files.

exit status: 0 all done; 1 something failed (or a batch stopped early: key
refused, balance used up, disk full); 2 bad usage or configuration, found before
any request; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""


class UsageError(Exception):
    """Bad usage found after parsing (exit status 2, like argparse's own errors)."""


def _zero_means_none(what: str) -> Callable[[str], float | None]:
    """A parser of a number >= 0 (``what`` names it in errors); 0 means "no limit"."""

    def parse(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be a {what} >= 0, got {text!r}")
        return value or None

    return parse


# A rate in requests per second, and a duration; 0 means no client-side limit.
rate = _zero_means_none("number")
_seconds = _zero_means_none("number of seconds")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _text(what: str) -> Callable[[str], str]:
    """A parser of a non-empty string without spaces or control characters: an empty
    value is most often an unset shell variable, and would silently mean a default."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"must not be empty (expected {what})")
        if any(c.isspace() or not c.isprintable() for c in text):
            raise argparse.ArgumentTypeError(
                f"must not contain spaces or control characters (expected {what})")
        return text

    return parse


_task_id = _text("a task id")
_host = _text("a host name or address, such as 127.0.0.1 or 0.0.0.0")


def _path(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"must not be empty (expected {what})")
        return text

    return parse


_directory = _path("a directory")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def base_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the API's base URL, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL such as https://api.acedata.cloud, got {url!r}"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    return None


def _base_url(text: str) -> str:
    problem = base_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def check_out_dir(directory: str, option: str = "--out") -> Path:
    """Create ``directory`` if needed and make sure a file can be written there, before
    anything is paid for: images that cannot be saved are lost money."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".flux-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {directory}: cannot write there: "
                         f"{exc.strerror or exc}") from None
    return path


def generation_time(text: str) -> tuple[float, float]:
    """``2`` (always 2 s) or ``1,3`` (uniformly between 1 and 3 s)."""
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected SECONDS or LO,HI, got {text!r}")
    lo, hi = values[0], values[-1]
    if lo > hi:
        raise argparse.ArgumentTypeError(f"LO must not exceed HI, got {text!r}")
    return lo, hi


def _common() -> argparse.ArgumentParser:
    """Options every command takes."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("connection")
    where.add_argument(
        "--local", action="store_true",
        help="run against a local server started in this process: no key, no network",
    )
    where.add_argument(
        "--local-generation-time", type=generation_time, default=(1.0, 3.0),
        metavar="SECONDS|LO,HI", help="how long a --local generation takes (default 1,3)",
    )
    where.add_argument(
        "--base-url", metavar="URL", type=_base_url,
        help=f"API base URL (default ${BASE_URL_ENV}, then https://api.acedata.cloud)",
    )
    where.add_argument(
        "--api-key", metavar="KEY", type=_text("an API key"),
        help=f"API key; prefer ${API_KEY_ENV}, command lines are visible to other users",
    )
    where.add_argument(
        "--download-allow", action="append", default=[], metavar="ADDRESS",
        type=_text("an address, such as 127.0.0.1:8000 or 10.0.0.0/8"),
        help="let downloads reach this address (ADDRESS:PORT, a network, or a URL's "
        "address and port), though it is loopback or private; downloads refuse those "
        f"unless told (repeatable; also ${DOWNLOAD_ALLOW_ENV}, comma-separated)",
    )
    where.add_argument(
        "--timeout", type=_seconds, default=600.0, metavar="SECONDS",
        help="give up waiting for a task after this long (default 600, 0 for never)",
    )
    where.add_argument(
        "--poll-interval", type=_positive_float, default=1.0, metavar="SECONDS",
        help="time between task status checks (default 1)",
    )
    out = common.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print machine-readable JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress, only results")
    out.add_argument("--debug", action="store_true", help="log requests and show tracebacks")
    return common


def _request_options(parser: argparse.ArgumentParser, *, count: bool) -> None:
    parser.add_argument("--model", help="e.g. flux-dev, flux-pro-1.1, flux-kontext-pro")
    parser.add_argument("--size", help="e.g. 1024x1024, or an aspect ratio such as 16:9")
    if count:
        parser.add_argument("--count", type=_positive_int, help="images per prompt")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="flux-async",
        description="Generate and edit images with the Ace Data Cloud Flux API.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    generate = commands.add_parser(
        "generate", parents=[common], help="generate images from a prompt",
        description="Generate images from PROMPT, wait for them, download them, print the "
        "file paths.",
    )
    generate.add_argument("prompt", metavar="PROMPT")
    _request_options(generate, count=True)
    generate.add_argument("--out", default=".", type=_directory, metavar="DIR",
                          help="where images go (.)")
    generate.add_argument("--no-download", action="store_true", help="print URLs only")

    edit = commands.add_parser(
        "edit", parents=[common], help="edit an image by prompt",
        description="Edit the image (a local file, uploaded first, or an http(s) URL) as "
        "PROMPT says; download the result.",
    )
    edit.add_argument("prompt", metavar="PROMPT")
    image = edit.add_mutually_exclusive_group(required=True)
    image.add_argument("--image", metavar="FILE|URL",
                       help="the image to edit: a PNG, JPEG, WebP or GIF file (at most 25 MB, "
                       "uploaded first) or an http(s) URL")
    image.add_argument("--image-url", metavar="URL", help="the image to edit, by URL")
    _request_options(edit, count=False)
    edit.add_argument("--out", default=".", type=_directory, metavar="DIR",
                      help="where images go (.)")
    edit.add_argument("--no-download", action="store_true", help="print URLs only")

    batch = commands.add_parser(
        "batch", parents=[common], help="run a file of prompts, resumably",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every line of FILE and download every image into DIR.\n\n"
        "FILE has one prompt a line (blank lines and #comments skipped), or is JSONL\n"
        "with fields prompt, model, size, count, action (generate|edit), image (a file,\n"
        "relative to FILE's directory, uploaded before its line is submitted, or a URL),\n"
        "image_url, name (file name stem). '-' reads standard input.\n\n"
        "DIR/manifest.jsonl records every line as it goes. Running the same command\n"
        "again resumes: done lines are skipped, submitted lines are waited on by task\n"
        "id (not paid again), failed lines are retried only with --retry-failed.\n\n"
        "The manifest never forgets a task id: a FILE whose lines differ from the\n"
        "requests DIR's manifest holds task ids for is refused (exit status 2).\n"
        "A refused key, a used-up balance or a full disk stops feeding new lines;\n"
        "submitted ones are still waited on. Fix the cause, run the same command.\n\n"
        "DIR/index.html shows every line's images (or why it failed) and is kept\n"
        "current while the job runs: open it in a browser.",
    )
    batch.add_argument("file", type=_path("a file name, or - for standard input"),
                       metavar="FILE")
    batch.add_argument("--out", required=True, type=_directory, metavar="DIR",
                       help="images and manifest")
    _request_options(batch, count=True)
    batch.add_argument(
        "--concurrency", type=_positive_int, default=10, metavar="N",
        help="generations in flight at once (default 10)",
    )
    batch.add_argument(
        "--rate", type=rate, default=5.0, metavar="PER_SECOND",
        help="submissions per second (default 5, 0 for no limit)",
    )
    batch.add_argument(
        "--retry-failed", action="store_true",
        help="submit failed lines again (a new, paid task each)",
    )
    batch.add_argument(
        "--allow-changed", action="store_true",
        help="run lines that differ from the manifest's requests as new (paid) lines; "
        "the manifest keeps the earlier records and task ids (without it such a run "
        "is refused)",
    )

    gallery = commands.add_parser(
        "gallery", help="rebuild DIR/index.html, the page of a batch's images",
        description="Rebuild DIR/index.html from DIR/manifest.jsonl: every line of a batch "
        "with its images, or why it failed. 'batch' keeps it current as it runs; this "
        "needs no key and no network.",
    )
    gallery.add_argument("dir", type=_directory, metavar="DIR",
                         help="the --out directory of a batch")
    gallery.add_argument("--debug", action="store_true", help="show tracebacks")

    task = commands.add_parser("task", help="look at tasks by id")
    task_commands = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    get = task_commands.add_parser(
        "get", parents=[common], help="show tasks' status and images",
        description="Show the status and images of one or more tasks.",
    )
    get.add_argument("ids", nargs="+", type=_task_id, metavar="ID")
    get.add_argument("--out", type=_directory, metavar="DIR",
                     help="also download the images of finished tasks")
    wait = task_commands.add_parser(
        "wait", parents=[common], help="wait for tasks, then download their images",
        description="Wait for tasks to finish and download their images.",
    )
    wait.add_argument("ids", nargs="+", type=_task_id, metavar="ID")
    wait.add_argument("--out", default=".", type=_directory, metavar="DIR",
                      help="where images go (.)")

    serve = commands.add_parser(
        "serve", help="run the local Flux server for other tools",
        description="Serve the bundled local Flux API until Ctrl-C; point tools at the "
        "printed URL and token.",
    )
    serve.add_argument("--host", default="127.0.0.1", type=_host,
                       help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--generation-time", type=generation_time, default=(1.0, 3.0), metavar="SECONDS|LO,HI",
        help="how long a generation takes (default 1,3)",
    )
    serve.add_argument(
        "--failure-rate", type=_share, default=0.0, metavar="SHARE",
        help="share of tasks that fail, 0 to 1 (default 0)",
    )
    serve.add_argument("--seed", type=int, help="make a run reproducible")
    serve.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser
