"""A MkDocs hook: the command line reference shows the parser's own ``--help``.

A page line ``<!-- flux-async-help: task wait -->`` becomes the help text of
``flux-async task wait``, taken from ``flux_async.cli._args.build_parser()`` at
build time, so the reference cannot drift from the options the command takes.
A line naming no command is an error, and fails the build.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from flux_async.cli._args import build_parser

_MARKER = re.compile(r"^<!-- flux-async-help:(?P<command>[^>]*)-->$", re.M)
_WIDTH = "88"  # argparse wraps to $COLUMNS; a fixed width makes the page the same everywhere


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise ValueError(f"flux-async has no command {name!r} (in {parser.prog!r})")


def help_text(command: str) -> str:
    """``flux-async COMMAND --help``, as the terminal would show it at 88 columns."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        parser = build_parser()
        for name in command.split():
            parser = _subparser(parser, name)
        return parser.format_help()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    def block(match: re.Match[str]) -> str:
        return f"```text\n{help_text(match['command'].strip()).rstrip()}\n```"

    return _MARKER.sub(block, markdown)
