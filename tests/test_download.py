"""Downloads over real sockets: the local server's PNGs, and small handlers for the odd cases."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from flux_async import (
    DownloadError,
    FluxClient,
    Image,
    ImageResult,
    ImageTooLargeError,
    NotAnImageError,
    ValidationError,
)
from flux_async._core.addresses import DownloadGuard
from flux_async._core.limits import Backoff
from flux_async._edge.download import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    DownloadTimeoutError,
    Fetcher,
    download_images,
    fetch_bytes,
)
from flux_async.testing import LocalFluxServer

from .conftest import client_for, eventually, serve

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, which must be its first chunk."""
    assert data[:8] == PNG
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@asynccontextmanager
async def odd_server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """Answers the local server cannot give: HTML, huge, slow, failing-then-fine."""
    hits: dict[str, int] = {}
    png = b"".join([PNG, struct.pack(">I4sII5B", 13, b"IHDR", 8, 8, 8, 2, 0, 0, 0), b"\0" * 64])
    forever = anyio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits[name] = hits.get(name, 0) + 1
        if name == "page.png":
            return web.Response(text="<html>Access denied</html>", content_type="text/html")
        if name == "big.png":  # announced too large
            return web.Response(body=b"\0" * 2048, content_type="image/png")
        if name == "missing.png":
            return web.Response(status=404, text="gone")
        if name in ("flaky.png", "reset.png") and hits[name] == 1:
            if name == "reset.png":
                assert request.transport is not None
                request.transport.abort()
            return web.Response(status=503, text="try again")
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        if name in ("endless.png", "stalled.png"):  # chunked: no Content-Length
            await response.write(png + b"\0" * 100_000)  # more than any write buffer
            try:
                while name == "endless.png":
                    await response.write(b"\0" * 4096)
            except ConnectionResetError:  # the client gave up, as it should
                return response
            await forever.wait()  # stalled: the download is cancelled while here
        await response.write(png)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", handler)
    async with serve(app) as base:
        try:
            yield base, hits
        finally:
            forever.set()


async def test_real_pngs_land_on_disk(flux_server: LocalFluxServer, tmp_path: Path) -> None:
    async with client_for(flux_server) as client:
        result = await client.generate("a white siamese cat", count=3)
        paths = await client.download(result, tmp_path / "new" / "dir")
        in_memory = await client.fetch_image(result.images[1])
        by_url = await client.fetch_image(result.urls[2])
    assert [p.name for p in paths] == [f"{result.task_id}-{i}.png" for i in range(3)]
    assert files(tmp_path / "new" / "dir") == sorted(p.name for p in paths)  # no leftovers
    for path in paths:
        assert png_size(path.read_bytes()) == (64, 64)
    assert in_memory == paths[1].read_bytes()
    assert by_url == paths[2].read_bytes()
    assert len({p.read_bytes() for p in paths}) == 3


async def test_names_prefix_overwrite(flux_server: LocalFluxServer, tmp_path: Path) -> None:
    async with client_for(flux_server) as client:
        result = await client.generate("a cat", count=2)
        first = await client.download(result, tmp_path, prefix="../../etc/cats")
        assert [p.name for p in first] == ["etc_cats-0.png", "etc_cats-1.png"]
        with pytest.raises(FileExistsError):
            await client.download(result, tmp_path, prefix="../../etc/cats")
        again = await client.download(result.images[0], tmp_path, overwrite=True,
                                      prefix="etc_cats")
    assert again == [first[0]]
    assert files(tmp_path) == ["etc_cats-0.png", "etc_cats-1.png"]


async def test_names_from_hostile_urls_stay_inside(tmp_path: Path) -> None:
    async with odd_server() as (base, _), FluxClient(
        "k", base_url=base, download_allow=[base]
    ) as client:
        images = [Image(f"{base}/..%2F..%2Fescape.png"), Image(f"{base}/..%5C..%5Cnul.png"),
                  Image(f"{base}/plain.png"), Image(f"{base}/plain.png")]
        paths = await client.download(images, tmp_path / "out")
    assert [p.name for p in paths] == ["escape-0.png", "image_nul-1.png", "plain-2.png",
                                       "plain-3.png"]
    assert all(p.parent == tmp_path / "out" for p in paths)
    assert files(tmp_path) == ["out"]


