"""The batch ledger never forgets a task id: other inputs, compaction, torn records, locks.

Money is measured on the local server (``tasks_per_prompt``): a prompt with two
tasks was paid twice.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from flux_async.cli._ledger import UNREADABLE_NAME, Ledger, LedgerError, Record, is_open
from tests.test_cli import (
    FAST,
    Server,
    _env,
    cli,
    manifest,
    no_traceback,
    prompts_file,
    server,
    start_cli,
    wait_until,
)

__all__ = ["server"]  # the fixture, imported for the tests below


def finish_all(server: Server) -> None:
    request = urllib.request.Request(f"{server.url}/_local/finish_all", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5):
        pass


def all_task_ids(out: Path) -> set[str]:
    """Every task id any record of the manifest holds (not only each line's last)."""
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {json.loads(line)["task_id"] for line in lines if json.loads(line)["task_id"]}


# --- another input into the same directory ------------------------------------------


def test_another_input_into_the_same_out_pays_for_nothing_twice(
    server: Server, tmp_path: Path
) -> None:
    a_prompts = [f"job a prompt {i}" for i in range(4)]
    b_prompts = [f"job b prompt {i}" for i in range(3)]
    a_file = prompts_file(tmp_path, a_prompts, "a.txt")
    b_file = prompts_file(tmp_path, b_prompts, "b.txt")
    out = tmp_path / "out"
    quick = [*FAST[2:], "--json"]

    # A: every line submitted, none resolved (the client gives up waiting first).
    server.settings(generation_time=60)
    first = cli("batch", str(a_file), "--out", str(out), "--timeout", "0.5", *quick,
                env=server.env())
    no_traceback(first)
    assert first.returncode == 1, first.stderr
    a_ids = all_task_ids(out)
    assert len(a_ids) == len(a_prompts)
    assert {r["reason"] for r in manifest(out).values()} == {"timeout"}
    before = (out / "manifest.jsonl").read_bytes()

    # B into the same directory: refused before any request, the manifest untouched.
    server.settings(generation_time=0.05)
    refused = cli("batch", str(b_file), "--out", str(out), *quick, env=server.env())
    no_traceback(refused)
    assert refused.returncode == 2, refused.stderr
    assert "another --out" in refused.stderr
    assert "its own input file" in refused.stderr
    assert "--allow-changed" in refused.stderr
    assert refused.stdout == ""
    assert (out / "manifest.jsonl").read_bytes() == before
    assert server.stats()["tasks_created"] == len(a_prompts)

    # B deliberately, with --allow-changed: A's records and task ids stay.
    allowed = cli("batch", str(b_file), "--out", str(out), "--allow-changed", *quick,
                  env=server.env())
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["images"] == len(b_prompts)
    assert a_ids <= all_task_ids(out)

    # A again: its tasks are waited on by id and downloaded, not paid for again.
    finish_all(server)
    again = cli("batch", str(a_file), "--out", str(out), *quick, env=server.env())
    no_traceback(again)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["resumed"], summary["done"], summary["images"]) == (4, 4, 4)
    stats = server.stats()
    assert stats["tasks_per_prompt"] == dict.fromkeys(a_prompts + b_prompts, 1)
    # Both jobs' images are there, under names that do not collide.
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    files = [f for r in records if r["status"] == "done" for f in r["files"]]
    assert len(files) == len(set(files)) == len(a_prompts) + len(b_prompts)
    assert all((out / f).is_file() for f in files)

    # And B once more, without the flag: both requests of each line are known now.
    last = cli("batch", str(b_file), "--out", str(out), *quick, env=server.env())
    assert last.returncode == 0, last.stderr
    assert json.loads(last.stdout)["skipped"] == len(b_prompts)
    assert server.stats()["tasks_created"] == len(a_prompts) + len(b_prompts)


def test_an_edited_line_without_a_task_runs_as_new_without_asking(tmp_path: Path) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--local", *FAST]
    assert cli(*args).returncode == 1  # line 2 invalid: no task, nothing to protect
    source.write_text('{"prompt": "fine"}\n{"prompt": "fixed"}\n')
    fixed = cli(*args)
    assert fixed.returncode == 0, fixed.stderr
    assert {r["status"] for r in manifest(out).values()} == {"done"}


# --- the ledger itself ---------------------------------------------------------------


