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
from flux_async._edge.uploads import (
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
from .test_cli import FAST, Server, cli, is_png, manifest, no_traceback
from .test_cli import server as server  # the fixture: `flux-async serve` in a process

PNG = render_png("upload-test.png")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 32
WEBP = b"RIFF" + (36).to_bytes(4, "little") + b"WEBPVP8 " + b"\x00" * 32


@pytest.fixture
async def local() -> Any:
    async with LocalFluxServer(ServerSettings(generation_time=0.05, seed=7)) as running:
        yield running


def sent(local: LocalFluxServer) -> int:
    return sum(local.stats.requests.values())


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
    local: LocalFluxServer, tmp_path: Path
) -> None:
    path = _write(tmp_path / "cat.png", PNG)
    async with client_for(local) as client, aiohttp.ClientSession() as session:
        # Four uploads meet the four answer shapes the server rotates through.
        urls = [await client.upload(source) for source in (path, str(path), PNG, JPEG)]
        for url, data, kind in zip(urls, (PNG, PNG, PNG, JPEG),
                                   ("image/png",) * 3 + ("image/jpeg",), strict=True):
            assert url.startswith(f"{local.url}/files/uploads/")
            async with session.get(url) as response:
                assert response.status == 200
                assert response.content_type == kind
                assert await response.read() == data
    assert local.stats.requests["uploads"] == 4
    assert len(set(urls)) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["path", "bytes", "pathlike_alias"])
async def test_edit_a_local_image_end_to_end(
    local: LocalFluxServer, tmp_path: Path, kind: str
) -> None:
    path = _write(tmp_path / "cat.png", PNG)
    async with client_for(local) as client:
        if kind == "path":
            result = await client.edit("make it blue", image=str(path))
        elif kind == "bytes":
            result = await client.edit("make it blue", image=PNG, model="flux-kontext-pro")
        else:
            result = await client.edit("make it blue", image_url=path)  # the older name
        task = await client.get_task(result.task_id)
        sent_url = task.raw["request"]["image_url"]
        assert sent_url.startswith(f"{local.url}/files/uploads/")
        assert local.uploads.files[sent_url.rsplit("/", 1)[1]][0] == PNG
        [image] = result.images
        assert (await client.fetch_image(image)).startswith(b"\x89PNG")
    assert local.stats.requests["uploads"] == 1
    assert local.stats.requests["images"] == 1


@pytest.mark.anyio
async def test_a_url_is_passed_on_without_an_upload(local: LocalFluxServer) -> None:
    async with client_for(local) as client:
        result = await client.edit("make it blue", image="https://example.com/cat.png")
        task = await client.get_task(result.task_id)
        with pytest.raises(ValidationError, match="image: is already a URL"):
            await client.upload("https://example.com/cat.png")
    assert task.raw["request"]["image_url"] == "https://example.com/cat.png"
    assert "uploads" not in local.stats.requests


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
    local: LocalFluxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    arguments: dict[str, Any], field: str, message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "cat.png", PNG)
    _write(tmp_path / "page.png", b"<html></html>")
    _sparse(tmp_path / "big.png", 26 * 1024 * 1024)
    prompt = arguments.pop("prompt", "make it blue")
    async with client_for(local) as client:
        with pytest.raises(ValidationError, match=message) as caught:
            await client.edit(prompt, **arguments)
        if "image" in arguments and "image_url" not in arguments and field == "image":
            with pytest.raises(ValidationError, match=message):
                await client.upload(arguments["image"])
    assert caught.value.field == field
    assert sent(local) == 0


@pytest.mark.anyio
async def test_an_unreadable_file_sends_nothing(
    local: LocalFluxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "cat.png", PNG)

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    async with client_for(local) as client:
        with pytest.raises(ValidationError, match="Permission denied"):
            await client.edit("make it blue", image=path)
    assert sent(local) == 0


@pytest.mark.anyio
async def test_failed_uploads_are_tried_again(local: LocalFluxServer) -> None:
    # 5xx, gateway pages and resets before and after the upload was stored: none is
    # billed, each is tried again (a reset after storing leaves a spare copy).
    local.uploads.faults = Faults(server_error=0.2, gateway_page=0.2, reset_before=0.1,
                                   reset_after=0.1)
    async with client_for(local, retry_backoff=0.001, max_retries=8) as client:
        urls = [await client.upload(PNG) for _ in range(8)]
        async with aiohttp.ClientSession() as session:
            for url in urls:
                async with session.get(url) as response:
                    assert await response.read() == PNG
    injected = local.stats.faults_injected
    assert {"uploads:server_error", "uploads:gateway_page", "uploads:reset_before",
            "uploads:reset_after"} <= set(injected)
    assert local.stats.requests["uploads"] == 8 + sum(injected.values())


@pytest.mark.anyio
async def test_a_5xx_that_lasts_is_a_server_error_after_max_retries(
    local: LocalFluxServer,
) -> None:
    local.uploads.faults = Faults(server_error=1.0)
    async with client_for(local, retry_backoff=0.001, max_retries=3) as client:
        with pytest.raises(ServerError) as caught:
            await client.upload(PNG)
    assert caught.value.status == 500
    assert caught.value.code == "api_error"
    assert caught.value.trace_id
    assert local.stats.requests["uploads"] == 3


