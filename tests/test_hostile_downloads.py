"""Downloads from hostile hosts: the download guard, redirects checked hop by hop, bodies
judged by their bytes. The rules as plain calls, then everything over real sockets."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from flux_async import (
    BlockedAddressError,
    ClientSettings,
    ConfigurationError,
    DownloadError,
    DownloadRedirectError,
    FluxClient,
    Image,
    NetworkError,
    NotAnImageError,
)
from flux_async._core.addresses import DownloadGuard, address_refusal, allowed
from flux_async._core.errors import RedirectError
from flux_async._core.limits import Backoff
from flux_async._edge.download import MAX_REDIRECTS, Fetcher, download_images, fetch_bytes
from flux_async._edge.guard import GuardedConnector, GuardedSession
from flux_async.testing._png import render_png

from .conftest import serve

pytestmark = pytest.mark.anyio

PNG = render_png("hostile-test.png")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
HTML = b"<!doctype html><html><body>Sign in to continue</body></html>"


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- the rules, as plain calls ----------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("10.1.2.3", "private"),
        ("172.31.255.1", "private"),
        ("192.168.0.10", "private"),
        ("100.64.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.7", "reserved"),  # documentation
        ("198.18.0.1", "reserved"),  # benchmarking
        ("2001:db8::1", "reserved"),
        # An IPv6 address that stands for an IPv4 one is judged by the IPv4 one.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        # The public internet passes.
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_what_is_refused_and_why(address: str, reason: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == reason


def test_what_an_allow_entry_can_be() -> None:
    assert str(allowed("127.0.0.1:8080")) == "127.0.0.1:8080"
    assert str(allowed("[::1]:8080")) == "[::1]:8080"
    assert str(allowed("http://127.0.0.1:8000")) == "127.0.0.1:8000"
    assert str(allowed("https://[::1]/images")) == "[::1]:443"
    assert str(allowed("10.0.0.0/8")) == "10.0.0.0/8"
    assert str(allowed("::1")) == "::1/128"
    for bad, why in [
        ("localhost:8080", "host name is not accepted"),
        ("http://localhost:8000", "host name is not accepted"),
        ("images.internal", "host name is not accepted"),
        ("10.1.2.3/8", "has host bits set"),
        ("127.0.0.1:0", "port must be a number"),
        ("127.0.0.1:http", "port must be a number"),
        ("ftp://127.0.0.1", "not an address"),
        ("", "not an address"),
    ]:
        problem = allowed(bad)
        assert isinstance(problem, str), bad
        assert why in problem, (bad, problem)
    assert allowed(8080) == "must be a string, got int"


def test_the_guard_lets_through_only_what_an_entry_names() -> None:
    guard = DownloadGuard.from_settings(
        True, ["127.0.0.1:8080", "10.0.0.0/8", "169.254.0.0/16", "100.100.100.200"])
    assert guard.refusal("127.0.0.1", 8080) is None
    assert guard.refusal("127.0.0.1", 8081) == "loopback"  # another port: another service
    assert guard.refusal("::ffff:127.0.0.1", 8080) is None  # the same address, mapped
    assert guard.refusal("10.9.8.7", 5432) is None
    assert guard.refusal("192.168.1.1", 80) == "private"
    assert guard.refusal("169.254.10.10", 80) is None
    # A network that contains a metadata address does not open it: only its own entry.
    assert guard.refusal("169.254.169.254", 80) == "cloud metadata"
    assert guard.refusal("100.100.100.200", 80) is None
    assert guard.refusal("not an address", 80) == "not an address"
    assert guard.refusal("8.8.8.8", 443) is None
    assert DownloadGuard(enabled=False).refusal("169.254.169.254", 80) is None


def test_the_settings_check_the_entries() -> None:
    assert ClientSettings().download_guard is True
    assert ClientSettings().download_allow == ()
    one = ClientSettings(download_allow="127.0.0.1:8080")  # one entry alone
    assert one.download_allow == ("127.0.0.1:8080",)
    assert one.guard.refusal("127.0.0.1", 8080) is None
    assert ClientSettings(download_allow=iter(["::1"])).download_allow == ("::1",)
    for bad in (["localhost"], [8080], 8080, ["10.0.0.0/33"]):
        with pytest.raises(ConfigurationError) as info:
            ClientSettings(download_allow=bad)
        assert info.value.field == "download_allow"
    with pytest.raises(ConfigurationError, match="download_guard"):
        ClientSettings(download_guard="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="download_allow"):
        FluxClient("k", download_allow=["localhost:80"])


# --- hostile hosts over real sockets -------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def host(
    routes: Callable[[str], dict[str, Handler]],
) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A server on 127.0.0.1 whose answers ``routes(base)`` gives; counts hits by path."""
    hits: dict[str, int] = {}
    table: dict[str, Handler] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        hits[request.path] = hits.get(request.path, 0) + 1
        answer = table.get(request.path)
        return await answer(request) if answer is not None else web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with serve(app) as base:
        table.update(routes(base))
        yield base, hits


