"""``flux-async batch`` on its journal: killed with SIGKILL, run again, nothing paid twice.

SIGINT lets a batch stop cleanly (every task id reaches the manifest first); SIGKILL
does not. The journal in the output directory (``.journal.db``) holds every paid
submission from before its POST, so a run killed at any moment and started again
waits on what was paid, whether or not the manifest heard of it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.test_cli import (
    Server,
    cli,
    manifest,
    no_traceback,
    prompts_file,
    server,
    start_cli,
    wait_until,
)
from tests.test_cli_stop import task_ids

__all__ = ["server"]  # the fixture, imported for the tests below


def test_sigkill_midway_then_reruns_pay_for_nothing_twice(
    server: Server, tmp_path: Path
) -> None:
    prompts = [f"killed prompt {i}" for i in range(30)]
    source = prompts_file(tmp_path, prompts)
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--concurrency", "6", "--rate", "0",
            "--poll-interval", "0.05"]
    # Each answer 0.3 s after its task exists: a kill lands with submissions on the wire.
    server.settings(generation_time=[0.3, 0.8], submit_answer_delay=0.3)
    for at_least in (4, 12, 20):
        run = start_cli(*args, env=server.env())
        wait_until(lambda n=at_least: task_ids(out) >= n)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
    assert (out / ".journal.db").is_file()
    after_kills = server.stats()

    rerun = cli(*args, "--json", env=server.env())
    no_traceback(rerun)
    summary = json.loads(rerun.stdout)
    uncertain = {line for line, r in manifest(out).items()
                 if r["status"] == "failed" and r["reason"] == "submission_uncertain"}
    # Only submissions of unknown fate are not done: nothing else was lost or paid twice.
    assert summary["done"] == len(prompts) - len(uncertain), summary
    assert summary["failed_by_reason"] == ({"submission_uncertain": len(uncertain)}
                                          if uncertain else {})
    stats = server.stats()
    assert max(stats["tasks_per_prompt"].values()) == 1
    # Every task the kills left behind was waited on, not paid for again.
    assert stats["tasks_created"] - after_kills["tasks_created"] == (
        len(prompts) - len(after_kills["tasks_per_prompt"]))

    # The user's decision: pay again for those, knowing a task may exist for each.
    final = cli(*args, "--retry-failed", "--json", env=server.env())
    no_traceback(final)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["done"] == len(prompts)
    stats = server.stats()
    twice = {p for p, n in stats["tasks_per_prompt"].items() if n > 1}
    # A second payment only where the user said so, for a submission of unknown fate.
    assert twice <= {prompts[line - 1] for line in uncertain}
    assert all(r["status"] == "done" for r in manifest(out).values())
