"""``OUT/index.html``, the gallery of a batch: built from the manifest, kept current live.

The page logic is checked with plain calls; the live page against a batch running
in-process on a local server; and the real thing in a real browser: a batch run
by the command line against ``flux-async serve`` with failing tasks, its page
opened through ``file://`` in headless Chromium (skipped, saying why, where
Chromium, its driver or selenium is missing; CI installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flux_async._core.models import MAX_PROMPT_CHARS
from flux_async.cli._batch import BatchJob
from flux_async.cli._gallery import PROMPT_SHOWN, LiveGallery, live_records, render, write_page
from flux_async.cli._input import Defaults, parse_lines
from flux_async.cli._ledger import Ledger, Record
from flux_async.cli._progress import Counts
from flux_async.cli._stop import Stop
from flux_async.testing import LocalFluxServer, ServerSettings
from flux_async.testing._png import render_png

from .conftest import client_for

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
EVIL = "<script>alert('gotcha')</script> & \"quotes\""


# --- the page, from records ------------------------------------------------------------


class Page(HTMLParser):
    """What a browser would make of the page's markup: elements, attributes, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def _record(line: int, status: str, prompt: str = "a cat", **fields: Any) -> Record:
    request = {"prompt": prompt, "action": "generate", **fields.pop("request", {})}
    return Record(line, status, key="k", request=request, **fields)


def test_every_user_string_is_escaped() -> None:
    records = [
        _record(1, "done", EVIL, task_id="<b>id</b>", files=['x"><script>alert(1)</script>.png'],
                request={"model": "<i>m</i>", "size": "1:1\"'"}),
        _record(2, "failed", "ok", task_id="t2", reason="<u>why</u>",
                error="<script>alert(2)</script>"),
        _record(3, "done", "sneaky", files=["javascript:alert(3)", "../../etc/passwd"]),
    ]
    text = render(records, title="<script>t</script>", state="finished", updated="<now>")
    page = Page(text)
    assert "script" not in [tag for tag, _ in page.tags]
    assert "<script" not in text.lower()
    shown = "".join(page.text)
    # Shown as the user wrote it, as text.
    for needle in (EVIL, "<b>id</b>", "<i>m</i>", "<u>why</u>", "<script>alert(2)</script>"):
        assert needle in shown
    # Images and links only ever point at a file in the page's own directory.
    targets = [a["src"] for a in page.all("img")] + [
        a["href"] for a in page.all("a") if a.get("class") != f"tab {(a['href'] or '')[1:]}"
    ]
    assert len(targets) == 6
    assert all(t and re.fullmatch(r"[A-Za-z0-9%._~-]+", t) for t in targets), targets
    assert all(a["loading"] == "lazy" for a in page.all("img"))
    assert page.all("img")[0]["alt"] == EVIL


def test_a_long_prompt_is_shown_shortened() -> None:
    prompt = "a very detailed prompt " + "and more words " * 2_130  # 31,973 characters
    assert len(prompt) <= MAX_PROMPT_CHARS
    files = [f"long-{i}.png" for i in range(4)]
    text = render([_record(1, "done", prompt, files=files), _record(2, "failed", prompt)],
                  title="out", state="finished", updated="now")
    assert len(text) < 15_000  # not 2 cards x 6 copies of 32,000 characters
    page = Page(text)
    shown = prompt[:PROMPT_SHOWN].rstrip() + "…"
    assert [a["alt"] for a in page.all("img")] == [shown] * 4
    assert [a["title"] for a in page.all("p") if a.get("class") == "prompt"] == [shown] * 2
    assert "".join(page.text).count(shown) == 2
    short = render([_record(1, "done", "a cat", files=files)], title="o", state="finished",
                   updated="")
    assert "…" not in short  # short prompts are shown whole


