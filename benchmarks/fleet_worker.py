"""One worker of a fleet sharing a token: a real OS process with its own FluxClient.

The fleet benchmark (``benchmarks/fleet.py``) and the fleet tests
(``tests/redis/test_fleet_client.py``) start several of these, as a deployment
would start gunicorn or uvicorn workers::

    python -m benchmarks.fleet_worker '{"server": URL, "token": T, "redis": URL, ...}'

Startup (the JSON argument): ``server`` and ``token`` (the API), ``redis`` (a URL: the
client gets a ``RedisCoordinator``; null: an independent client), ``lease``,
``secret`` (the fleet's shared ``callback_secret``), ``listen`` (mount
``flux_async.web``'s receiver on a port of its own) and ``client`` (more
``FluxClient`` settings). Then it reads commands from stdin, one JSON object a line:

* ``{"cmd": "jobs", "prefix": P, "n": N, "callback_url": U}``: N jobs at once
  (``submit`` then ``wait``), prompts ``P0`` .. ``P{N-1}``;
* ``{"cmd": "submit", "prompt": P, "callback_url": U}``: one job;

and writes what happens to stdout, one JSON object a line, with the wall-clock time
``t``: ``ready`` (its receiver's URL), ``submitted`` (task id), ``result``,
``recovered`` (a dead worker's task, handed to this one's ``on_recovered`` hook),
``error`` (the exception's type and the task id it names, if any), ``closed`` (its
receiver's counts and ``rounds``: how many poll rounds its client ran).
End of stdin closes the client and exits. The parent's side is ``WorkerProcess``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CALLBACK_PATH = "/flux/callback"

Event = dict[str, Any]


# --- the child ---------------------------------------------------------------------


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"ev": event, "t": time.time(), **fields}), flush=True)


def _inference(result: Any) -> float | None:
    """The generation time the server reports for a result (to compute the bound)."""
    try:
        return float(result.images[0].raw["timings"]["inference"])
    except (LookupError, TypeError, ValueError):
        return None


async def _child(spec: Mapping[str, Any]) -> None:
    import anyio
    import anyio.to_thread
    from aiohttp import web

    from flux_async import FluxClient, FluxError, GenerateRequest, ImageResult
    from flux_async.web import add_callback_route

    extra: dict[str, Any] = dict(spec.get("client") or {})
    coordinator: Any = None
    if spec.get("redis"):
        from flux_async.redis import RedisCoordinator

        coordinator = RedisCoordinator.from_url(
            spec["redis"], api_key=spec["token"], lease=float(spec.get("lease", 30.0)),
            timeout=float(spec.get("redis_timeout", 2.0)),
        )
        extra.update(_coordination(coordinator))
    client = FluxClient(
        spec["token"], base_url=spec["server"], callback_secret=spec.get("secret"), **extra
    )
    receiver_url = None
    runner: web.AppRunner | None = None
    counts: dict[str, int] = {}
    if spec.get("listen"):
        app = web.Application()
        counts = add_callback_route(app, CALLBACK_PATH, client).counts
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        receiver_url = f"http://{host}:{port}{CALLBACK_PATH}"

    async def job(prompt: str, callback_url: str | None) -> None:
        task_id = None
        try:
            task = await client.submit(GenerateRequest(prompt), callback_url=callback_url)
            task_id = task.id
            _emit("submitted", id=task.id, prompt=prompt)
            result: ImageResult = await client.wait(task)
            _emit("result", id=task.id, prompt=prompt, inference=_inference(result))
        except FluxError as exc:
            task_id = getattr(exc, "task_id", None) or task_id
            _emit("error", prompt=prompt, kind=type(exc).__name__, id=task_id, text=str(exc))

    try:
        async with client, anyio.create_task_group() as group:
            _emit("ready", pid=os.getpid(), callback_url=receiver_url,
                  process_id=getattr(coordinator, "process_id", None))
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                command = json.loads(line)
                callback = command.get("callback_url")
                if command["cmd"] == "jobs":
                    for i in range(int(command["n"])):
                        group.start_soon(job, f"{command['prefix']}{i}", callback)
                elif command["cmd"] == "submit":
                    group.start_soon(job, command["prompt"], callback)
            group.cancel_scope.cancel()  # stdin closed: the parent is done with us
    finally:
        if runner is not None:
            await runner.cleanup()
        if coordinator is not None:
            await coordinator.close()
    _emit("closed", counts=dict(counts), rounds=_poll_rounds(client))


def _poll_rounds(client: Any) -> int | None:
    """How many poll rounds the client ran: the poller's own counter (private, so
    read defensively: ``None`` if a later version moves it)."""
    rounds = getattr(getattr(client, "_poller", None), "rounds", None)
    return rounds if isinstance(rounds, int) else None


def _coordination(coordinator: Any) -> dict[str, Any]:
    """The client settings that put ``coordinator`` in charge and report recoveries."""

    def on_recovered(recovered: Any) -> None:
        error = recovered.error
        _emit("recovered", id=recovered.task_id, ok=recovered.ok,
              kind=None if error is None else type(error).__name__)

    return {"coordinator": coordinator, "on_recovered": on_recovered}


def main(argv: list[str]) -> None:
    import anyio

    spec = json.loads(argv[0])
    anyio.run(_child, spec)


# --- the parent's handle -----------------------------------------------------------


class WorkerProcess:
    """A worker started with ``spec``; its events collected by a reader thread."""

    def __init__(
        self, spec: Mapping[str, Any], *, name: str = "worker",
        changed: threading.Condition | None = None,
    ) -> None:
        self.name = name
        self.events: list[Event] = []
        # Shared by a Fleet's workers, so one wait can watch them all.
        self._changed = changed if changed is not None else threading.Condition()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fleet_worker", json.dumps(spec)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"ev": "exit", "t": time.time()})
            self._changed.notify_all()

    def of(self, kind: str) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e["ev"] == kind]

    def wait_for(self, condition: Callable[[list[Event]], object], timeout: float) -> None:
        """Block until ``condition(events)`` holds; fail (with stderr) after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.events), timeout):
                raise TimeoutError(
                    f"{self.name}: condition not met in {timeout} s; events "
                    f"{[e['ev'] for e in self.events][-20:]}; stderr:\n{self.stderr()}"
                )

    def ready(self, timeout: float = 30.0) -> Event:
        self.wait_for(lambda events: any(e["ev"] in ("ready", "exit") for e in events), timeout)
        ready = self.of("ready")
        if not ready:
            raise RuntimeError(f"{self.name} did not start:\n{self.stderr()}")
        return ready[0]

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-3000:]

    def kill(self) -> float:
        """SIGKILL, as the OOM killer would; returns the wall-clock time of the kill."""
        os.kill(self.proc.pid, signal.SIGKILL)
        killed = time.time()
        self.proc.wait(10)
        return killed

    def close(self, timeout: float = 30.0) -> int:
        """End of stdin: the worker closes its client and exits; returns its exit code."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Kill it if still running (a failed test's leftovers); free its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self._reader.join(5)  # at the end of the output, which the exit brought
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class Fleet:
    """Workers whose events wake one shared condition: a wait can span them all."""

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []
        self._changed = threading.Condition()

    def spawn(self, spec: Mapping[str, Any]) -> WorkerProcess:
        worker = WorkerProcess(spec, name=f"worker-{len(self.workers)}", changed=self._changed)
        self.workers.append(worker)
        return worker

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str = "") -> None:
        """Block until ``condition()`` holds (checked at every event); fail after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise TimeoutError(f"not met in {timeout} s: {what}; stderr: "
                                   + " | ".join(w.stderr() for w in self.workers))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
