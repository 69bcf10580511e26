"""The names a coordinator uses in Redis: its namespace and this process's id."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import socket

from .._core.errors import ConfigurationError

__all__ = [
    "NAMESPACE_LABEL",
    "check_namespace",
    "check_seconds",
    "namespace_for",
    "namespace_of",
    "new_process_id",
    "tag_for",
]

# HMAC's message: the namespace is a keyed hash of this label under the token.
NAMESPACE_LABEL = b"flux_async coordination namespace v1"


def namespace_for(api_key: str) -> str:
    """The namespace of a token: 24 hex digits that reveal nothing about it."""
    return namespace_of(hmac.new(api_key.encode(), NAMESPACE_LABEL, hashlib.sha256).hexdigest())


def namespace_of(digest: str) -> str:
    """The namespace of a token from its digest under ``NAMESPACE_LABEL``."""
    return digest[:24]


def new_process_id() -> str:
    """Names this process in Redis: host, pid and a random part (pids are reused)."""
    host = socket.gethostname().split(".")[0][:40]
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def tag_for(process_id: str) -> str:
    """A process's short name in callback URLs and channels: it reveals no host or pid."""
    return hashlib.sha256(process_id.encode()).hexdigest()[:12]


def check_namespace(value: object) -> str:
    if (not isinstance(value, str) or not value or len(value) > 100
            or not value.isprintable() or any(c in value for c in " {}")):
        raise ConfigurationError(
            "must be a non-empty printable string without spaces or braces",
            field="namespace",
        )
    return value


def check_seconds(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        value > 0 and math.isfinite(value)
    ):
        raise ConfigurationError("must be a positive number of seconds", field=field)
    return float(value)