def test_totals_statuses_and_refresh() -> None:
    records = [
        _record(4, "done", files=["a.png", "b.png"]),
        _record(1, "done", files=["c.png"]),
        _record(2, "failed", reason="task_failed", error="the image could not be generated"),
        Record(3, "invalid", error="invalid JSON (oops)", reason="invalid_input"),
        _record(5, "submitted", task_id="t5"),
        _record(6, "pending"),
    ]
    text = render(records, title="out", state="running", updated="now")
    tabs = dict(re.findall(r'<a href="#(\w+)" class="tab[^>]*>\w+ <b>(\d+)</b>', text))
    assert tabs == {"all": "6", "done": "2", "failed": "2", "running": "1", "pending": "1"}
    assert "3 images" in text
    assert re.findall(r'class="card (\w+)" id="line-(\d+)"', text) == [
        ("done", "1"), ("failed", "2"), ("failed", "3"), ("done", "4"), ("running", "5"),
        ("pending", "6"),
    ]
    assert "Failed: task_failed" in text
    assert "the image could not be generated" in text
    assert "Failed: invalid_input" in text
    assert "invalid JSON (oops)" in text
    assert 'style="--cols:2"' in text  # two images of one line share its box
    # A running job's page reloads itself (its one script); a finished one has none.
    assert text.count("<script>setTimeout(() => location.reload(), 10000)</script>") == 1
    assert text.count("<script") == 1
    assert "<script" not in render(records, title="o", state="finished", updated="")
    assert "No lines" in render([], title="o", state="manifest", updated="")


def test_live_records_show_every_input_line() -> None:
    entries = parse_lines(
        '{"prompt": "a"}\n{"prompt": "b"}\nnot json\n{"prompt": "c"}\n{"prompt": "d"}\n',
        jsonl=True, defaults=Defaults(),
    )
    a, _b, _, c, _d = entries
    records = {
        1: Record(1, "done", key=a.key, files=["1.png"]),
        2: Record(2, "done", key="another version of the line", files=["2.png"]),
        4: Record(4, "submitted", key=c.key, task_id="t"),
        5: Record(5, "invalid", error="upload failed", reason="upload"),
    }
    shown = live_records(entries, records)
    assert [(r.line, r.status) for r in shown] == [
        (1, "done"), (2, "pending"), (3, "invalid"), (4, "submitted"), (5, "invalid"),
    ]
    assert shown[4].request is not None
    assert shown[4].request["prompt"] == "d"  # the input's, as the manifest has none
    assert shown[1].request is not None
    assert shown[1].request["prompt"] == "b"
    assert shown[2].reason == "invalid_input"
    assert "invalid JSON" in (shown[2].error or "")


def test_write_page_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    write_page(page, "one")
    write_page(page, "two")
    assert page.read_text() == "two"
    with pytest.raises(FileNotFoundError):
        write_page(tmp_path / "missing" / "index.html", "three")
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(IsADirectoryError):
        write_page(tmp_path / "dir.html", "four")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.html", "index.html"]


# --- the live page of a running batch --------------------------------------------------


class Notes:
    """A reporter that keeps the notes a job prints."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def start(self, counts: Counts) -> None:
        pass

    def update(self, counts: Counts) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)

    def close(self) -> None:
        pass


def _read_pages(page: Path, stop: threading.Event, seen: list[str]) -> None:
    """Read the page over and over, as a browser might, until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            seen.append(page.read_text(encoding="utf-8"))


async def _run_job(out: Path, lines: int, every: float, **server: Any) -> tuple[BatchJob, float]:
    entries = parse_lines("".join(f"prompt number {i}\n" for i in range(lines)),
                          jsonl=False, defaults=Defaults())
    settings = ServerSettings(generation_time=(0.0, 0.3), **server)
    async with LocalFluxServer(settings) as local, client_for(local, max_concurrency=50) as client:
        with Ledger(out) as ledger:
            job = BatchJob(client, ledger, entries, label="prompts.txt", local=True,
                           service="the local server", retry_failed=False, reporter=Notes(),
                           stop=Stop(graceful=True))
            job.gallery = LiveGallery(out, entries, ledger, every=every,
                                      on_error=job.reporter.note)
            job.plan()
            started = time.monotonic()
            await job.run()
            return job, time.monotonic() - started