def answer(status: int = 200, **fields: object) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, **fields)  # type: ignore[arg-type]

    return handler


def image(body: bytes, label: str = "image/png") -> Handler:
    return answer(body=body, content_type=label)


def redirect(to: str, status: int = 302) -> Handler:
    return answer(status, headers={"Location": to})


async def test_a_redirect_to_another_loopback_port_is_refused_and_never_sent(
    tmp_path: Path,
) -> None:
    # The inside service: a loopback port the downloading server can reach.
    async with host(lambda base: {"/admin/secret.png": image(PNG)}) as (inside, inside_hits):
        # The image host the client was told to trust (allowed explicitly), which
        # redirects into the machine's own network.
        async with host(lambda base: {
            "/cat.png": redirect(f"{inside}/admin/secret.png"),
        }) as (trusted, hits):
            async with FluxClient("k", base_url=trusted, download_allow=[trusted]) as client:
                with pytest.raises(BlockedAddressError) as saved:
                    await client.download(Image(f"{trusted}/cat.png"), tmp_path)
                with pytest.raises(BlockedAddressError) as fetched:
                    await client.fetch_image(f"{trusted}/cat.png")
    error = saved.value
    assert isinstance(error, DownloadError)
    assert error.reason == "loopback"
    assert error.url == f"{trusted}/cat.png"
    assert error.target == f"{inside}/admin/secret.png"
    assert (error.address, error.port) == ("127.0.0.1", int(inside.rsplit(":", 1)[1]))
    assert f"redirected to {inside}/admin/secret.png" in str(error)
    assert fetched.value.reason == "loopback"
    assert inside_hits == {}  # the second server never saw a request
    assert hits == {"/cat.png": 2}  # one GET each, not retried
    assert files(tmp_path) == []


async def test_the_guard_is_on_by_default(tmp_path: Path) -> None:
    async with host(lambda base: {"/x.png": image(PNG)}) as (base, hits):
        async with FluxClient("k", base_url=base) as client:  # no download_allow
            with pytest.raises(BlockedAddressError, match="is a loopback address"):
                await client.fetch_image(f"{base}/x.png")
            # A name is judged by the addresses DNS gives for it, not by its spelling.
            named = base.replace("127.0.0.1", "localhost")
            with pytest.raises(BlockedAddressError) as info:
                await client.download(Image(f"{named}/x.png"), tmp_path)
    assert info.value.host == "localhost"
    assert info.value.reason == "loopback"
    assert f"localhost resolves to {info.value.address}" in str(info.value)
    assert hits == {}
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "spelling",
    ["localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "[0:0:0:0:0:ffff:7f00:1]", "[::1]",
     # Numeric forms that some resolvers read as 127.0.0.1 and some refuse: either way,
     # nothing reaches the loopback.
     "2130706433", "0x7f000001", "127.1", "0", "017700000001"],
)
async def test_every_spelling_of_the_loopback_is_refused(spelling: str) -> None:
    async with host(lambda base: {"/x.png": image(PNG)}) as (base, hits):
        port = base.rsplit(":", 1)[1]
        async with FluxClient("k", base_url=base) as client:
            with pytest.raises(DownloadError):
                await client.fetch_image(f"http://{spelling}:{port}/x.png")
    assert hits == {}


