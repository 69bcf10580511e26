"""The contenders: the same job written against each client.

Each ``run_*`` coroutine runs one scenario's tasks to their results, reporting to
a ``Probe``: ``submitted()`` when a task id comes back, ``arrived(task_id)`` the
moment the caller holds a task's result, ``failed(kind)`` when it never will.
The harness (``benchmarks.client``) times and measures around them; in "pending"
mode it cancels the job once everything is pending, so every contender must
clean up on cancellation (all of them use ``async with``).

The code is what a user of each client would write, nothing tuned per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from benchmarks.scenarios import SIZE, Scenario

__all__ = ["JOBS", "MODULES", "Probe", "callback_available", "prompts"]


def prompts(n: int) -> list[str]:
    """Distinct prompts, so the server's per-prompt count reveals duplicate tasks."""
    return [f"bench {i:05d}: a white siamese cat" for i in range(n)]


class Probe:
    """What the harness learns from a job while it runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.submissions = 0
        self.arrivals: dict[str, float] = {}  # task id -> epoch the caller held it
        # task id -> generation time the server drew (its images' timings.inference),
        # for the bound the limits set on this very run.
        self.durations: dict[str, float] = {}
        self.failures: Counter[str] = Counter()
        self.all_submitted = asyncio.Event()
        self.rounds: Callable[[], int] | None = None  # poll rounds so far, if known

    def submitted(self) -> None:
        self.submissions += 1
        if self.submissions >= self.n:
            self.all_submitted.set()

    def arrived(self, task_id: str, images: Any = None) -> None:
        self.arrivals[task_id] = time.time()
        with contextlib.suppress(LookupError, TypeError, ValueError):
            self.durations[task_id] = float(images[0]["timings"]["inference"])

    def failed(self, kind: str) -> None:
        self.failures[kind] += 1


# --- flux_async ------------------------------------------------------------------


def callback_available() -> bool:
    """Whether this checkout has the callback receiver (``flux_async.web``)."""
    return importlib.util.find_spec("flux_async.web") is not None


async def run_flux_async(s: Scenario, url: str, token: str, probe: Probe) -> None:
    """``FluxClient.map`` over the job: the library's way to run many requests."""
    from flux_async import FluxClient

    async with FluxClient(token, base_url=url, **s.flux_settings) as client:
        await _map(client, s, probe)


async def _map(client: Any, s: Scenario, probe: Probe) -> None:
    from flux_async import GenerateRequest

    probe.rounds = lambda: client._poller.rounds
    on_event = None
    if s.mode == "pending":
        def on_event(event: Any) -> None:
            if event.kind == "submitted":
                probe.submitted()

    requests = (GenerateRequest(p, size=SIZE) for p in prompts(s.n))
    async for outcome in client.map(requests, on_event=on_event):
        if outcome.ok:
            probe.arrived(outcome.task_id, [i.raw for i in outcome.result.images])
        else:
            probe.failed(type(outcome.error).__name__)


async def run_flux_async_generate(s: Scenario, url: str, token: str, probe: Probe) -> None:
    """One ``generate`` call per prompt, all gathered at once: what a new user writes.

    "complete" mode only: ``generate`` does not tell when its task was submitted.
    """
    from flux_async import FluxClient, FluxError

    async with FluxClient(token, base_url=url, **s.flux_settings) as client:
        probe.rounds = lambda: client._poller.rounds

        async def one(prompt: str) -> None:
            try:
                result = await client.generate(prompt, size=SIZE)
            except FluxError as exc:  # every failure is one task's, counted
                probe.failed(type(exc).__name__)
                return
            probe.arrived(result.task_id, [i.raw for i in result.images])

        await asyncio.gather(*(one(p) for p in prompts(s.n)))


async def run_flux_async_callback(s: Scenario, url: str, token: str, probe: Probe) -> None:
    """flux_async in callback mode: the receiver of ``flux_async.web`` in this process."""
    from benchmarks import callback_mode

    await callback_mode.run(s, url, token, probe, _map)


# --- the vendor's SDK ------------------------------------------------------------


async def run_vendor(s: Scenario, url: str, token: str, probe: Probe) -> None:
    """``acedatacloud``'s async client, jobs bounded by a semaphore, defaults throughout."""
    from acedatacloud import AsyncAceDataCloud

    sem = asyncio.Semaphore(s.concurrency)
    pending_mode = s.mode == "pending"

    async with AsyncAceDataCloud(api_token=token, base_url=url) as client:

        async def one(prompt: str) -> None:
            async with sem:
                try:
                    if pending_mode:
                        # Exactly what generate(wait=True) runs, split to see the submission.
                        handle = await client.flux.generate(
                            action="generate", prompt=prompt, size=SIZE, async_=True
                        )
                        probe.submitted()
                        await handle.wait()
                    else:
                        handle = await client.flux.generate(
                            action="generate", prompt=prompt, size=SIZE, async_=True, wait=True
                        )
                except Exception as exc:  # every failure is one task's, counted
                    probe.failed(type(exc).__name__)
                    return
                if handle.done:
                    state = await handle.result() or {}
                    probe.arrived(handle.id, (state.get("response") or {}).get("data"))
                else:
                    probe.failed("not_done")

        await asyncio.gather(*(one(p) for p in prompts(s.n)))


