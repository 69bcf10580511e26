"""Editing a local image: checks before sending, the multipart body, the answer, and
uploads end to end against the local server (which hosts what it is sent)."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from flux_async import (
    AuthenticationError,
    ConfigurationError,
    FluxClient,
    LocalImage,
    ProtocolError,
    ServerError,
    ValidationError,
)
from flux_async._upload import (
    DEFAULT_UPLOAD_URL,
    MAX_UPLOAD_BYTES,
    build_form,
    is_remote,
    read_upload_answer,
    sniff_image,
    upload_url_for,
)
from flux_async.testing import Faults, LocalFluxServer, ServerSettings
from flux_async.testing._png import render_png

from .conftest import client_for, serve

PNG = render_png("upload-test.png")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 32
WEBP = b"RIFF" + (36).to_bytes(4, "little") + b"WEBPVP8 " + b"\x00" * 32


@pytest.fixture
async def server() -> Any:
    async with LocalFluxServer(ServerSettings(generation_time=0.05, seed=7)) as running:
        yield running


def sent(server: LocalFluxServer) -> int:
    return sum(server.stats.requests.values())


# --- checks without I/O --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"),
     (b"GIF87a....", "image/gif"), (b"<html><body>cat.png</body></html>", None),
     (b"RIFF\x00\x00\x00\x00WAVEfmt ", None), (b"\x89PNG", None), (b"", None)],
)
def test_images_are_told_by_their_content(data: bytes, kind: str | None) -> None:
    found = sniff_image(data)
    assert (found[0] if found else None) == kind


def test_bytes_load_with_their_type_and_a_matching_name() -> None:
    image = LocalImage.load(bytearray(JPEG))
    assert (image.content_type, image.filename, image.data) == ("image/jpeg", "image.jpg", JPEG)
    assert "\\x" not in repr(image)  # the bytes stay out of repr


def test_a_path_loads_under_a_header_safe_name(tmp_path: Path) -> None:
    path = tmp_path / 'my "cat"\r\nX: y.png'
    path.write_bytes(PNG)
    for source in (path, str(path)):
        image = LocalImage.load(source)
        assert image.data == PNG
        assert image.filename == "my_cat_X_y.png"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "empty.png", b""), "is empty"),
        (lambda d: _write(d / "page.png", b"<!doctype html><title>cat</title>"),
         "not a PNG, JPEG, WebP or GIF image"),
        (lambda d: _sparse(d / "big.png", 26 * 1024 * 1024), "over the 25.0 MB"),
        (lambda d: "ftp://example.com/cat.png", "ftp:// URLs are not supported"),
        (lambda d: "   ", "must be a URL, a file path or the image's bytes"),
        (lambda d: 42, "not int"),
        (lambda d: PNG[:4], "not a PNG"),
        (lambda d: b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_UPLOAD_BYTES, "over 25.0 MB"),
    ],
)
def test_refusals_name_the_field(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        LocalImage.load(make(tmp_path))
    assert caught.value.field == "image"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.write(PNG[:16])
        handle.truncate(size)
    return path


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "locked.png", PNG)
    if os.geteuid() != 0:  # root reads whatever the mode says
        path.chmod(0)
        with pytest.raises(ValidationError, match=r"cannot read .*Permission denied"):
            LocalImage.load(path)
        path.chmod(0o600)

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ValidationError, match=r"cannot read .*Permission denied"):
        LocalImage.load(path)


def test_the_form_is_multipart_with_the_file_in_field_file() -> None:
    image = LocalImage.load(PNG)
    form = build_form(image)
    assert form.content_type.startswith("multipart/form-data; boundary=flux-async-")
    # Parsed back by the standard library's MIME parser, not by our own code.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {form.content_type}\r\n\r\n".encode() + form.body
    )
    [part] = message.iter_parts()  # type: ignore[attr-defined]
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_filename() == "image.png"
    assert part.get_content_type() == "image/png"
    assert part.get_payload(decode=True) == PNG
    with pytest.raises(ValueError, match="boundary"):
        build_form(LocalImage.load(PNG + b"--xyz"), boundary="xyz")


@pytest.mark.parametrize(
    "answer",
    [
        {"url": "https://cdn.example.com/a.png"},
        {"success": True, "file_url": "https://cdn.example.com/a.png", "trace_id": "t"},
        {"image_url": "https://cdn.example.com/a.png"},
        {"data": {"url": "https://cdn.example.com/a.png", "expires_in": 604800}},
        {"url": None, "data": {"url": "https://cdn.example.com/a.png"}},
    ],
)
def test_every_documented_answer_shape_gives_the_url(answer: dict[str, Any]) -> None:
    assert read_upload_answer(answer) == "https://cdn.example.com/a.png"


@pytest.mark.parametrize(
    "answer",
    [[], "https://cdn.example.com/a.png", {}, {"url": "a.png"}, {"data": "https://x/a.png"},
     {"data": {"file": "https://x/a.png"}}, {"success": True}],
)
def test_any_other_answer_is_a_protocol_error(answer: Any) -> None:
    with pytest.raises(ProtocolError):
        read_upload_answer(answer)


def test_an_error_in_a_200_answer_is_typed() -> None:
    answer = {"success": False, "error": {"code": "used_up", "message": "no balance"},
              "trace_id": "tr-1"}
    with pytest.raises(Exception, match="no balance") as caught:
        read_upload_answer(answer)
    assert type(caught.value).__name__ == "InsufficientBalanceError"
    assert caught.value.trace_id == "tr-1"  # type: ignore[attr-defined]


def test_where_uploads_go() -> None:
    assert upload_url_for(None, "https://api.acedata.cloud") == DEFAULT_UPLOAD_URL
    assert upload_url_for(None, "http://127.0.0.1:9/") == "http://127.0.0.1:9/files/upload"
    assert upload_url_for("https://other/api/v1/files/", "x") == "https://other/api/v1/files/"
    assert FluxClient("k").upload_url == DEFAULT_UPLOAD_URL
    assert FluxClient("k", base_url="http://h:1").upload_url == "http://h:1/files/upload"
    with pytest.raises(ConfigurationError, match="upload_url"):
        FluxClient("k", upload_url="/files/upload")
    assert is_remote("https://x/a.png")
    assert not is_remote("./a.png")


# --- against the local server ------------------------------------------------------


@pytest.mark.anyio
async def test_an_upload_is_hosted_and_gets_back_the_same_bytes(
    server: LocalFluxServer, tmp_path: Path
) -> None:
    path = _write(tmp_path / "cat.png", PNG)
    async with client_for(server) as client, aiohttp.ClientSession() as session:
        # Four uploads meet the four answer shapes the server rotates through.
        urls = [await client.upload(source) for source in (path, str(path), PNG, JPEG)]
        for url, data, kind in zip(urls, (PNG, PNG, PNG, JPEG),
                                   ("image/png",) * 3 + ("image/jpeg",), strict=True):
            assert url.startswith(f"{server.url}/files/uploads/")
            async with session.get(url) as response:
                assert response.status == 200
                assert response.content_type == kind
                assert await response.read() == data
    assert server.stats.requests["uploads"] == 4
    assert len(set(urls)) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["path", "bytes", "pathlike_alias"])
async def test_edit_a_local_image_end_to_end(
    server: LocalFluxServer, tmp_path: Path, kind: str
) -> None:
    path = _write(tmp_path / "cat.png", PNG)
    async with client_for(server) as client:
        if kind == "path":
            result = await client.edit("make it blue", image=str(path))
        elif kind == "bytes":
            result = await client.edit("make it blue", image=PNG, model="flux-kontext-pro")
        else:
            result = await client.edit("make it blue", image_url=path)  # the older name
        task = await client.get_task(result.task_id)
        sent_url = task.raw["request"]["image_url"]
        assert sent_url.startswith(f"{server.url}/files/uploads/")
        assert server.uploads.files[sent_url.rsplit("/", 1)[1]][0] == PNG
        [image] = result.images
        assert (await client.fetch_image(image)).startswith(b"\x89PNG")
    assert server.stats.requests["uploads"] == 1
    assert server.stats.requests["images"] == 1


@pytest.mark.anyio
async def test_a_url_is_passed_on_without_an_upload(server: LocalFluxServer) -> None:
    async with client_for(server) as client:
        result = await client.edit("make it blue", image="https://example.com/cat.png")
        task = await client.get_task(result.task_id)
        with pytest.raises(ValidationError, match="image: is already a URL"):
            await client.upload("https://example.com/cat.png")
    assert task.raw["request"]["image_url"] == "https://example.com/cat.png"
    assert "uploads" not in server.stats.requests


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arguments", "field", "message"),
    [
        ({"image": "missing.png"}, "image", "no such file"),
        ({"image": "."}, "image", "is a directory"),
        ({"image": "big.png"}, "image", "over the 25.0 MB"),
        ({"image": "page.png"}, "image", "not a PNG, JPEG, WebP or GIF"),
        ({"image": b"not an image"}, "image", "not a PNG"),
        ({"image_url": "missing.png"}, "image_url", "no such file"),
        ({"image": "cat.png", "image_url": "https://example.com/c.png"}, "image", "not both"),
        ({}, "image", "required"),
        ({"image": "cat.png", "prompt": " "}, "prompt", "non-empty"),
        ({"image": "cat.png", "size": "huge"}, "size", "must look like"),
    ],
)
async def test_refusals_send_nothing(
    server: LocalFluxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    arguments: dict[str, Any], field: str, message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "cat.png", PNG)
    _write(tmp_path / "page.png", b"<html></html>")
    _sparse(tmp_path / "big.png", 26 * 1024 * 1024)
    prompt = arguments.pop("prompt", "make it blue")
    async with client_for(server) as client:
        with pytest.raises(ValidationError, match=message) as caught:
            await client.edit(prompt, **arguments)
        if "image" in arguments and "image_url" not in arguments and field == "image":
            with pytest.raises(ValidationError, match=message):
                await client.upload(arguments["image"])
    assert caught.value.field == field
    assert sent(server) == 0


@pytest.mark.anyio
async def test_an_unreadable_file_sends_nothing(
    server: LocalFluxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "cat.png", PNG)

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    async with client_for(server) as client:
        with pytest.raises(ValidationError, match="Permission denied"):
            await client.edit("make it blue", image=path)
    assert sent(server) == 0


@pytest.mark.anyio
async def test_failed_uploads_are_tried_again(server: LocalFluxServer) -> None:
    # 5xx, gateway pages and resets before and after the upload was stored: none is
    # billed, each is tried again (a reset after storing leaves a spare copy).
    server.uploads.faults = Faults(server_error=0.2, gateway_page=0.2, reset_before=0.1,
                                   reset_after=0.1)
    async with client_for(server, retry_backoff=0.001, max_retries=8) as client:
        urls = [await client.upload(PNG) for _ in range(8)]
        async with aiohttp.ClientSession() as session:
            for url in urls:
                async with session.get(url) as response:
                    assert await response.read() == PNG
    injected = server.stats.faults_injected
    assert {"uploads:server_error", "uploads:gateway_page", "uploads:reset_before",
            "uploads:reset_after"} <= set(injected)
    assert server.stats.requests["uploads"] == 8 + sum(injected.values())


@pytest.mark.anyio
async def test_a_5xx_that_lasts_is_a_server_error_after_max_retries(
    server: LocalFluxServer,
) -> None:
    server.uploads.faults = Faults(server_error=1.0)
    async with client_for(server, retry_backoff=0.001, max_retries=3) as client:
        with pytest.raises(ServerError) as caught:
            await client.upload(PNG)
    assert caught.value.status == 500
    assert caught.value.code == "api_error"
    assert caught.value.trace_id
    assert server.stats.requests["uploads"] == 3


@pytest.mark.anyio
async def test_auth_errors_are_typed_not_retried_and_the_key_is_never_logged(
    server: LocalFluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    server.set_token_state(server.token, "invalid")
    async with client_for(server) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.upload(PNG)
    assert caught.value.status == 401
    assert caught.value.trace_id
    assert server.stats.requests["uploads"] == 1
    assert "uploading image.png" in caplog.text
    assert server.token not in caplog.text + str(caught.value)


@pytest.mark.anyio
async def test_the_local_server_checks_uploads_itself(server: LocalFluxServer) -> None:
    url = f"{server.url}/files/upload"
    auth = {"authorization": f"Bearer {server.token}"}

    def form(data: bytes, field: str = "file") -> aiohttp.FormData:
        body = aiohttp.FormData()
        body.add_field(field, io.BytesIO(data), filename="x.png", content_type="image/png")
        return body

    async with aiohttp.ClientSession() as session:
        cases = [
            (form(b"<html></html>"), auth, 400, "not an image"),
            (form(PNG, field="image"), auth, 400, "'file' is required"),
            (b'{"file": 1}', auth, 400, "multipart"),
            (form(PNG), {}, 400, "no token"),
            (form(PNG + b"\x00" * MAX_UPLOAD_BYTES), auth, 413, "larger than"),
        ]
        for data, headers, status, message in cases:
            async with session.post(url, data=data, headers=headers) as response:
                body = await response.json()
                assert response.status == status, body
                assert message in body["error"]["message"]
                assert body["trace_id"]
        async with session.post(url, data=form(GIF), headers=auth) as response:
            assert response.status == 200
            answer = await response.json()
        async with session.get(read_upload_answer(answer)) as response:
            assert response.content_type == "image/gif"
            assert await response.read() == GIF
        async with session.get(f"{server.url}/files/uploads/nothing.png") as response:
            assert response.status == 404
    assert server.stats.requests["uploads"] == 6
    assert len(server.uploads.files) == 1


@pytest.mark.anyio
async def test_another_host_and_an_answer_in_pieces(tmp_path: Path) -> None:
    """``upload_url`` points anywhere (the vendor SDK's ``/api/v1/files/``); the
    answer is read whole even when it arrives in several pieces."""
    seen: list[tuple[str, str, bytes]] = []

    async def files(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        seen.append((request.headers["Authorization"], upload.content_type, upload.file.read()))
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        body = json.dumps({"data": {"url": "https://cdn.example.com/" + "x" * 3000}}).encode()
        for start in range(0, len(body), 500):
            await response.write(body[start : start + 500])
            await asyncio.sleep(0.01)  # a slow link: the pieces arrive apart
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/v1/files/", files)
    async with serve(app) as base:
        async with FluxClient("sk-secret", base_url="http://127.0.0.1:9",
                              upload_url=f"{base}/api/v1/files/") as client:
            url = await client.upload(_write(tmp_path / "c.webp", WEBP))
    assert url == "https://cdn.example.com/" + "x" * 3000
    assert seen == [("Bearer sk-secret", "image/webp", WEBP)]


@pytest.mark.anyio
async def test_an_answer_without_a_url_is_a_protocol_error_not_retried() -> None:
    calls = 0

    async def files(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        return web.json_response({"success": True, "id": "abc"})

    app = web.Application()
    app.router.add_post("/files/upload", files)
    async with serve(app) as base:
        async with FluxClient("k", base_url=base, retry_backoff=0.001) as client:
            with pytest.raises(ProtocolError, match="no http"):
                await client.upload(PNG)
    assert calls == 1
