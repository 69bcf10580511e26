"""Every bad argument is exit status 2 and a message naming it, before any request.

One local server watches the whole table: it must never see a request. The table
runs in-process (``main()`` as the console script calls it), for speed; the
subprocess tests of test_cli.py show the same path end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flux_async.cli import main
from tests.test_cli import Server, prompts_file, server

__all__ = ["server"]  # the fixture, imported for the test below

SECRET = "sekrit-token-value"

# (arguments, the words the message must contain: the argument's name at least)
BAD: list[tuple[list[str], str]] = [
    (["task", "wait", ""], "argument ID: must not be empty"),
    (["task", "get", "a b"], "argument ID: must not contain spaces"),
    (["task", "get", "x\ty"], "argument ID: must not contain spaces"),
    (["task", "wait", "abc", "--out", "a-file/sub"], "--out a-file/sub: cannot write there"),
    (["task", "get", "abc", "--out", "a-file"], "--out a-file: cannot write there"),
    (["generate", "x", "--out", ""], "argument --out: must not be empty"),
    (["generate", "x", "--out", "a-file"], "--out a-file: cannot write there"),
    (["edit", "x", "--image-url", "https://e.com/c.png", "--out", " "],
     "argument --out: must not be empty"),
    (["batch", "prompts.txt", "--out", ""], "argument --out: must not be empty"),
    (["batch", "prompts.txt", "--out", "a-file"], "--out a-file exists and is not a directory"),
    (["batch", "", "--out", "out"], "argument FILE: must not be empty"),
    (["generate", "x", "--base-url", ""], "argument --base-url: must be an http(s) URL"),
    (["generate", "x", "--base-url", "ftp://example.com"], "argument --base-url: must be an"),
    (["generate", "x", "--base-url", "http://example.com:99999"], "argument --base-url: not a"),
    (["generate", "x", "--base-url", "https://"], "argument --base-url: must be an http(s)"),
    (["generate", "x", "--api-key", ""], "argument --api-key: must not be empty"),
    (["generate", "x", "--api-key", f"{SECRET}\n"], "argument --api-key: must not contain"),
    (["generate", "x", "--timeout", "nan"], "argument --timeout: must be a number"),
    (["generate", "x", "--timeout", "-1"], "argument --timeout: must be a number"),
    (["generate", "x", "--poll-interval", "0"], "argument --poll-interval: must be a number"),
    (["generate", "x", "--poll-interval", "inf"], "argument --poll-interval: must be a num"),
    (["generate", "x", "--count", "0"], "argument --count: must be a whole number"),
    (["generate", "x", "--count", "-3"], "argument --count: must be a whole number"),
    (["generate", ""], "prompt: must be a non-empty string"),
    (["generate", "x", "--model", ""], "model: must be a non-empty string"),
    (["generate", "x", "--model", "../../x"], "model: '../../x' is not a model name"),
    (["batch", "prompts.txt", "--out", "out", "--model", "flux dev"],
     "model: 'flux dev' is not a model name"),
    (["generate", "x" * 40_000], "prompt: is 40,000 characters long; at most 32,000"),
    (["generate", "x", "--download-allow", "localhost:8000"],
     "--download-allow: 'localhost:8000' is not an address"),
    (["task", "wait", "t-1", "--download-allow", ""], "argument --download-allow: must not"),
    (["generate", "x", "--size", "0x0"], "size:"),
    (["edit", "x", "--image-url", ""], "image_url:"),
    (["generate", "x", "--local-generation-time", "-1"], "argument --local-generation-time"),
    (["batch", "prompts.txt", "--out", "out", "--rate", "-5"], "argument --rate: must be a"),
    (["batch", "prompts.txt", "--out", "out", "--rate", "nan"], "argument --rate: must be a"),
    (["batch", "prompts.txt", "--out", "out", "--concurrency", "-1"],
     "argument --concurrency: must be a whole number"),
    (["batch", "prompts.txt", "--out", "out", "--count", "nan"], "argument --count"),
    (["gallery", ""], "argument DIR: must not be empty"),
    (["serve", "--port", "99999"], "argument --port: must be a port number from 0 to 65535"),
    (["serve", "--port", "-1"], "argument --port: must be a port number"),
    (["serve", "--host", ""], "argument --host: must not be empty"),
    (["serve", "--failure-rate", "nan"], "argument --failure-rate: must be a number from 0 to 1"),
    (["serve", "--failure-rate", "2"], "argument --failure-rate: must be a number from 0 to 1"),
    (["serve", "--generation-time", "3,1"], "argument --generation-time: LO must not exceed HI"),
]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(args)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output, (args, output)
    assert SECRET not in output
    return status, captured.err


def test_bad_arguments_are_status_2_and_reach_no_server(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    prompts_file(tmp_path, ["a cat"])
    (tmp_path / "a-file").write_text("not a directory")
    for args, message in BAD:
        status, stderr = run(args, capsys)
        assert status == 2, (args, stderr)
        assert message in stderr, (args, stderr)
        assert stderr.strip().splitlines()[-1].startswith("flux-async"), args
    assert not (tmp_path / "out").exists()
    stats = server.stats()
    assert sum(stats["requests"].values()) == 0, stats["requests"]


def test_bad_environment_is_status_2_and_reaches_no_server(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = [
        ({"FLUX_ASYNC_BASE_URL": "ftp://example.com"}, "$FLUX_ASYNC_BASE_URL: must be an http"),
        ({"FLUX_ASYNC_BASE_URL": ""}, "$FLUX_ASYNC_BASE_URL: must be an http(s) URL"),
        ({"ACEDATACLOUD_API_TOKEN": f"{SECRET}\n"},
         "$ACEDATACLOUD_API_TOKEN contains spaces or control characters"),
        ({"FLUX_ASYNC_DOWNLOAD_ALLOW": "127.0.0.1:8000,images.internal"},
         "$FLUX_ASYNC_DOWNLOAD_ALLOW: 'images.internal' is not an address"),
    ]
    for changes, message in cases:
        with monkeypatch.context() as patch:
            for name, value in {**server.env(), **changes}.items():
                patch.setenv(name, value)
            status, stderr = run(["generate", "a cat", "--out", str(tmp_path)], capsys)
        assert status == 2, (changes, stderr)
        assert message in stderr
    assert sum(server.stats()["requests"].values()) == 0