async def test_allowed_redirects_are_followed_and_each_hop_is_checked(tmp_path: Path) -> None:
    async with host(lambda base: {
        "/a.png": redirect("/b.png", 301),  # relative, as most servers send them
        "/b.png": redirect(f"{base}/c.png", 307),
        "/c.png": image(PNG),
        "/loop.png": redirect("/loop.png"),
        "/nowhere.png": answer(302),
    }) as (base, hits):
        async with FluxClient("k", base_url=base, download_allow=[base]) as client:
            paths = await client.download(Image(f"{base}/a.png"), tmp_path)
            with pytest.raises(DownloadRedirectError, match=f"more than {MAX_REDIRECTS}"):
                await client.fetch_image(f"{base}/loop.png")
            with pytest.raises(DownloadRedirectError, match="without a Location"):
                await client.fetch_image(f"{base}/nowhere.png")
    assert [p.name for p in paths] == ["a-0.png"]
    assert paths[0].read_bytes() == PNG
    assert hits["/loop.png"] == MAX_REDIRECTS + 1  # followed, then given up: not retried
    assert hits["/nowhere.png"] == 1


@pytest.mark.parametrize("to", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "data:,x"])
async def test_a_redirect_out_of_http_fails_at_once(tmp_path: Path, to: str) -> None:
    async with host(lambda base: {"/x.png": redirect(to)}) as (base, hits):
        # The client's defaults: 5 tries, a backoff from 1 s. None of it is spent here.
        async with FluxClient("k", base_url=base, download_allow=[base]) as client:
            started = time.monotonic()
            with pytest.raises(DownloadRedirectError) as info:
                await client.download(Image(f"{base}/x.png"), tmp_path)
            elapsed = time.monotonic() - started
    assert elapsed < 0.5
    error = info.value
    # download() callers catching DownloadError catch it; so do those catching the
    # transport's redirect error.
    assert isinstance(error, DownloadError)
    assert isinstance(error, RedirectError)
    assert isinstance(error, NetworkError)
    assert "not a usable http(s) URL; not followed" in str(error)
    assert error.status == 302
    assert hits == {"/x.png": 1}
    assert files(tmp_path) == []


async def test_without_the_guard_redirects_are_still_checked(tmp_path: Path) -> None:
    async with host(lambda base: {"/x.png": redirect("file:///etc/passwd"),
                                  "/y.png": image(PNG)}) as (base, _):
        async with aiohttp.ClientSession() as lent:
            async with FluxClient("k", base_url=base, download_guard=False,
                                  session=lent) as client:
                assert await client.fetch_image(f"{base}/y.png") == PNG
                with pytest.raises(DownloadRedirectError):
                    await client.fetch_image(f"{base}/x.png")
            assert not lent.closed  # the caller's session, used and left open


# --- the body, not the label ------------------------------------------------------------------


