"""Run the local Flux server standalone: ``python -m flux_async.testing --port 8000``.

Benchmarks start it in a subprocess and parse the first line it prints::

    flux_async.testing listening on http://127.0.0.1:PORT token=TOKEN

then drive it over HTTP (``/_local/stats``, ``/_local/settings``, ...).
``--link BYTES:GAP`` sends every answer in pieces (default: ``FLUX_LOCAL_LINK``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ._serve import serve
from ._settings import DEFAULT_TOKEN, LINK_ENV, ServerSettings, link_from_env

__all__ = ["build_parser", "main", "serve"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m flux_async.testing``."""
    parser = argparse.ArgumentParser(
        prog="python -m flux_async.testing",
        description="Run a local server of the Ace Data Cloud Flux API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--token", action="append", help=f"accepted token, repeatable (default {DEFAULT_TOKEN})"
    )
    parser.add_argument(
        "--generation-time", nargs=2, type=float, metavar=("LO", "HI"), default=(1.0, 3.0)
    )
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--max-in-flight", type=int)
    parser.add_argument("--submit-rate", type=float)
    parser.add_argument("--query-rate", type=float)
    parser.add_argument("--callback-drop-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--link", metavar="BYTES:GAP",
        help=f"answer in pieces of BYTES, GAP seconds apart, 'off' for none (default ${LINK_ENV})",
    )
    parser.add_argument("--visibility-delay", type=float, default=0.0)
    parser.add_argument("--submit-answer-delay", type=float, default=0.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        link = link_from_env() if args.link is None else link_from_env({LINK_ENV: args.link})
        settings = ServerSettings(
            generation_time=(args.generation_time[0], args.generation_time[1]),
            failure_rate=args.failure_rate,
            max_in_flight=args.max_in_flight,
            submit_rate=args.submit_rate,
            query_rate=args.query_rate,
            callback_drop_rate=args.callback_drop_rate,
            seed=args.seed,
            link_chunk_bytes=link[0],
            link_chunk_gap=link[1],
            visibility_delay=args.visibility_delay,
            submit_answer_delay=args.submit_answer_delay,
        )
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(
            serve(settings, host=args.host, port=args.port, tokens=args.token or [DEFAULT_TOKEN])
        )
    except OSError as exc:
        print(f"flux_async.testing: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # signal handlers unavailable on this platform
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
