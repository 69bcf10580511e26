"""How many paid tasks a client loses off the loopback (issue 9): two counts.

1. **Lagging task store.** 200 gathered ``generate()`` calls while every new task
   stays unknown to ``/flux/tasks`` for 2 s (``visibility_delay``), the client at
   its default polling (1 s, 0.2 s when every slot is taken), max_concurrency 50.
   Counts the tasks the client reported lost (``NotFoundError``): each was
   created, runs and is billed.
2. **Cancellation mid-POST.** 100 ``generate()`` calls cancelled at random moments
   (seeded), half by ``task.cancel()``, half by ``asyncio.wait_for``, while each
   submission's answer takes 0.3 s (``submit_answer_delay``). Counts the tasks the
   server created whose id reached the caller: a result, an exception carrying
   the id, or a WARNING log record naming it.

Uses only API that existed before the fix, so the same script measures both::

    python -m benchmarks.lost_tasks
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys

from flux_async import FluxClient, NotFoundError
from flux_async.testing import LocalFluxServer, ServerSettings


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def lagging_store() -> tuple[int, int]:
    """(tasks reported lost, tasks created)."""
    settings = ServerSettings(generation_time=(0.5, 2.0), visibility_delay=2.0, seed=1)
    async with LocalFluxServer(settings) as server:
        client = FluxClient(server.token, base_url=server.url, max_concurrency=50,
                            submit_rate=None)
        async with client:
            results = await asyncio.gather(
                *(client.generate(f"p{i}") for i in range(200)), return_exceptions=True
            )
        created = server.stats.tasks_created
    return sum(isinstance(r, NotFoundError) for r in results), created


async def cancellations(seed: int = 9) -> tuple[int, int]:
    """(created tasks whose id reached the caller, tasks created)."""
    rng = random.Random(seed)
    records = _Records()
    logger = logging.getLogger("flux_async")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.WARNING)  # what a user who keeps warnings sees
    traced: set[str] = set()
    settings = ServerSettings(generation_time=(0.3, 1.0), submit_answer_delay=0.3, seed=2)
    try:
        async with LocalFluxServer(settings) as server:
            client = FluxClient(server.token, base_url=server.url, max_concurrency=100,
                                submit_rate=None, poll_interval=0.05, busy_poll_interval=0.02)
            async with client:

                def keep(outcome: object) -> None:
                    task_id = getattr(outcome, "task_id", None)
                    if isinstance(task_id, str):
                        traced.add(task_id)

                async def by_cancel(i: int, delay: float) -> None:
                    task = asyncio.get_running_loop().create_task(client.generate(f"c{i}"))
                    await asyncio.sleep(delay)
                    task.cancel()
                    try:
                        keep(await task)
                    except asyncio.CancelledError:
                        pass
                    except Exception as exc:
                        keep(exc)

                async def by_wait_for(i: int, delay: float) -> None:
                    try:
                        keep(await asyncio.wait_for(client.generate(f"w{i}"), delay))
                    except TimeoutError:
                        pass
                    except Exception as exc:
                        keep(exc)

                await asyncio.gather(*(
                    (by_cancel if i % 2 else by_wait_for)(i, rng.uniform(0.0, 0.7))
                    for i in range(100)
                ))
                # Answers of POSTs whose caller left come up to 0.3 s later: give them
                # a second, then look (closing the client would log its own list).
                await asyncio.sleep(1.0)
                text = " ".join(records.messages)
                created = set(server.stats.finish_times)
                reached = {t for t in created if t in traced or t in text}
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return len(reached), len(created)


async def main() -> None:
    lost, created = await lagging_store()
    print(f"lagging task store (visibility_delay=2 s): {lost} of {created} paid tasks "
          "reported lost (NotFoundError)")
    reached, created = await cancellations()
    print(f"cancelled at random moments (submit_answer_delay=0.3 s): the id of {reached} "
          f"of {created} created tasks reached the caller ({created - reached} untraced)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(main())