async def test_a_cancelled_download_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    async with odd_server() as (base, _), FluxClient(
        "k", base_url=base, download_allow=[base]
    ) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.download, Image(f"{base}/stalled.png"), target)
            # The first bytes are in the temporary file: the download is mid-stream.
            await eventually(lambda: any(p.stat().st_size > 0 for p in target.glob(".*.part")))
            group.cancel_scope.cancel()
    assert files(target) == []


@pytest.mark.parametrize(
    ("name", "error", "max_bytes"),
    [
        ("page.png", NotAnImageError, 10_000),
        ("big.png", ImageTooLargeError, 1024),  # by Content-Length
        ("endless.png", ImageTooLargeError, 100_000),  # while streaming
        ("missing.png", DownloadError, 10_000),
    ],
)
async def test_refused_answers_are_typed_and_leave_nothing(
    tmp_path: Path, name: str, error: type[DownloadError], max_bytes: int
) -> None:
    async with odd_server() as (base, hits), FluxClient(
        "k", base_url=base, download_allow=[base]
    ) as client:
        with pytest.raises(error) as info:
            await client.download(Image(f"{base}/{name}"), tmp_path, max_bytes=max_bytes)
        with pytest.raises(error):
            await client.fetch_image(f"{base}/{name}", max_bytes=max_bytes)
    assert type(info.value) is error
    assert info.value.url == f"{base}/{name}"
    assert files(tmp_path) == []
    assert hits[name] == 2  # one GET each: a 4xx or a refused body is not retried
    if error is NotAnImageError:
        assert info.value.content_type == "text/html"  # type: ignore[attr-defined]
    if name == "missing.png":
        assert info.value.status == 404


@pytest.mark.parametrize("name", ["flaky.png", "reset.png"])
async def test_5xx_and_resets_are_retried(tmp_path: Path, name: str) -> None:
    async with odd_server() as (base, hits):
        async with FluxClient("k", base_url=base, retry_backoff=0.01,
                              download_allow=[base]) as client:
            paths = await client.download(Image(f"{base}/{name}"), tmp_path)
    assert hits[name] == 2
    assert png_size(paths[0].read_bytes()) == (8, 8)
    assert files(tmp_path) == ["flaky-0.png" if name == "flaky.png" else "reset-0.png"]


async def test_retries_give_up_with_a_download_error(tmp_path: Path) -> None:
    async with serve(web.Application()) as base:
        pass  # nothing listens there any more
    async with FluxClient("k", base_url=base, retry_backoff=0.01, max_retries=2,
                          download_allow=[base]) as client:
        with pytest.raises(DownloadError) as info:
            await client.download(Image(f"{base}/x.png"), tmp_path)
    assert info.value.status is None
    assert info.value.__cause__ is not None
    assert files(tmp_path) == []


async def test_bad_input_is_refused_before_any_request(tmp_path: Path) -> None:
    client = FluxClient("k", base_url="http://127.0.0.1:9")
    async with client:
        with pytest.raises(ValidationError):
            await client.download(Image("file:///etc/passwd"), tmp_path)
        with pytest.raises(ValidationError):
            await client.download(Image("http://127.0.0.1:9/x.png"), tmp_path, concurrency=0)
        with pytest.raises(ValidationError, match=r"target\[0\]"):
            await client.download(["http://127.0.0.1:9/x.png"], tmp_path)  # type: ignore[list-item]
        empty = ImageResult("t", None, ())
        assert await client.download(empty, tmp_path) == []


# --- deadlines ------------------------------------------------------------------------


@asynccontextmanager
async def trickling() -> AsyncIterator[tuple[str, list[int]]]:
    """A server whose image body comes a byte every 20 ms, forever: never a stall."""
    sent: list[int] = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(PNG)
        try:
            while True:
                await anyio.sleep(0.02)
                await response.write(b"\0")
                sent[0] += 1
        except ConnectionResetError:  # the client gave up, as it should
            return response

    app = web.Application()
    app.router.add_get("/{name}", handler)
    async with serve(app) as base:
        yield base, sent


@asynccontextmanager
async def fetcher(read_timeout: float = 5.0) -> AsyncIterator[Fetcher]:
    # What FluxClient builds: a read timeout that a trickle never trips.
    timeout = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=read_timeout)
    async with aiohttp.ClientSession() as session:
        # The guard is the connector's (FluxClient's own session): this one has none.
        yield Fetcher(session, timeout, 3, Backoff(base=0.01, cap=0.01), DownloadGuard(False))