@pytest.mark.anyio
async def test_a_running_batch_rewrites_its_page_atomically_and_not_too_often(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    page = out / "index.html"
    stop, seen = threading.Event(), list[str]()
    reader = threading.Thread(target=_read_pages, args=(page, stop, seen))
    reader.start()
    try:
        job, elapsed = await _run_job(out, 300, every=0.2, failure_rate=0.2, seed=5)
    finally:
        stop.set()
        reader.join()
    # 600 events (a task id, then a result, per line); the page follows at its own pace.
    assert 2 <= job.gallery.writes <= elapsed / 0.2 + 2, (job.gallery.writes, elapsed)
    assert seen, "the reader never saw the page"
    assert all(text.endswith("</html>\n") for text in seen), "a half-written page was read"
    assert any('class="card pending"' in text for text in seen)  # the first page: all pending
    final = page.read_text()
    assert "<b>Finished</b>" in final
    assert final.count('class="card done"') == job.counts.done
    assert final.count('class="card failed"') == job.counts.failed > 0
    assert job.counts.done + job.counts.failed == 300
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.anyio
async def test_a_page_that_cannot_be_written_does_not_stop_the_job(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "index.html").mkdir(parents=True)  # os.replace onto a directory fails
    job, _ = await _run_job(out, 20, every=0.05)
    assert job.counts.done == 20
    assert job.gallery.writes == 0
    assert isinstance(job.reporter, Notes)
    notes = [n for n in job.reporter.notes if "gallery" in n]
    assert len(notes) == 1, notes
    assert "cannot write the gallery" in notes[0]


# --- the command line, and a real browser ----------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACEDATACLOUD_API_TOKEN", "FLUX_ASYNC_BASE_URL",
                        "FLUX_ASYNC_DOWNLOAD_ALLOW")}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flux_async", *args], capture_output=True, text=True,
        env=env or _env(), cwd=ROOT, timeout=60, check=False,
    )


@pytest.fixture
def server() -> Iterator[dict[str, str]]:
    """``flux-async serve`` with failing tasks (seeded); yields the environment to use it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_async", "serve", "--port", "0", "--failure-rate", "0.3",
         "--seed", "11", "--generation-time", "0.05,0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (\S+) token=(\S+)", line)
        assert found, line
        yield _env(FLUX_ASYNC_BASE_URL=found.group(1), ACEDATACLOUD_API_TOKEN=found.group(2),
                   FLUX_ASYNC_DOWNLOAD_ALLOW=found.group(1))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            process.kill()
            process.communicate()


def _main_of(text: str) -> str:
    found = re.search(r"<main.*</main>", text, re.S)
    assert found
    return found.group(0)


def test_gallery_command_rebuilds_the_page_from_the_manifest(tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "a fox", "count": 2}\nnot json\n'
                      + json.dumps({"prompt": EVIL}) + "\n")
    out = tmp_path / "out"
    ran = cli("batch", str(source), "--out", str(out), "--local", "-q",
              "--local-generation-time", "0.05", "--poll-interval", "0.05", "--rate", "0")
    assert ran.returncode == 1, ran.stderr  # the invalid line
    assert f"gallery: {out / 'index.html'}" in ran.stdout
    live = (out / "index.html").read_text()
    (out / "index.html").unlink()
    rebuilt = cli("gallery", str(out))  # no key, no network needed
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.strip() == str(out / "index.html")
    again = (out / "index.html").read_text()
    assert _main_of(again) == _main_of(live)
    assert "Built from the manifest" in again
    assert "<b>Finished</b>" in live
    missing = cli("gallery", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "manifest.jsonl not found" in missing.stderr


def test_ctrl_c_leaves_a_complete_page_saying_interrupted(
    server: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"slow prompt {i}\n" for i in range(200)))
    out = tmp_path / "out"
    env = {**server}
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_async", "batch", str(source), "--out", str(out), "-q",
         "--concurrency", "4", "--rate", "0", "--poll-interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while 'class="card running"' not in _text_of(out / "index.html"):
            assert time.monotonic() < deadline, "no running line shown"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    text = (out / "index.html").read_text()
    assert "<b>Interrupted</b>" in text
    assert text.endswith("</html>\n")
    assert 'class="card pending"' in text  # lines never sent are shown as such
    assert 'class="card running"' in text  # and lines with a task id but no result yet


def _text_of(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _chrome(profile: Path, *, phone: bool = False) -> Any:
    """Headless Chromium through selenium, or a skip saying what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"no {' or '.join(missing)}: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2}}
        )
    else:
        options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture
def browser() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as profile:
        driver = _chrome(Path(profile))
        try:
            yield driver
        finally:
            driver.quit()


