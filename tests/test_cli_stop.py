"""A batch stops feeding lines when every later one would fail the same way.

A refused or used-up API key, or a full disk: tasks already submitted are paid,
so they stay in the manifest with their task ids, and the same command run again
(once the cause is fixed) finishes the job without paying for anything twice.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flux_async._core.errors import error_for_response
from flux_async.cli import main
from flux_async.cli._output import HALTS, reason_of
from tests.test_cli import (
    FAST,
    Server,
    cli,
    manifest,
    no_traceback,
    prompts_file,
    server,
    start_cli,
    wait_until,
)

__all__ = ["server"]  # the fixture, imported for the tests below


def token_state(server: Server, state: str) -> None:
    request = urllib.request.Request(
        f"{server.url}/_local/token_state", method="POST",
        data=json.dumps({"token": server.token, "state": state}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def task_ids(out: Path) -> int:
    try:
        return sum(1 for r in manifest(out).values() if r["task_id"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0  # not written yet, or a record being appended right now


@pytest.mark.parametrize(
    ("state", "reason", "fix"),
    [
        ("expired", "auth", "the service refused the API key"),
        ("used_up", "balance", "the balance of the API key is used up"),
    ],
)
def test_a_refused_key_stops_the_feed_and_a_rerun_pays_nothing_twice(
    server: Server, tmp_path: Path, state: str, reason: str, fix: str
) -> None:
    prompts = [f"{state} prompt {i}" for i in range(20)]
    source = prompts_file(tmp_path, prompts)
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--concurrency", "3", "--rate", "0",
            "--poll-interval", "0.05"]
    server.settings(generation_time=(0.2, 0.4))

    run = start_cli(*args, env=server.env())
    wait_until(lambda: task_ids(out) >= 3)
    token_state(server, state)
    stdout, stderr = run.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert run.returncode == 1, stderr
    paid = server.stats()["tasks_created"]
    assert 3 <= paid < len(prompts) - 6  # stopped long before the end
    assert "stopping:" in stderr
    assert "stopped early:" in stdout
    assert fix in stdout
    assert "then run the same command again" in stdout
    if reason == "auth":
        assert "balance" not in stdout + stderr
    records = manifest(out)
    assert len([r for r in records.values() if r["task_id"]]) == paid  # none forgotten
    assert len(records) < len(prompts)  # the rest: not attempted, no record

    token_state(server, "ok")
    again = cli(*args, "--json", env=server.env())
    no_traceback(again)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["done"], summary["images"], summary["stopped"]) == (20, 20, None)
    stats = server.stats()
    assert stats["tasks_per_prompt"] == dict.fromkeys(prompts, 1)


def test_a_refused_key_in_json_says_why_it_stopped(server: Server, tmp_path: Path) -> None:
    source = prompts_file(tmp_path, [f"json prompt {i}" for i in range(5)])
    token_state(server, "invalid")
    result = cli("batch", str(source), "--out", str(tmp_path / "out"), "--json",
                 "--concurrency", "1", *FAST[2:], env=server.env())
    no_traceback(result)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["stopped"]["reason"] == "auth"
    assert "invalid_token" in summary["stopped"]["message"]
    assert summary["failed_by_reason"] == {"auth": 1}
    assert summary["not_started"] == 4
    assert server.stats()["requests"]["images"] == 1  # one refusal, then nothing


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (403, "used_up", "balance"),
        (403, "forbidden", "forbidden"),  # moderation or no access: never "balance"
        (401, "token_expired", "auth"),
        (400, "token_mismatched", "auth"),
        (400, "disabled", "disabled"),
        (504, "timeout", "upstream_timeout"),
        (400, "bad_request", "api_error"),
    ],
)
def test_error_kinds_and_which_stop_the_feed(status: int, code: str, reason: str) -> None:
    exc = error_for_response(status, code=code, message="m", trace_id=None)
    assert reason_of(exc) == reason
    assert (reason in HALTS) == (reason in ("auth", "balance", "disabled"))


# --- a full disk ---------------------------------------------------------------------


def test_a_full_disk_stops_cleanly_and_a_rerun_downloads_without_paying(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prompts = [f"disk prompt {i}" for i in range(12)]
    source = prompts_file(tmp_path, prompts)
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--json", "--concurrency", "2",
            *FAST[2:]]
    monkeypatch.setenv("ACEDATACLOUD_API_TOKEN", server.token)
    monkeypatch.setenv("FLUX_ASYNC_BASE_URL", server.url)
    monkeypatch.setenv("FLUX_ASYNC_DOWNLOAD_ALLOW", server.url)
    server.settings(generation_time=0.05)

    # Image files in OUT are written to /dev/full: the kernel's own ENOSPC, on the
    # first write or at the flush. The manifest (a plain open) still has room.
    real_mkstemp = tempfile.mkstemp

    def full_mkstemp(*a: Any, **kw: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*a, **kw)
        if Path(kw.get("dir") or ".") == out:
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", full_mkstemp)
    assert main(args) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # the --json summary, despite the full disk
    assert summary["stopped"]["reason"] == "disk_full"
    assert "No space left on device" in summary["stopped"]["message"]
    assert summary["failed_by_reason"]["disk_full"] >= 1
    assert summary["not_started"] > 0
    assert "stopping:" in captured.err
    records = manifest(out)
    full = [r for r in records.values() if r["reason"] == "disk_full"]
    assert full
    assert all(r["task_id"] for r in full)  # paid: kept for the next run
    assert len(full) == len(records)  # every task submitted failed to save
    assert not list(out.glob(".flux-*"))  # no partial image left behind
    paid = server.stats()["tasks_created"]
    assert paid < len(prompts)

    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)  # space again
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["images"], summary["resumed"]) == (12, 12, paid)
    assert server.stats()["tasks_per_prompt"] == dict.fromkeys(prompts, 1)