async def test_a_trickling_body_hits_the_per_image_deadline(tmp_path: Path) -> None:
    assert DEFAULT_DOWNLOAD_TIMEOUT == 120.0
    async with trickling() as (base, sent), fetcher() as fetch:
        started = anyio.current_time()
        with pytest.raises(DownloadTimeoutError) as info:
            await download_images(fetch, Image(f"{base}/slow.png"), tmp_path, prefix=None,
                                  concurrency=1, max_bytes=10_000, overwrite=False, timeout=0.5)
        elapsed = anyio.current_time() - started
        with pytest.raises(TimeoutError, match=r"timed out after 0\.3 s"):
            await fetch_bytes(fetch, f"{base}/slow.png", 10_000, timeout=0.3)
    assert 0.5 <= elapsed < 3.0
    assert sent[0] > 5  # bytes kept coming: the read timeout alone would never fire
    assert isinstance(info.value, DownloadError)
    assert info.value.url == f"{base}/slow.png"
    assert files(tmp_path) == []


async def test_the_clients_download_takes_the_deadline(tmp_path: Path) -> None:
    # FluxClient.download / fetch_image pass timeout= down to the per-image deadline.
    async with trickling() as (base, _sent):
        async with FluxClient("k", base_url="http://127.0.0.1:9",
                              download_allow=[base]) as client:
            with pytest.raises(DownloadTimeoutError):
                await client.download(Image(f"{base}/slow.png"), tmp_path, timeout=0.3)
            with pytest.raises(DownloadTimeoutError):
                await client.fetch_image(f"{base}/slow.png", timeout=0.3)
    assert files(tmp_path) == []


async def test_a_deadline_is_validated(tmp_path: Path) -> None:
    async with fetcher() as fetch:
        for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
            with pytest.raises(ValidationError, match="timeout"):
                await fetch_bytes(fetch, "http://127.0.0.1:9/x.png", 10, timeout=bad)  # type: ignore[arg-type]


# --- a full disk ----------------------------------------------------------------------


class FullDisk:
    """A file that refuses bytes as a full disk does: write, flush and close raise."""

    def __init__(self, real: object, *, at: str) -> None:
        self.real = real
        self.at = at

    def _full(self) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data: bytes) -> int:
        if self.at == "write":
            raise self._full()
        return self.real.write(data)  # type: ignore[attr-defined, no-any-return]

    def flush(self) -> None:
        raise self._full()

    def fileno(self) -> int:
        return self.real.fileno()  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self.real.close()  # type: ignore[attr-defined]
        raise self._full()  # the flush inside close fails again


@pytest.mark.parametrize("at", ["write", "commit"])
async def test_a_full_disk_leaves_no_part_file(
    flux_server: LocalFluxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        "flux_async._edge.sinks.os.fdopen",
        lambda fd, mode: FullDisk(real_fdopen(fd, mode), at=at),
    )
    async with client_for(flux_server, retry_backoff=0.01) as client:
        result = await client.generate("a cat", count=2)
        flux_server.reset_stats()
        with pytest.raises(DownloadError, match="could not save") as info:
            await client.download(result, tmp_path)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert files(tmp_path) == []  # no .flux-*.part, no final name
    assert flux_server.stats.requests["files"] <= 2  # a full disk is not retried


# --- bad input ------------------------------------------------------------------------


async def test_bad_targets_and_directories_are_refused_before_any_request(
    tmp_path: Path,
) -> None:
    regular = tmp_path / "a-file"
    regular.write_text("x")
    async with odd_server() as (base, hits), FluxClient(
        "k", base_url=base, download_allow=[base]
    ) as client:
        image = Image(f"{base}/plain.png")
        cases: list[tuple[object, object, str]] = [
            (None, tmp_path, "target"),
            (42, tmp_path, "target"),
            ("http://x/y.png", tmp_path, "target"),
            ([image, None], tmp_path, "target[1]"),
            ((image, image.url), tmp_path, "target[1]"),
            (image, regular / "sub", "directory"),
            (image, regular, "directory"),
            (image, None, "directory"),
        ]
        for target, directory, field in cases:
            with pytest.raises(ValidationError) as info:
                await client.download(target, directory)  # type: ignore[arg-type]
            assert info.value.field == field, (target, directory)
        with pytest.raises(ValidationError, match="prefix"):
            await client.download(image, tmp_path, prefix=7)  # type: ignore[arg-type]
    assert hits == {}
    assert regular.read_text() == "x"
    assert files(tmp_path) == ["a-file"]