# Scroll every image into view (they load lazily), then wait for each to load or fail.
_LOAD_ALL = """
const done = arguments[0];
(async () => {
  for (const img of document.images) {
    img.scrollIntoView();
    await new Promise(r => requestAnimationFrame(r));
    if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
  }
  done([...document.images].map(i => [i.getAttribute('src'), i.naturalWidth]));
})();
"""


def test_the_page_of_a_real_batch_in_a_real_browser(
    server: dict[str, str], tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    lines = [json.dumps({"prompt": f"a lighthouse in a storm, study {i}"}) for i in range(24)]
    lines[3] = json.dumps({"prompt": "two foxes & a hare", "count": 3})
    lines[7] = json.dumps({"prompt": EVIL})
    lines[9] = "this line is not JSON"
    source = tmp_path / "batch.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    ran = cli("batch", str(source), "--out", str(out), "-q", "--rate", "0",
              "--poll-interval", "0.05", env=server)
    assert ran.returncode == 1, ran.stderr
    records = [json.loads(raw) for raw in (out / "manifest.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["status"] in ("failed", "invalid")]
    done = [r for r in records if r["status"] == "done"]
    assert len(records) == 24
    assert len(done) + len(failed) == 24
    assert len(failed) >= 2
    assert done

    browser.set_script_timeout(30)
    browser.get((out / "index.html").as_uri())
    # Every image of every done line is on the page and decoded by the browser.
    images = browser.execute_async_script(_LOAD_ALL)
    assert sorted(src for src, _ in images) == sorted(f for r in done for f in r["files"])
    assert all(width > 0 for _, width in images), [s for s, w in images if not w]
    # Every failed line shows why.
    for record in failed:
        card = browser.find_element(By.ID, f"line-{record['line']}")
        browser.execute_script("arguments[0].scrollIntoView()", card)
        assert "failed" in card.get_attribute("class")
        assert f"Failed: {record['reason']}" in card.text
        assert record["error"].split(";")[0] in card.text
    # The totals, as the tabs show them.
    tabs = {t.get_attribute("hash"): t.text for t in browser.find_elements(By.CSS_SELECTOR, ".tab")}
    assert tabs["#all"] == "All 24"
    assert tabs["#done"] == f"Done {len(done)}"
    assert tabs["#failed"] == f"Failed {len(failed)}"
    # The prompt with markup in it is text on the page; nothing ran.
    assert EVIL in browser.find_element(By.ID, "line-8").text
    assert browser.execute_script("return document.scripts.length") == 0  # finished: no reload
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is what raises
    # The Failed tab shows the failed lines only (plain CSS, no script), and so does
    # the address it leads to, opened anew (a bookmark, a reload).
    browser.execute_script("window.scrollTo(0, 0)")
    browser.find_element(By.CSS_SELECTOR, ".tab.failed").click()
    assert browser.current_url.endswith("index.html#failed")
    for _ in range(2):
        visible = [c for c in browser.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]
        assert sorted(int(c.get_attribute("id")[5:]) for c in visible) == sorted(
            r["line"] for r in failed
        )
        browser.refresh()
    browser.find_element(By.CSS_SELECTOR, ".tab.all").click()
    assert sum(c.is_displayed() for c in browser.find_elements(By.CSS_SELECTOR, ".card")) == 24


def test_the_page_fits_a_phone(tmp_path: Path) -> None:
    records = [_record(i, "done", f"a long prompt number {i} " * 6, files=["x.png"],
                       task_id=f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd") for i in range(1, 30)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(render_png("x"))
    write_page(out / "index.html", render(records, title="a-rather-long-directory-name-" * 3,
                                          state="finished", updated="now"))
    with tempfile.TemporaryDirectory() as profile:
        driver = _chrome(Path(profile), phone=True)
        try:
            driver.get((out / "index.html").as_uri())
            width, scrolled, columns = driver.execute_script(
                "return [innerWidth, document.documentElement.scrollWidth,"
                " getComputedStyle(document.querySelector('.grid'))"
                ".gridTemplateColumns.split(' ').length]"
            )
        finally:
            driver.quit()
    assert width == 390  # the viewport meta tag: CSS pixels of the phone, not 980
    assert scrolled <= width  # nothing sticks out sideways
    assert columns == 2