def trickle(body: bytes, label: str = "image/png") -> Handler:
    """The body a byte at a time: the first bytes never arrive together."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": label})
        await response.prepare(request)
        for i in range(len(body)):
            await response.write(body[i:i + 1])
            if i < 16:
                await anyio.sleep(0.002)
        await response.write_eof()
        return response

    return handler


async def test_html_labelled_png_is_not_an_image_and_leaves_nothing(tmp_path: Path) -> None:
    async with host(lambda base: {
        "/page.png": image(HTML),
        "/empty.png": image(b""),
        "/slow-page.png": trickle(HTML),
    }) as (base, hits):
        async with FluxClient("k", base_url=base, download_allow=[base]) as client:
            for name in ("page.png", "empty.png", "slow-page.png"):
                with pytest.raises(NotAnImageError) as saved:
                    await client.download(Image(f"{base}/{name}"), tmp_path / "out")
                with pytest.raises(NotAnImageError):
                    await client.fetch_image(f"{base}/{name}")
                assert saved.value.by_content
                assert saved.value.content_type == "image/png"
                assert "its body is not a PNG, JPEG, WebP or GIF image" in str(saved.value)
    assert files(tmp_path / "out") == []  # no final name, no .flux-*.part
    assert hits == {"/page.png": 2, "/empty.png": 2, "/slow-page.png": 2}  # not retried


async def test_real_images_pass_however_they_arrive_and_are_named_by_their_bytes(
    tmp_path: Path,
) -> None:
    async with host(lambda base: {
        "/slow.png": trickle(PNG),
        "/photo.png": image(JPEG),  # a JPEG that a CDN labels image/png
    }) as (base, _):
        async with FluxClient("k", base_url=base, download_allow=[base]) as client:
            paths = await client.download(
                [Image(f"{base}/slow.png"), Image(f"{base}/photo.png")], tmp_path)
    assert [p.name for p in paths] == ["slow-0.png", "photo-1.jpg"]
    assert [p.read_bytes() for p in paths] == [PNG, JPEG]


# --- where the guard sits: DNS answers and the connected peer --------------------------------


class Names(AbstractResolver):
    """A DNS of our own: each name answers the addresses given, like a hostile zone."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {"hostname": host, "host": address, "port": port, "family": socket.AF_INET,
             "proto": 0, "flags": 0}
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


def _fetcher(session: aiohttp.ClientSession, guard: DownloadGuard) -> Fetcher:
    timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=5)
    return Fetcher(session, timeout, 3, Backoff(base=0.01, cap=0.01), guard)


async def test_the_addresses_dns_answers_are_checked_and_are_the_ones_connected(
    tmp_path: Path,
) -> None:
    async with host(lambda base: {"/x.png": image(PNG)}) as (base, hits):
        port = int(base.rsplit(":", 1)[1])
        names = Names({"images.example": ["127.0.0.1"],
                       "split.example": ["127.0.0.1", "127.0.0.2"]})
        # The zone answers a loopback address for a public-looking name: refused.
        guard = DownloadGuard.from_settings(True, [])
        guarded = GuardedSession(guard, names)
        try:
            with pytest.raises(BlockedAddressError) as info:
                await fetch_bytes(_fetcher(guarded.session, guard),
                                  f"http://images.example:{port}/x.png", 10_000)
        finally:
            await guarded.close()
        assert (info.value.host, info.value.address) == ("images.example", "127.0.0.1")
        assert hits == {}
        # Allowed, the name reaches exactly the address that was checked.
        guard = DownloadGuard.from_settings(True, [f"127.0.0.1:{port}"])
        guarded = GuardedSession(guard, names)
        try:
            fetcher = _fetcher(guarded.session, guard)
            assert await fetch_bytes(fetcher, f"http://images.example:{port}/x.png",
                                     10_000) == PNG
            # One answer refused refuses the name: no falling back to another address.
            with pytest.raises(BlockedAddressError) as split:
                await download_images(fetcher, Image(f"http://split.example:{port}/x.png"),
                                      tmp_path, prefix=None, concurrency=1, max_bytes=10_000,
                                      overwrite=False)
        finally:
            await guarded.close()
        assert split.value.address == "127.0.0.2"
        assert hits == {"/x.png": 1}
    assert files(tmp_path) == []


async def test_the_connected_peer_is_checked_before_the_request_is_written() -> None:
    # A connector whose resolver the guard does not wrap (as if an address reached it
    # some other way): the socket's own peer is still checked, and nothing is sent.
    async with host(lambda base: {"/x.png": image(PNG)}) as (base, hits):
        port = int(base.rsplit(":", 1)[1])
        guard = DownloadGuard.from_settings(True, [])
        names = Names({"images.example": ["127.0.0.1"]})
        async with aiohttp.ClientSession(connector=GuardedConnector(guard, names)) as session:
            with pytest.raises(BlockedAddressError) as info:
                await fetch_bytes(_fetcher(session, guard),
                                  f"http://images.example:{port}/x.png", 10_000)
            assert session.connector is not None
    assert names.asked == ["images.example"]  # resolved and connected: then refused
    assert (info.value.address, info.value.port) == ("127.0.0.1", port)
    assert hits == {}