# --- the floor: bare aiohttp -------------------------------------------------------


def _finished(task: Mapping[str, Any]) -> bool:
    response = task.get("response")
    if task.get("finished_at") is not None:
        return True
    return isinstance(response, dict) and bool(response.get("data") or response.get("error"))


class _Floor:
    """The least a hand-written aiohttp client does: submit, then poll until done."""

    def __init__(self, s: Scenario, url: str, token: str, probe: Probe, session: Any) -> None:
        self.s = s
        self.images_url = url + "/flux/images"
        self.tasks_url = url + "/flux/tasks"
        self.session = session
        self.probe = probe
        self.sem = asyncio.Semaphore(s.concurrency)
        self.next_submit = 0.0

    async def post(self, url: str, body: dict[str, Any]) -> tuple[int, Any, float]:
        async with self.session.post(url, json=body) as response:
            retry = response.headers.get("Retry-After")
            data = await response.json() if response.status < 300 else None
            return response.status, data, float(retry) if retry else 1.0

    async def submit(self, prompt: str) -> str:
        body = {"action": "generate", "prompt": prompt, "size": SIZE, "async": True}
        while True:
            rate = self.s.floor_submit_rate
            if rate is not None:  # pace submissions where the server limits them
                now = time.monotonic()
                start = max(now, self.next_submit)
                self.next_submit = start + 1.0 / rate
                await asyncio.sleep(start - now)
            status, data, retry_after = await self.post(self.images_url, body)
            if status == 200:
                self.probe.submitted()
                return str(data["task_id"])
            if status != 429 and status < 500:
                raise RuntimeError(f"submission answered {status}")
            await asyncio.sleep(retry_after)


async def run_floor_retrieve(s: Scenario, url: str, token: str, probe: Probe) -> None:
    """One coroutine per task: submit, then ``retrieve`` it every interval."""
    import aiohttp

    headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        floor = _Floor(s, url, token, probe, session)

        async def one(prompt: str) -> None:
            async with floor.sem:
                try:
                    task_id = await floor.submit(prompt)
                    body = {"action": "retrieve", "id": task_id}
                    while True:
                        await asyncio.sleep(s.floor_interval)
                        status, task, _ = await floor.post(floor.tasks_url, body)
                        if status == 200 and _finished(task):
                            probe.arrived(task_id, task["response"].get("data"))
                            return
                except (aiohttp.ClientError, RuntimeError, KeyError) as exc:
                    probe.failed(type(exc).__name__)

        await asyncio.gather(*(one(p) for p in prompts(s.n)))


async def run_floor_batch(s: Scenario, url: str, token: str, probe: Probe) -> None:
    """Per task: submit, then await a future; one loop polls every pending id by batches."""
    import aiohttp

    headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
    waiting: dict[str, asyncio.Future[Any]] = {}
    rounds = 0
    probe.rounds = lambda: rounds

    async with aiohttp.ClientSession(headers=headers) as session:
        floor = _Floor(s, url, token, probe, session)

        async def poll(ids: list[str]) -> None:
            try:
                status, data, _ = await floor.post(
                    floor.tasks_url, {"action": "retrieve_batch", "ids": ids}
                )
            except aiohttp.ClientError:
                return  # asked again next round
            if status != 200:
                return
            for task in data["items"]:
                if _finished(task):
                    future = waiting.pop(task["id"], None)
                    if future is not None:
                        future.set_result(task)

        async def poller() -> None:
            nonlocal rounds
            last = time.monotonic()
            while True:
                await asyncio.sleep(max(0.0, last + s.floor_interval - time.monotonic()))
                last = time.monotonic()
                ids = list(waiting)
                if ids:
                    rounds += 1
                    size = s.floor_batch
                    await asyncio.gather(
                        *(poll(ids[i : i + size]) for i in range(0, len(ids), size))
                    )

        async def one(prompt: str) -> None:
            async with floor.sem:
                try:
                    task_id = await floor.submit(prompt)
                    future = waiting[task_id] = asyncio.get_running_loop().create_future()
                    task = await future
                    probe.arrived(task_id, task["response"].get("data"))
                except (aiohttp.ClientError, RuntimeError, KeyError) as exc:
                    probe.failed(type(exc).__name__)

        polling = asyncio.create_task(poller())
        try:
            await asyncio.gather(*(one(p) for p in prompts(s.n)))
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)


Job = Callable[[Scenario, str, str, Probe], Coroutine[Any, Any, None]]

#: Modules each contender imports, loaded before the baseline RSS is taken.
MODULES: dict[str, tuple[str, ...]] = {
    "flux_async": ("flux_async",),
    "flux_async_callback": ("flux_async", "flux_async.web", "aiohttp.web"),
    "flux_async_generate": ("flux_async",),
    "vendor": ("acedatacloud",),
    "floor_retrieve": ("aiohttp",),
    "floor_batch": ("aiohttp",),
}

JOBS: dict[str, Job] = {
    "flux_async": run_flux_async,
    "flux_async_callback": run_flux_async_callback,
    "flux_async_generate": run_flux_async_generate,
    "vendor": run_vendor,
    "floor_retrieve": run_floor_retrieve,
    "floor_batch": run_floor_batch,
}
