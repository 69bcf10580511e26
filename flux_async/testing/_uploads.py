"""The local server's file uploads: ``POST /files/upload`` and the files it hosts.

As the vendor's storage page documents it: a ``multipart/form-data`` body with
the image in the field ``file``, the API's ``authorization`` header, at most
25 MB. Errors come in the vendor's JSON shape: 400 ``bad_request`` for a body
that is not multipart or has no ``file``, or a file that is not a PNG, JPEG,
WebP or GIF image (judged by its content); 413 ``file_too_large`` over 25 MB.
An upload is stored in memory and served at ``GET /files/uploads/{id}{ext}``
with its content type; that URL is what the answer carries.

The answer's shape is not documented precisely, so ``UploadStore.answer_shape``
picks where the URL goes: ``url``, ``file_url``, ``image_url``, ``data.url``, or
``mixed`` (the default: each in turn, so a client meets all of them).
``UploadStore.faults`` injects failures (a ``Faults``: ``server_error``,
``gateway_page``, ``reset_before`` before the upload is stored; ``reset_after``,
``truncated``, ``slow`` after) into uploads only, counted in
``stats.faults_injected`` under ``uploads:<kind>``.
"""

from __future__ import annotations

import json
import random
from typing import Literal, Protocol, get_args

from aiohttp import BodyPartReader, web

from ._settings import Faults
from ._stats import ServerStats
from ._tasks import Account

__all__ = ["MAX_UPLOAD_BYTES", "AnswerShape", "UploadStore", "image_kind"]

AnswerShape = Literal["url", "file_url", "image_url", "data.url", "mixed"]
_SHAPES: tuple[AnswerShape, ...] = ("url", "file_url", "image_url", "data.url")
#: The most bytes an upload may carry: 25 MB, as the vendor documents.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
UPLOAD_PATH = "/files/upload"
UPLOAD_FIELD = "file"
_FILES_PREFIX = "/files/uploads/"
_CHUNK = 64 * 1024
# Written apart from the client's own check on purpose: the server is the
# reference the client is measured against, not a copy of it.
_MAGIC: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", ".png"),
    (b"\xff\xd8\xff", 0, "image/jpeg", ".jpg"),
    (b"GIF87a", 0, "image/gif", ".gif"),
    (b"GIF89a", 0, "image/gif", ".gif"),
    (b"WEBP", 8, "image/webp", ".webp"),  # after "RIFF" and a length
)


def image_kind(data: bytes) -> tuple[str, str] | None:
    """``(content_type, extension)`` by the file's magic number, or None."""
    for magic, offset, content_type, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return content_type, ext
    return None


class Host(Protocol):
    """What the upload endpoint uses of its server (``LocalFluxServer`` is one)."""

    _rng: random.Random

    @property
    def url(self) -> str: ...
    @property
    def stats(self) -> ServerStats: ...
    def _uuid(self) -> str: ...
    def _error(self, status: int, code: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response: ...
    def _drop(self, request: web.Request) -> web.StreamResponse: ...
    async def _pause(self, delay: float) -> None: ...
    def _before(self, request: web.Request, endpoint: str,
                fault: str | None) -> web.StreamResponse | None: ...
    def _authenticate(self, request: web.Request) -> Account | web.Response: ...


class UploadStore:
    """The uploads one ``LocalFluxServer`` holds, and its upload endpoint's knobs."""

    def __init__(self, server: Host) -> None:
        self._server = server
        self.files: dict[str, tuple[bytes, str]] = {}  # name -> (bytes, content type)
        self.answer_shape: AnswerShape = "mixed"
        self.faults: Faults | None = None
        self._answered = 0

    def __setattr__(self, name: str, value: object) -> None:
        if name == "answer_shape" and value not in get_args(AnswerShape):
            raise ValueError(f"answer_shape must be one of {get_args(AnswerShape)}, got {value!r}")
        if name == "faults" and value is not None and not isinstance(value, Faults):
            raise ValueError("faults must be a Faults instance or None")
        super().__setattr__(name, value)

    def url_of(self, name: str) -> str:
        return f"{self._server.url}{_FILES_PREFIX}{name}"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(UPLOAD_PATH, self._handle_upload),
            web.get(_FILES_PREFIX + "{name}", self._handle_get),
        ]

    def _answer(self, url: str, trace_id: str) -> bytes:
        shape = self.answer_shape
        if shape == "mixed":
            shape = _SHAPES[self._answered % len(_SHAPES)]
        self._answered += 1
        body: dict[str, object] = {"success": True, "trace_id": trace_id}
        if shape == "data.url":
            body["data"] = {"url": url, "expires_in": 7 * 24 * 3600}
        else:
            body[shape] = url
        return json.dumps(body, separators=(",", ":")).encode()

    async def _read_file(self, request: web.Request) -> bytes | web.Response | None:
        """The bytes of the ``file`` field (None when absent), or an error answer."""
        server = self._server
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            # aiohttp asserts on a content type that is not multipart.
            return server._error(400, "bad_request", "expected multipart/form-data")
        found: bytes | None = None
        while True:
            try:
                part = await reader.next()
            except ValueError as exc:
                return server._error(400, "bad_request", f"malformed multipart body: {exc}")
            if part is None:
                return found
            if not isinstance(part, BodyPartReader) or part.name != UPLOAD_FIELD:
                await part.release()  # other fields are read past, as the vendor ignores them
                continue
            data = bytearray()
            while chunk := await part.read_chunk(_CHUNK):
                data += chunk
                if len(data) > MAX_UPLOAD_BYTES:
                    # Answered without reading the rest: aiohttp closes the connection.
                    return server._error(
                        413, "file_too_large",
                        f"the file is larger than {MAX_UPLOAD_BYTES} bytes (25 MB)",
                    )
            found = bytes(data)

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        server = self._server
        fault = None if self.faults is None else self.faults.draw(server._rng.random())
        early = server._before(request, "uploads", fault)
        if early is not None:
            return early
        account = server._authenticate(request)
        if isinstance(account, web.Response):
            return account
        data = await self._read_file(request)
        if isinstance(data, web.Response):
            return data
        if data is None:
            return server._error(400, "bad_request", f"the multipart field {UPLOAD_FIELD!r} "
                                 "is required")
        kind = image_kind(data)
        if kind is None:
            return server._error(
                400, "bad_request", "file is not an image (PNG, JPEG, WebP or GIF)"
            )
        content_type, ext = kind
        name = server._uuid().replace("-", "") + ext
        self.files[name] = (data, content_type)
        return await self._deliver_answer(request, fault, self._answer(self.url_of(name),
                                                                       server._uuid()))

    async def _deliver_answer(
        self, request: web.Request, fault: str | None, body: bytes
    ) -> web.StreamResponse:
        server = self._server
        if fault in ("reset_after", "truncated", "slow"):
            server.stats.faults_injected[f"uploads:{fault}"] += 1
            if fault == "reset_after":
                return server._drop(request)
            if fault == "truncated":
                body = body[: len(body) // 2]
            else:
                assert self.faults is not None
                await server._pause(self.faults.slow_delay)
        return web.Response(body=body, content_type="application/json")

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        stored = self.files.get(name)
        if stored is None:
            return self._server._error(404, "not_found", f"file {name!r} not found")
        data, content_type = stored
        return web.Response(body=data, content_type=content_type)
