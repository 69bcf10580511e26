"""The gallery page of a 10,000-line batch: what it costs to build, and whether it is usable.

    python benchmarks/gallery.py                 # build and write costs only
    python benchmarks/gallery.py --browser       # and open it in headless Chromium

A batch rewrites ``OUT/index.html`` while it runs, at most every ``EVERY`` seconds
or twenty times as long as one rewrite took. This prints what one rewrite of an
N-line page costs (the median of a few), so the share of a job's time spent on
its page is measured, not guessed. With ``--browser`` the page (and N real image
files, hard links of a few PNGs of the local server) is opened through
``file://`` and the script reports how long the browser takes to show it, to
scroll to the last line with its image loaded, and to filter to the failed lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flux_async.cli._gallery import EVERY, live_records, render, write_page
from flux_async.cli._input import Defaults, Entry, parse_lines
from flux_async.cli._ledger import Record
from flux_async.testing._png import render_png

# One line in ten fails; the last tenth has not been submitted yet.
PROMPT = "a lighthouse on a basalt cliff during a winter storm, crashing waves, study {}"


def records_of(lines: int) -> tuple[list[Entry], dict[int, Record]]:
    entries = parse_lines("".join(PROMPT.format(i) + "\n" for i in range(lines)),
                          jsonl=False, defaults=Defaults())
    records: dict[int, Record] = {}
    for entry in entries[: lines * 9 // 10]:
        assert entry.request is not None
        failed = entry.line % 10 == 3
        records[entry.line] = Record(
            entry.line, "failed" if failed else "done", key=entry.key,
            request={"prompt": entry.request.prompt, "action": "generate", "model": "flux-dev",
                     "size": "1024x1024"},
            task_id=f"{entry.line:08x}-9752-4d6a-b51e-8722c21b6092",
            files=[] if failed else [f"{entry.prefix}-0.png"],
            error="the image could not be generated, please retry" if failed else None,
            reason="task_failed" if failed else None,
        )
    return entries, records


def measure_build(lines: int, out: Path) -> float:
    entries, records = records_of(lines)
    times, size = [], 0
    for _ in range(5):
        started = time.perf_counter()
        page = render(live_records(entries, records), title="out", state="running",
                      updated="now")
        write_page(out / "index.html", page)
        times.append(time.perf_counter() - started)
        size = len(page.encode())
    took = statistics.median(times)
    interval = max(EVERY, 20 * took)
    print(f"{lines} lines: one rewrite {took * 1000:.0f} ms (median of 5), page "
          f"{size / 1e6:.1f} MB; rewritten at most every {interval:.1f} s, "
          f"{took / interval:.1%} of the job's time")
    return took


def measure_browser(lines: int, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    entries, records = records_of(lines)
    sources = []
    for i in range(16):
        source = out / f".source-{i}.png"
        source.write_bytes(render_png(f"benchmark {i}"))
        sources.append(source)
    for record in records.values():
        for i, name in enumerate(record.files):
            os.link(sources[(record.line + i) % len(sources)], out / name)
    write_page(out / "index.html", render(live_records(entries, records), title="out",
                                          state="finished", updated="now"))
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1280,900",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(
            os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")))
        try:
            driver.set_script_timeout(60)
            started = time.perf_counter()
            driver.get((out / "index.html").as_uri())  # returns after the load event
            loaded = time.perf_counter() - started
            started = time.perf_counter()
            width = driver.execute_async_script(
                "const done = arguments[0];"
                "const img = [...document.images].at(-1); img.scrollIntoView();"
                "const check = () => img.complete ? done(img.naturalWidth)"
                "  : requestAnimationFrame(check); check();"
            )
            scrolled = time.perf_counter() - started
            started = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, ".tab.failed").click()
            shown = driver.execute_script(
                "return [...document.querySelectorAll('.card')]"
                ".filter(c => c.offsetParent !== null).length"
            )
            filtered = time.perf_counter() - started
            loaded_images = driver.execute_script(
                "return [...document.images].filter(i => i.naturalWidth > 0).length"
            )
        finally:
            driver.quit()
    assert width > 0, "the last image did not load"
    print(f"browser: page shown in {loaded:.2f} s; to the last line, its image loaded, "
          f"in {scrolled:.2f} s; 'Failed' filter ({shown} cards) in {filtered:.2f} s; "
          f"{loaded_images} of {sum(len(r.files) for r in records.values())} images loaded "
          "(the rest lazily, when scrolled to)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--browser", action="store_true", help="also open it in Chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        out = Path(temp)
        measure_build(args.lines, out)
        if args.browser:
            measure_browser(args.lines, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
