"""The local Flux server in a process of its own, driven over its ``/_local/`` routes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "ServerProcess"]

#: The repository root: child processes run there so ``benchmarks`` is importable.
ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """``python -m flux_async.testing --port 0 ...``, started and stopped by its pid."""

    def __init__(self, args: list[str]) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flux_async.testing", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"the local server did not start: {line!r} {self.stderr()}")
        # flux_async.testing listening on http://127.0.0.1:PORT token=TOKEN
        _, _, rest = line.partition("listening on ")
        url, _, token = rest.strip().partition(" token=")
        self.url = url
        self.token = token

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.load(response)

    def stats(self, finish_times: bool = False) -> dict[str, Any]:
        return self.get("/_local/stats" + ("?finish_times=1" if finish_times else ""))  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