@pytest.mark.anyio
async def test_auth_errors_are_typed_not_retried_and_the_key_is_never_logged(
    local: LocalFluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    local.set_token_state(local.token, "invalid")
    async with client_for(local) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.upload(PNG)
    assert caught.value.status == 401
    assert caught.value.trace_id
    assert local.stats.requests["uploads"] == 1
    assert "uploading image.png" in caplog.text
    assert local.token not in caplog.text + str(caught.value)


@pytest.mark.anyio
async def test_the_local_server_checks_uploads_itself(local: LocalFluxServer) -> None:
    url = f"{local.url}/files/upload"
    auth = {"authorization": f"Bearer {local.token}"}

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
        async with session.get(f"{local.url}/files/uploads/nothing.png") as response:
            assert response.status == 404
    assert local.stats.requests["uploads"] == 6
    assert len(local.uploads.files) == 1


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


# --- the command line ----------------------------------------------------------------


def test_cli_edit_a_local_file(server: Server, tmp_path: Path) -> None:
    _write(tmp_path / "cat.png", PNG)
    result = cli("edit", "make it blue", "--image", "cat.png", "--out", "out", "--json",
                 "--poll-interval", "0.05", env=server.env(), cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    [path] = json.loads(result.stdout)["files"]
    assert is_png(tmp_path / path)
    requests = server.stats()["requests"]
    assert requests["uploads"] == 1
    assert requests["images"] == 1


@pytest.mark.parametrize(
    ("image", "message"),
    [("missing.png", "image: no such file"), (".", "is a directory"),
     ("page.png", "not a PNG, JPEG, WebP or GIF image"), ("ftp://x/cat.png", "not supported")],
)
def test_cli_edit_refuses_a_bad_file_before_sending(
    server: Server, tmp_path: Path, image: str, message: str
) -> None:
    _write(tmp_path / "page.png", b"<html></html>")
    result = cli("edit", "make it blue", "--image", image, env=server.env(), cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert server.stats()["requests"] == {}


def test_cli_edit_a_url_is_not_uploaded(tmp_path: Path) -> None:
    result = cli("edit", "make it blue", "--image", "https://example.com/cat.png",
                 "--out", str(tmp_path), "--local", *FAST[:4])
    assert result.returncode == 0, result.stderr
    [path] = result.stdout.split()
    assert is_png(Path(path))


def test_batch_lines_with_local_images(server: Server, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "pics").mkdir(parents=True)
    _write(jobs / "pics" / "cat.png", PNG)
    _write(jobs / "dog.jpg", JPEG)
    _write(jobs / "page.png", b"<html></html>")
    source = jobs / "edits.jsonl"
    source.write_text(
        '{"prompt": "make it blue", "image": "pics/cat.png"}\n'
        '{"prompt": "make it red", "image": "dog.jpg", "model": "flux-kontext-pro"}\n'
        '{"prompt": "by url", "image": "https://example.com/cat.png"}\n'
        '{"prompt": "missing", "image": "nope.png"}\n'
        '{"prompt": "not an image", "image": "page.png"}\n'
        '{"prompt": "both", "image": "dog.jpg", "image_url": "https://example.com/c.png"}\n'
        '{"prompt": "a cat", "image": "dog.jpg", "action": "generate"}\n'
    )
    out = tmp_path / "out"
    # Run from elsewhere: image paths are relative to the batch file, not the cwd.
    result = cli("batch", str(source), "--out", str(out), *FAST[2:], env=server.env(),
                 cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    records = manifest(out)
    assert {n: r["status"] for n, r in records.items()} == {
        1: "done", 2: "done", 3: "done", 4: "invalid", 5: "invalid", 6: "invalid",
        7: "invalid",
    }
    assert "no such file" in records[4]["error"]
    assert "not a PNG" in records[5]["error"]
    assert "not both" in records[6]["error"]
    assert "only for edits" in records[7]["error"]
    for line in (1, 2):
        assert records[line]["request"]["image_url"].startswith(f"{server.url}/files/uploads/")
    assert records[3]["request"]["image_url"] == "https://example.com/cat.png"
    stats = server.stats()
    assert stats["requests"]["uploads"] == 2
    assert stats["requests"]["images"] == 3

    # Again: the done lines are known by their files' content, not by the upload's
    # URL, so nothing is uploaded or paid for twice.
    again = cli("batch", str(source), "--out", str(out), *FAST[2:], env=server.env())
    assert again.returncode == 1, again.stderr
    assert server.stats()["requests"]["uploads"] == 2
    assert server.stats()["requests"]["images"] == 3
    # An edited file is a changed line: refused (the manifest holds a task id for the
    # old file), unless asked for with --allow-changed.
    _write(jobs / "dog.jpg", JPEG + b"\x00")
    refused = cli("batch", str(source), "--out", str(out), *FAST[2:], env=server.env())
    assert refused.returncode == 2, refused.stderr
    assert "(line 2) differ" in refused.stderr
    assert server.stats()["requests"]["uploads"] == 2
    third = cli("batch", str(source), "--out", str(out), "--allow-changed", *FAST[2:],
                env=server.env())
    assert third.returncode == 1, third.stderr
    assert "line changed" in third.stderr
    assert server.stats()["requests"]["uploads"] == 3
    assert server.stats()["requests"]["images"] == 4
