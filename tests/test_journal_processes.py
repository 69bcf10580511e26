"""The journal across real OS processes: one key, several processes; a job killed -9.

Every process here is ``python -m tests.journal_worker`` against one local server in
the test's own loop, so the server's counters say what was paid.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
from pathlib import Path

import anyio
import pytest

from flux_async.testing import LocalFluxServer, ServerSettings

from .journal_worker import read_lines, spawn

pytestmark = pytest.mark.anyio



async def test_four_processes_with_one_key_create_one_task(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.db")
    settings = ServerSettings(generation_time=1.0, submit_answer_delay=0.2)
    async with LocalFluxServer(settings) as server:
        processes = [await spawn("keyed", "--url", server.url, "--token", server.token,
                                  "--journal", journal, "--key", "order-7") for _ in range(4)]
        outputs = []
        for process in processes:
            out, err = await process.communicate()
            assert process.returncode == 0, err.decode()
            outputs.append(json.loads(out.decode().splitlines()[-1]))
        assert len({o.get("task_id") for o in outputs}) == 1, outputs
        assert server.stats.tasks_created == 1
        assert server.stats.requests["images"] == 1


def _full_disk_after(limit: int) -> None:
    # A file may not grow past ``limit`` bytes: writes beyond it fail with EFBIG, as
    # on a full disk (SIGXFSZ ignored, so the write fails instead of the process).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


async def test_a_journal_on_a_full_disk_is_an_error_before_anything_is_paid(
    tmp_path: Path,
) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=0.01)) as server:
        process = await spawn("keyed", "--url", server.url, "--token", server.token,
                               "--journal", str(tmp_path / "journal.db"),
                               preexec_fn=lambda: _full_disk_after(512))
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        answer = json.loads(out.decode().splitlines()[-1])
        assert answer["error"] == "JournalError", answer
        assert "journal.db" in answer["message"]
        assert sum(server.stats.requests.values()) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_a_job_killed_fifty_times_pays_once_per_key_and_delivers_every_task(
    tmp_path: Path,
) -> None:
    """200 keyed generations; the process is SIGKILLed at random moments 50 times and
    started again each time with the same journal and keys.

    The link is the suite's hostile one (answers in 1448-byte pieces), every
    submission's answer comes 0.3 s after its task was created (a kill in that window
    leaves a paid task whose id its process never learnt), new tasks stay unknown to
    ``/flux/tasks`` for 0.3 s, and a callback that finds nobody listening is sent
    again (the job's receiver is down between two of its lives).
    """
    settings = ServerSettings(generation_time=(0.2, 0.8), submit_answer_delay=0.3,
                              visibility_delay=0.3, callback_attempts=80,
                              callback_retry_delay=0.25, seed=17)
    count, kills, rng = 200, 0, random.Random(23)
    out, reports = tmp_path / "delivered.jsonl", tmp_path / "reports.jsonl"
    port = _free_port()
    async with LocalFluxServer(settings) as server:
        args = ["job", "--url", server.url, "--token", server.token,
                "--journal", str(tmp_path / "journal.db"), "--out", str(out),
                "--reports", str(reports), "--port", str(port), "--count", str(count),
                "--concurrency", "5", "--decide-after", "6"]
        while True:
            process = await spawn(*args)
            if kills < 50:
                # Any moment of a life: starting, opening the journal, taking over,
                # submitting, waiting, receiving a callback.
                with anyio.move_on_after(rng.uniform(0.2, 1.4)):
                    await process.wait()
                if process.returncode is None:
                    os.kill(process.pid, signal.SIGKILL)
                    kills += 1
                await process.communicate()
                continue
            with anyio.fail_after(120):
                stdout, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()[-3000:]
            assert stdout.decode().split()[-1] == "done"
            break
        stats = server.stats
        delivered = read_lines(out)
        keys = sorted(line["key"] for line in delivered)
        task_ids = {line["task_id"] for line in delivered}
        unanswered = set(stats.unanswered)
        reported = {line["key"] for line in read_lines(reports)}
        print(f"{kills} kills; {stats.tasks_created} tasks created; {len(unanswered)} "
              f"submissions answered to nobody; {len(reported)} keys reported of unknown "
              f"fate; {stats.callbacks_sent} callbacks delivered; duplicates "
              f"{stats.duplicate_prompts}; unanswered not delivered "
              f"{set(stats.unanswered) - task_ids}")
    assert kills == 50
    assert keys == sorted(f"job-{i}" for i in range(count))  # each key delivered once
    assert stats.tasks_created == count
    assert len(task_ids) == count
    assert task_ids == set(stats.finish_times)  # every task created reached the job
    assert stats.duplicate_prompts == {}
    assert unanswered <= task_ids  # paid tasks whose answer was lost: found by callback
    assert unanswered  # the kills did land while answers were on their way
