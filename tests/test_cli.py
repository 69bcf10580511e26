"""The ``flux-async`` command line, driven as users drive it: subprocesses, real sockets.

A local server runs in its own process (``python -m flux_async serve --port 0``)
whenever a test needs one that outlives a CLI run, such as resuming after Ctrl-C;
its ``/_local/stats`` counts tasks per prompt, which is how "paid for twice" is
measured. Waits poll real conditions (the manifest on disk, a process's exit).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from flux_async.cli import main
from flux_async.cli._ledger import Ledger, LedgerBusyError, Record

ROOT = Path(__file__).resolve().parent.parent
# Quick tasks for the tests; the README's own command runs with the defaults.
FAST = ["--local-generation-time", "0.05,0.2", "--poll-interval", "0.05", "--rate", "0"]


# --- helpers -------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACEDATACLOUD_API_TOKEN", "FLUX_ASYNC_BASE_URL", "COLUMNS",
                        "FLUX_ASYNC_DOWNLOAD_ALLOW")}
    # A relative PYTHONPATH (the documented `PYTHONPATH=.`) names another directory
    # once a CLI runs with cwd=tmp_path, which then tests the installed package.
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    env.update(extra)
    return env


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
        cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flux_async", *args], input=input, capture_output=True,
        text=True, env=env or _env(), cwd=cwd, timeout=timeout, check=False,
    )


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flux_async", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def is_png(path: Path) -> bool:
    """A complete PNG: signature, every chunk's CRC, image data that inflates."""
    body = path.read_bytes()
    if not body.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    pos, idat, kinds = 8, b"", []
    while pos < len(body):
        (length,) = struct.unpack(">I", body[pos : pos + 4])
        kind, data = body[pos + 4 : pos + 8], body[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", body[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + data) != crc:
            return False
        kinds.append(kind)
        idat += data if kind == b"IDAT" else b""
        pos += 12 + length
    return kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and len(zlib.decompress(idat)) > 0


def manifest(out: Path) -> dict[int, dict[str, Any]]:
    """The last record of each line (the file must be valid JSONL throughout)."""
    records: dict[int, dict[str, Any]] = {}
    for raw in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(raw)
        records[record["line"]] = record
    return records


def wait_until(condition: Callable[[], bool], *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


@attrs.frozen
class Server:
    url: str
    token: str

    def env(self) -> dict[str, str]:
        # As `flux-async serve` says: its images are on the loopback, allowed explicitly.
        return _env(ACEDATACLOUD_API_TOKEN=self.token, FLUX_ASYNC_BASE_URL=self.url,
                    FLUX_ASYNC_DOWNLOAD_ALLOW=self.url)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_local/stats", timeout=5) as answer:
            return dict(json.load(answer))

    def submit(self, prompt: str) -> str:
        """A task made outside the CLI (as an earlier run would have); its id."""
        request = urllib.request.Request(
            f"{self.url}/flux/images", method="POST",
            data=json.dumps({"action": "generate", "prompt": prompt, "async": True}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return str(json.load(answer)["task_id"])

    def settings(self, **changes: Any) -> None:
        request = urllib.request.Request(
            f"{self.url}/_local/settings", data=json.dumps(changes).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass


@pytest.fixture
def server() -> Iterator[Server]:
    """``flux-async serve`` in its own process, so it outlives the CLI runs of a test."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_async", "serve", "--port", "0",
         "--generation-time", "0.3,0.8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (\S+) token=(\S+)", line)
        assert found, line + (process.stderr.read() if process.stderr else "")
        yield Server(found.group(1), found.group(2))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.communicate()


def prompts_file(tmp_path: Path, prompts: list[str], name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(p + "\n" for p in prompts))
    return path


# --- the main job --------------------------------------------------------------------


def readme_first_command() -> list[str]:
    """The ``flux-async batch`` command of README's first code block, as arguments."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    line = next(part for part in re.split(r"\n|&&", block.group(1)) if "flux-async" in part)
    words = shlex.split(line)
    assert words[:2] == ["flux-async", "batch"], words
    return words[1:]


def test_readme_first_command_writes_one_png_per_prompt(tmp_path: Path) -> None:
    args = readme_first_command()
    assert "--local" in args
    out = tmp_path / "out"
    args[args.index("--out") + 1] = str(out)  # same command, its output kept out of the tree
    result = cli(*args)  # no key in the environment, and --local needs no network
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    source = ROOT / args[1]
    prompts = [p for p in source.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert len(prompts) >= 30
    records = manifest(out)
    assert len(records) == len(prompts)
    assert {r["request"]["prompt"] for r in records.values()} == set(prompts)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(prompts)
    assert all(is_png(p) for p in pngs)
    assert all(r["status"] == "done" and len(r["files"]) == 1 for r in records.values())
    assert sorted(f for r in records.values() for f in r["files"]) == [p.name for p in pngs]
    assert f"{len(prompts)} lines: {len(prompts)} done, 0 failed" in result.stdout


def test_sigint_midway_then_rerun_pays_for_no_prompt_twice(
    server: Server, tmp_path: Path
) -> None:
    prompts = [f"interrupted prompt {i}" for i in range(24)]
    source = prompts_file(tmp_path, prompts)
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--concurrency", "4", "--rate", "0",
            "--poll-interval", "0.05"]

    first = start_cli(*args, env=server.env())

    def submitted() -> int:
        try:
            return sum(1 for r in manifest(out).values() if r["task_id"])
        except (FileNotFoundError, json.JSONDecodeError):
            return 0  # not written yet, or a record being appended right now

    wait_until(lambda: submitted() >= 6)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stdout
    assert "run the same command again" in stdout.lower()
    records = manifest(out)  # valid JSONL after the interruption
    assert 6 <= len(records) < len(prompts)
    assert any(r["status"] == "submitted" for r in records.values()), records
    assert not list(out.glob(".flux-*")), "a partial download was left behind"
    paid_before = server.stats()["tasks_created"]

    second = cli(*args, env=server.env())
    no_traceback(second)
    assert second.returncode == 0, second.stderr
    stats = server.stats()
    assert stats["tasks_per_prompt"] == dict.fromkeys(prompts, 1)
    assert stats["tasks_created"] == len(prompts)
    assert stats["tasks_created"] - paid_before == len(prompts) - len(records)
    resumed = sum(1 for r in records.values() if r["status"] == "submitted")
    assert f"{resumed} resumed by task id" in second.stdout
    final = manifest(out)
    assert len(final) == len(prompts)
    assert all(r["status"] == "done" for r in final.values())
    files = [out / f for r in final.values() for f in r["files"]]
    assert len(files) == len(prompts)
    assert all(is_png(f) for f in files)


# --- resume rules --------------------------------------------------------------------


def test_failed_lines_are_paid_again_only_with_retry_failed(
    server: Server, tmp_path: Path
) -> None:
    prompts = [f"retry prompt {i}" for i in range(3)]
    source = prompts_file(tmp_path, prompts)
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--json", *FAST[2:]]
    server.settings(failure_rate=1.0, generation_time=0.05)

    first = cli(*args, env=server.env())
    assert first.returncode == 1, first.stderr
    assert json.loads(first.stdout)["failed_by_reason"] == {"task_failed": 3}
    assert all(r["reason"] == "task_failed" for r in manifest(out).values())
    server.settings(failure_rate=0.0)

    again = cli(*args, env=server.env())
    assert again.returncode == 1
    assert json.loads(again.stdout)["failed_not_retried"] == 3
    assert server.stats()["tasks_created"] == 3  # nothing paid

    retried = cli(*args, "--retry-failed", env=server.env())
    assert retried.returncode == 0, retried.stderr
    summary = json.loads(retried.stdout)
    assert (summary["done"], summary["failed"], summary["images"]) == (3, 0, 3)
    assert server.stats()["tasks_per_prompt"] == dict.fromkeys(prompts, 2)

    done = cli(*args, "--retry-failed", env=server.env())  # nothing left to do
    assert done.returncode == 0
    assert json.loads(done.stdout)["skipped"] == 3
    assert server.stats()["tasks_created"] == 6


def _submitted_manifest(
    out: Path, prompt: str, task_id: str = "00000000-0000-4000-8000-000000000000"
) -> None:
    """A manifest as a run interrupted right after submitting line 1 leaves it."""
    from flux_async import GenerateRequest
    from flux_async.cli._input import Entry, request_fields

    entry = Entry(1, GenerateRequest(prompt))
    assert entry.request is not None
    out.mkdir()
    record = Record(1, "submitted", key=entry.key, request=request_fields(entry.request),
                    task_id=task_id)
    (out / "manifest.jsonl").write_text(record.to_json() + "\n")


@pytest.mark.parametrize("retry", [False, True])
def test_a_resumed_task_that_failed_is_paid_again_only_with_retry_failed(
    server: Server, tmp_path: Path, retry: bool
) -> None:
    server.settings(failure_rate=1.0, generation_time=0.1)
    task_id = server.submit("doomed")
    server.settings(failure_rate=0.0)
    source = prompts_file(tmp_path, ["doomed"])
    out = tmp_path / "out"
    _submitted_manifest(out, "doomed", task_id)
    args = ["batch", str(source), "--out", str(out), *FAST[2:]]
    result = cli(*args, *(["--retry-failed"] if retry else []), env=server.env())
    no_traceback(result)
    record = manifest(out)[1]
    if retry:
        assert result.returncode == 0, result.stderr
        assert record["status"] == "done"
        assert record["task_id"] != task_id
        assert server.stats()["tasks_per_prompt"] == {"doomed": 2}
    else:
        assert result.returncode == 1
        assert (record["status"], record["reason"], record["task_id"]) == (
            "failed", "task_failed", task_id)
        assert server.stats()["tasks_per_prompt"] == {"doomed": 1}


def test_images_deleted_after_a_run_are_downloaded_again_for_free(
    server: Server, tmp_path: Path
) -> None:
    source = prompts_file(tmp_path, ["kept", "deleted"])
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--json", *FAST[2:]]
    assert cli(*args, env=server.env()).returncode == 0
    [deleted] = manifest(out)[2]["files"]
    (out / deleted).unlink()
    again = cli(*args, env=server.env())
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["skipped"], summary["resumed"], summary["images"]) == (1, 1, 2)
    assert is_png(out / deleted)
    assert server.stats()["tasks_created"] == 2


def test_an_unknown_task_id_is_never_silently_paid_again(
    server: Server, tmp_path: Path
) -> None:
    source = prompts_file(tmp_path, ["a prompt from elsewhere"])
    out = tmp_path / "out"
    _submitted_manifest(out, "a prompt from elsewhere")
    result = cli("batch", str(source), "--out", str(out), *FAST[2:], env=server.env())
    no_traceback(result)
    assert result.returncode == 1
    assert manifest(out)[1]["reason"] == "not_found"
    assert "not known" in result.stderr
    assert server.stats()["tasks_created"] == 0


def test_local_resubmits_tasks_of_an_earlier_local_server(tmp_path: Path) -> None:
    source = prompts_file(tmp_path, ["a prompt from elsewhere"])
    out = tmp_path / "out"
    _submitted_manifest(out, "a prompt from elsewhere")
    assert main(["batch", str(source), "--out", str(out), "--local", "-q", *FAST]) == 0
    record = manifest(out)[1]
    assert record["status"] == "done"
    assert record["task_id"] != "00000000-0000-4000-8000-000000000000"


def test_a_manifest_torn_by_a_kill_still_loads(tmp_path: Path) -> None:
    source = prompts_file(tmp_path, ["first", "second"])
    out = tmp_path / "out"
    assert main(["batch", str(source), "--out", str(out), "--local", "-q", *FAST]) == 0
    text = (out / "manifest.jsonl").read_text()
    first_line, second_line = text.splitlines()
    # Line 2's last record torn mid-write: line 2 runs again, line 1 is skipped.
    (out / "manifest.jsonl").write_text(first_line + "\n" + second_line[:25])
    for name in json.loads(second_line)["files"]:
        (out / name).unlink()
    result = cli("batch", str(source), "--out", str(out), "--local", "--json", *FAST)
    assert result.returncode == 0, result.stderr
    assert "unreadable record" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["skipped"], summary["done_now"], summary["images"]) == (1, 1, 2)
    assert all(r["status"] == "done" for r in manifest(out).values())


def test_ledger_compacts_and_refuses_a_second_writer(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.write(Record(1, "submitted", task_id="a"))
        ledger.write(Record(1, "done", task_id="a", files=["x.png"]))
        with pytest.raises(LedgerBusyError):
            Ledger(tmp_path).open()
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["done"]


# --- input ---------------------------------------------------------------------------


def test_jsonl_lines_with_their_own_fields_and_a_malformed_line(tmp_path: Path) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_text(
        '{"prompt": "a cat", "count": 2, "name": "cats"}\n'
        "{not json\n"
        '{"prompt": "make it blue", "image_url": "https://example.com/cat.png"}\n'
        "\n"
        '{"prompt": "a dog", "size": "huge"}\n'
        '{"prompt": "a bird", "size": "16:9", "model": "flux-pro-1.1-ultra"}\n'
    )
    out = tmp_path / "out"
    result = cli("batch", str(source), "--out", str(out), "--local", *FAST)
    no_traceback(result)
    assert result.returncode == 1
    assert f"{source}:2: invalid JSON" in result.stderr
    assert f"{source}:5: size: must look like" in result.stderr
    records = manifest(out)
    assert {n: r["status"] for n, r in records.items()} == {
        1: "done", 2: "invalid", 3: "done", 5: "invalid", 6: "done",
    }
    assert records[1]["files"] == ["00001-cats-0.png", "00001-cats-1.png"]
    assert records[3]["request"]["action"] == "edit"
    assert records[6]["request"]["model"] == "flux-pro-1.1-ultra"
    assert "2 failed (invalid_input 2)" in result.stdout


def test_a_10_mb_prompt_is_invalid_input_and_sends_nothing(
    server: Server, tmp_path: Path
) -> None:
    huge = "a cat" * 2_000_000  # 10 MB on one line: a pasted document, a binary file
    source = prompts_file(tmp_path, ["a red fox", huge, "a blue whale"])
    out = tmp_path / "out"
    before = server.stats()
    result = cli("batch", str(source), "--out", str(out), *FAST[2:], env=server.env())
    no_traceback(result)
    assert result.returncode == 1  # a line failed: the batch's own rule
    assert f"{source}:2: prompt: is 10,000,000 characters long; at most 32,000" in result.stderr
    records = manifest(out)
    assert {n: r["status"] for n, r in records.items()} == {1: "done", 2: "invalid", 3: "done"}
    assert records[2]["reason"] == "invalid_input"
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert all(len(line.encode()) < 1024 for line in lines), max(map(len, lines))
    assert (out / "index.html").stat().st_size < 50_000  # the page does not carry it either
    assert "invalid_input 1" in result.stdout
    after = server.stats()
    assert after["tasks_created"] - before["tasks_created"] == 2  # the two valid lines
    assert set(after["statuses"]) <= {"200"}  # no 413, no 400: nothing refused upstream


def test_serves_hint_lets_downloads_reach_it_and_nothing_else_does(tmp_path: Path) -> None:
    """``flux-async serve`` prints the environment to use it; downloads from its
    loopback address need the allow it prints (or --download-allow): never implied."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_async", "serve", "--port", "0",
         "--generation-time", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        url = re.search(r"listening on (\S+) ", process.stdout.readline())
        assert url is not None
        hint = ""
        while "Ctrl-C" not in hint:
            hint += process.stderr.readline()
        exported = re.search(r"export (.+)", hint)
        assert exported is not None, hint
        printed = dict(word.split("=", 1) for word in shlex.split(exported.group(1)))
        assert printed["FLUX_ASYNC_DOWNLOAD_ALLOW"] == url.group(1)
        args = ["generate", "a cat", "--out", str(tmp_path), "--poll-interval", "0.05"]
        done = cli(*args, env=_env(**printed))
        assert done.returncode == 0, done.stderr
        without = {k: v for k, v in printed.items() if k != "FLUX_ASYNC_DOWNLOAD_ALLOW"}
        refused = cli(*args, env=_env(**without))
        no_traceback(refused)
        assert refused.returncode == 1
        assert "a loopback address: refused by the download guard" in refused.stderr
        by_option = cli(*args, "--download-allow", url.group(1), env=_env(**without))
        assert by_option.returncode == 0, by_option.stderr
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            process.kill()
            process.communicate()
    assert len(list(tmp_path.glob("*.png"))) == 2  # nothing of the refused run was kept


def test_a_too_long_prompt_or_a_path_as_model_is_refused_with_exit_status_2(
    server: Server, tmp_path: Path
) -> None:
    long = "a white siamese cat " * 2_000  # 40,000 characters: still fits on a command line
    for args in (["generate", long], ["generate", "a cat", "--model", "../../x"],
                 ["edit", long, "--image-url", "https://example.com/cat.png"]):
        result = cli(*args, "--out", str(tmp_path), env=server.env())
        no_traceback(result)
        assert result.returncode == 2, (args[:1], result.stderr[:300])
        assert result.stderr.startswith("flux-async: error: "), result.stderr[:300]
        assert len(result.stderr) < 300  # the prompt is not echoed back
    assert server.stats()["requests"] == {}  # not one request of any kind


def test_standard_input(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("batch", "-", "--out", str(out), "--local", "--json", *FAST,
                 input="# a comment\na red fox\n\na blue whale\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 2
    assert sorted(p.name for p in out.glob("*.png")) == [
        "00002-a-red-fox-0.png", "00004-a-blue-whale-0.png",
    ]


# --- bad input -----------------------------------------------------------------------


def test_missing_key_is_one_line_and_status_2(tmp_path: Path) -> None:
    source = prompts_file(tmp_path, ["a cat"])
    for args in (["batch", str(source), "--out", str(tmp_path / "out")], ["generate", "a cat"]):
        result = cli(*args)
        assert result.returncode == 2
        no_traceback(result)
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("flux-async: error: no API key")
        assert "ACEDATACLOUD_API_TOKEN" in result.stderr
        assert "--local" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["batch", "missing.txt"], "cannot read missing.txt: No such file or directory"),
        (["batch", "."], "cannot read .: Is a directory"),
        (["batch", "empty.txt"], "empty.txt has no prompts"),
        (["batch", "prompts.txt", "--size", "huge"], "size: must look like"),
        (["batch", "prompts.txt", "--bogus"], "unrecognized arguments: --bogus"),
        (["batch", "prompts.txt", "--concurrency", "0"], "--concurrency: must be a whole"),
        (["batch", "prompts.txt", "--out", "prompts.txt"], "exists and is not a directory"),
        (["generate", "a cat", "--count", "x"], "--count: must be a whole number"),
        (["edit", "x", "--image-url", "cat.png"], "image_url: must be an absolute http(s) URL"),
        (["edit", "x"], "one of the arguments --image --image-url is required"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_a_message_and_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    prompts_file(tmp_path, ["a cat"])
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    if args[0] == "batch" and "--out" not in args:
        args = [*args, "--out", "out"]
    result = cli(*args, "--local", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_serve_refuses_bad_settings() -> None:
    result = cli("serve", "--failure-rate", "2")
    no_traceback(result)
    assert result.returncode == 2
    assert "argument --failure-rate: must be a number from 0 to 1" in result.stderr


def test_an_error_of_the_service_is_one_line_and_status_1(
    server: Server, tmp_path: Path
) -> None:
    env = server.env()
    env["ACEDATACLOUD_API_TOKEN"] = "not-a-token"
    result = cli("generate", "a cat", "--out", str(tmp_path), env=env)
    assert result.returncode == 1
    no_traceback(result)
    assert result.stderr.startswith("flux-async: error: HTTP 401 invalid_token")
    assert "not-a-token" not in result.stderr + result.stdout


# --- single tasks --------------------------------------------------------------------


def test_generate_and_edit_json(tmp_path: Path) -> None:
    made = cli("generate", "a white siamese cat", "--count", "2", "--out", str(tmp_path),
               "--local", "--json", *FAST[:4])
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert len(result["images"]) == 2
    assert len(result["files"]) == 2
    assert all(is_png(Path(f)) for f in result["files"])
    assert Path(result["files"][0]).name == f"{result['task_id']}-0.png"

    edited = cli("edit", "make it blue", "--image-url", "https://example.com/cat.png",
                 "--out", str(tmp_path), "--local", *FAST[:4])
    assert edited.returncode == 0, edited.stderr
    [path] = edited.stdout.split()
    assert is_png(Path(path))


def test_task_get_and_wait(server: Server, tmp_path: Path) -> None:
    made = cli("generate", "a task to look at", "--no-download", "--json", *FAST[2:4],
               env=server.env())
    assert made.returncode == 0, made.stderr
    task_id = json.loads(made.stdout)["task_id"]

    got = cli("task", "get", task_id, "--json", env=server.env())
    assert got.returncode == 0, got.stderr
    [task] = json.loads(got.stdout)
    assert task["id"] == task_id
    assert task["status"] == "succeeded"
    assert task["images"][0]["prompt"] == "a task to look at"

    text = cli("task", "get", task_id, "no-such-task", env=server.env())
    assert text.returncode == 1
    assert f"{task_id}  succeeded" in text.stdout
    assert "no-such-task  not found" in text.stdout
    no_traceback(text)

    waited = cli("task", "wait", task_id, "--out", str(tmp_path), env=server.env())
    assert waited.returncode == 0, waited.stderr
    assert is_png(Path(waited.stdout.strip()))
    assert server.stats()["tasks_created"] == 1
