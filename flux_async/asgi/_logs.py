"""Keeping callback tokens out of access logs, whatever the framework."""

from __future__ import annotations

import logging
import re

from .._core.callbacks import TOKEN_PARAM

__all__ = ["TokenLogFilter"]

_TOKEN_IN_TEXT = re.compile(rf"({TOKEN_PARAM}=)[^&\s\"']*")


class TokenLogFilter(logging.Filter):
    """Masks callback tokens in log records (the access log prints query strings).

    Rewrites the record's message and string arguments, so formatters that pick
    the arguments apart (uvicorn's access formatter does) see the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _mask(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_mask(a) if isinstance(a, str) else a for a in record.args)
        return True


def _mask(text: str) -> str:
    return _TOKEN_IN_TEXT.sub(r"\1<hidden>", text)
