"""The documentation's own promises: README a front door with the two commands first,
the getting-started page saying the same, and its first script running as written.

The site itself is checked by ``mkdocs build --strict`` in ``.ci/run`` (links, anchors,
API references); these are the claims a build cannot check.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"

MAIN_JOB = ('python -m pip install -e ".[cli]" && '
            "flux-async batch examples/prompts.txt --local --out out/")
TESTS = 'python -m pip install -e ".[tests,cli]" && python -m pytest'


def blocks(text: str, language: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{language}\n(.*?)```", text, re.S)]


def test_readme_is_a_front_door_with_the_two_commands_first() -> None:
    assert README.stat().st_size < 10 * 1024
    text = README.read_text()
    # The first two code blocks of any kind are the main job, then the tests.
    first = re.findall(r"```(\w*)\n(.*?)```", text, re.S)[:2]
    assert first == [("sh", MAIN_JOB + "\n"), ("sh", TESTS + "\n")]


def test_getting_started_gives_the_same_two_commands() -> None:
    assert blocks(GETTING_STARTED.read_text(), "sh")[:2] == [MAIN_JOB, TESTS]


def test_the_first_script_of_getting_started_runs(tmp_path: Path) -> None:
    """The page's script, as a reader would paste it: against its own local server,
    with no key in the environment; it prints the task id and saves real PNGs."""
    scripts = [b for b in blocks(GETTING_STARTED.read_text(), "python")
               if "LocalFluxServer" in b]
    assert len(scripts) == 1
    env = {k: v for k, v in os.environ.items() if k != "ACEDATACLOUD_API_TOKEN"}
    done = subprocess.run([sys.executable, "-c", scripts[0]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 2
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert all(str(p.relative_to(tmp_path)) in done.stdout for p in pngs)