def test_compaction_keeps_every_task_id_of_every_request(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.write(Record(1, "submitted", key="k1", task_id="t1"))
        ledger.write(Record(1, "submitted", key="k2", task_id="t2"))  # another request
        ledger.write(Record(1, "done", key="k2", task_id="t2", files=["x.png"]))
        ledger.write(Record(2, "failed", key="k3", task_id="t3", reason="timeout"))
        ledger.write(Record(2, "invalid", reason="invalid_input"))  # line broken since
        ledger.write(Record(3, "failed", key="k4", reason="auth"))  # nothing paid
        ledger.write(Record(3, "done", key="k5", task_id="t5", files=["y.png"]))
    with Ledger(tmp_path) as again:
        assert again.open_task_ids() == {"t1", "t3"}
        assert {r.task_id for r in again.all_records()} == {"t1", "t2", "t3", "t5", None}
        found = again.find(1, "k1")
        assert found is not None
        assert found.task_id == "t1"
        current = again.get(1)
        assert current is not None
        assert current.key == "k2"
        assert again.find(3, "k4") is None  # a record without a task id may go
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 5


def test_a_line_gets_a_new_task_only_once_its_open_one_is_resolved(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.write(Record(1, "submitted", key="k", task_id="t1"))
        with pytest.raises(LedgerError, match="task t1 may still yield images"):
            ledger.write(Record(1, "submitted", key="k", task_id="t2"))
        ledger.write(Record(1, "failed", key="k", task_id="t1", reason="task_failed"))
        assert not is_open(ledger.records[1])
        ledger.write(Record(1, "submitted", key="k", task_id="t2"))


def test_a_write_on_a_full_disk_keeps_the_record_and_the_end_writes_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.open()
    assert ledger._file is not None
    ledger._file.close()
    ledger._file = open("/dev/full", "a", encoding="utf-8")  # noqa: SIM115 - every write: ENOSPC
    ledger.write(Record(1, "submitted", key="k", task_id="paid"))  # does not raise
    assert ledger.write_error is not None
    assert ledger.write_error.strerror == "No space left on device"
    assert [r.task_id for r in ledger.unsaved.values()] == ["paid"]
    ledger.write(Record(2, "submitted", key="k", task_id="paid too"))  # memory only now
    ledger.close()  # the compaction writes all of it where there is room
    assert {r["task_id"] for r in manifest(tmp_path).values()} == {"paid", "paid too"}


def test_a_torn_record_gives_back_its_task_id_and_is_kept_aside(tmp_path: Path) -> None:
    whole = Record(1, "done", key="k1", task_id="t1", files=["a.png"]).to_json()
    torn = Record(2, "submitted", key="k2", request={"prompt": "a, b, c"},
                  task_id="t2").to_json()
    torn = torn[: torn.index('"files"') + 5]  # cut after the task id
    (tmp_path / "manifest.jsonl").write_text(f"{whole}\n{'[' * 100_000}\n{torn}")
    with Ledger(tmp_path) as ledger:
        assert (ledger.torn, ledger.salvaged) == (2, 1)
        record = ledger.get(2)
        assert record is not None
        assert (record.status, record.task_id, record.key) == ("submitted", "t2", "k2")
    kept = (tmp_path / UNREADABLE_NAME).read_text().splitlines()
    assert kept == ["[" * 100_000, torn]
    assert [r["task_id"] for r in manifest(tmp_path).values()] == ["t1", "t2"]


def test_a_deeply_nested_manifest_line_is_a_corrupt_record_not_a_crash(tmp_path: Path) -> None:
    source = prompts_file(tmp_path, ["one", "two"])
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--local", "--json", *FAST]
    assert cli(*args).returncode == 0
    with (out / "manifest.jsonl").open("a") as handle:
        handle.write("{" + '"a":[' * 50_000 + "\n")
    result = cli(*args)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert "1 unreadable record" in result.stderr
    assert json.loads(result.stdout)["skipped"] == 2


# --- one writer per directory --------------------------------------------------------


def test_a_second_process_on_the_same_out_is_refused(tmp_path: Path) -> None:
    source = prompts_file(tmp_path, [f"slow prompt {i}" for i in range(3)])
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--local", "--local-generation-time",
            "60", "--poll-interval", "0.05", "--rate", "0"]
    first = start_cli(*args, env=_env())

    def all_submitted() -> bool:
        try:
            return len(manifest(out)) == 3
        except (FileNotFoundError, json.JSONDecodeError):
            return False  # not written yet, or a record being appended right now

    try:
        wait_until(all_submitted)
        second = cli(*args)
        no_traceback(second)
        assert second.returncode == 2, second.stderr
        assert "another flux-async batch is already writing to" in second.stderr
        assert str(out) in second.stderr
        assert len(manifest(out)) == 3  # the second process wrote nothing
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    # The lock went with the first process: a third run may use the directory.
    third = cli("batch", str(source), "--out", str(out), "--local", "-q", *FAST)
    assert third.returncode == 0, third.stderr
