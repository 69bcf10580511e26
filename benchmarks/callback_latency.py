"""How soon a caller has its result once the server finished the task: callbacks vs polling.

    python benchmarks/callback_latency.py              # 200 tasks, 1-3 s each
    python benchmarks/callback_latency.py --tasks 500 --generation 0.5 2

One in-process ``LocalFluxServer`` per mode. For each task: the wall-clock time
``generate()`` returned minus the finish time the server recorded
(``server.stats.finish_times``). Callback mode mounts ``flux_async.web``'s receiver
on 127.0.0.1 and keeps the client's fallback poll at its default (30 s), so in the
normal case it makes no task query. The baseline, measured in the same run, polls
at the client's default settings. Both run every task at once (``max_concurrency``
= tasks, no submit rate limit) so only the way results arrive differs. Prints
figures and ratios; asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from aiohttp import web

from flux_async import FluxClient
from flux_async.testing import LocalFluxServer, ServerSettings
from flux_async.web import add_callback_route

PATH = "/flux/callback"


async def measure(callbacks: bool, tasks: int, generation: tuple[float, float]) -> dict[str, Any]:
    arrivals: dict[str, float] = {}
    settings = ServerSettings(generation_time=generation, seed=7)
    async with LocalFluxServer(settings) as server:
        app = web.Application()
        receiver = add_callback_route(app, PATH)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            extra: dict[str, Any] = {"callback_url": f"http://{host}:{port}{PATH}"}
            client = FluxClient(server.token, base_url=server.url, max_concurrency=tasks,
                                submit_rate=None, **(extra if callbacks else {}))
            receiver.client = client

            async def one(i: int) -> None:
                result = await client.generate(f"benchmark image {i}")
                arrivals[result.task_id] = time.time()

            async with client:
                await asyncio.gather(*(one(i) for i in range(tasks)))
        finally:
            await runner.cleanup()
        finish = server.stats.finish_times
        lags = sorted((arrivals[t] - finish[t]) * 1000 for t in arrivals)
        return {
            "median": statistics.median(lags),
            "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
            "queries": server.stats.requests["retrieve"] + server.stats.requests["retrieve_batch"],
            "by_callback": receiver.counts["resolved"] + receiver.counts["held"],
            "tasks": len(lags),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--generation", type=float, nargs=2, default=(1.0, 3.0),
                        metavar=("LO", "HI"), help="seconds per task on the server")
    args = parser.parse_args()
    generation = (args.generation[0], args.generation[1])
    rows = {
        "callbacks": await measure(True, args.tasks, generation),
        "polling (defaults)": await measure(False, args.tasks, generation),
    }
    print(f"{args.tasks} tasks, {generation[0]}-{generation[1]} s each; "
          "lag = caller's result time - server's finish time")
    print(f"{'mode':<20}{'median ms':>11}{'p99 ms':>10}{'task queries':>14}{'by callback':>13}")
    for name, row in rows.items():
        print(f"{name:<20}{row['median']:>11.1f}{row['p99']:>10.1f}{row['queries']:>14}"
              f"{row['by_callback']:>9}/{row['tasks']}")
    cb, poll = rows["callbacks"], rows["polling (defaults)"]
    print(f"ratio polling/callbacks: median {poll['median'] / max(cb['median'], 1e-9):.1f}x, "
          f"p99 {poll['p99'] / max(cb['p99'], 1e-9):.1f}x; "
          f"task queries {cb['queries']} vs {poll['queries']}")


if __name__ == "__main__":
    asyncio.run(main())
