"""A real redis-server per test: on a free port, in a temporary directory, no persistence.

Only a real server proves the Lua scripts (fakeredis would prove fakeredis).
Debian's ``redis-server`` package provides it; without it these tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("redis", reason='needs redis-py: pip install "flux-async[redis]"')

from flux_async.redis import RedisCoordinator

from ._workers import TOKEN

REDIS_SERVER = shutil.which("redis-server")


async def until(condition: Callable[[], Awaitable[object]], *, within: float = 3.0) -> None:
    """Wait until the async ``condition()`` is truthy (Redis's state, asked every 10 ms).

    For state only Redis can tell (a release that landed, a record restored); the
    wait ends as soon as it holds. Fails after ``within`` seconds.
    """
    with anyio.fail_after(within):
        while not await condition():  # noqa: ASYNC110 - nothing to wait on but the state
            await anyio.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``stop``/``start`` restart it empty on the same port,
    ``freeze``/``thaw`` make it hang (SIGSTOP) as an overloaded server would."""

    def __init__(self, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = _free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        assert self.process is None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot exit otherwise
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart_empty(self) -> None:
        """Stop and start again: with persistence off, every key is gone."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def coordinator(redis_url: str) -> AsyncIterator[RedisCoordinator]:
    """A started coordinator with a short lease (1 s) and timeout (0.5 s)."""
    coord = RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0, timeout=0.5)
    await coord.start()
    try:
        yield coord
    finally:
        await coord.close()
