"""Make docs/gallery.png and docs/gallery-phone.png: the page of a real 36-prompt batch.

    python docs/make_screenshot.py

Runs ``flux-async batch examples/prompts.txt`` against the bundled local server
(``flux-async serve`` with a share of failing tasks, so failed cards show too),
then photographs ``OUT/index.html`` in headless Chromium, opened through
``file://`` as a user opens it: at desktop width, and as a phone (390x844 CSS
pixels at 2x, which exercises the viewport meta tag). Needs Debian's
``chromium`` and ``chromium-driver`` (or CHROMIUM / CHROMEDRIVER pointing at
them) and ``pip install selenium``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--hide-scrollbars", "--force-prefers-reduced-motion",
]


def run_batch(out: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACEDATACLOUD_API_TOKEN", "FLUX_ASYNC_BASE_URL",
                        "FLUX_ASYNC_DOWNLOAD_ALLOW")}
    server = subprocess.Popen(
        [sys.executable, "-m", "flux_async", "serve", "--port", "0", "--failure-rate", "0.12",
         "--seed", "3", "--generation-time", "0.2,0.8"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        found = re.search(r"listening on (\S+) token=(\S+)", server.stdout.readline())
        assert found, "the local server did not start"
        # Its images are on the loopback: allowed explicitly, as `serve` prints.
        env.update(FLUX_ASYNC_BASE_URL=found.group(1), ACEDATACLOUD_API_TOKEN=found.group(2),
                   FLUX_ASYNC_DOWNLOAD_ALLOW=found.group(1))
        subprocess.run(
            [sys.executable, "-m", "flux_async", "batch", "examples/prompts.txt",
             "--out", str(out), "--rate", "0", "--poll-interval", "0.2", "-q"],
            env=env, cwd=ROOT, check=False,  # exit status 1: some lines fail, on purpose
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def browser(profile: Path, *, phone: bool) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    if phone:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0},
        })
    else:
        options.add_argument("--window-size=1280,1000")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def photograph(page: Path, target: Path, *, phone: bool) -> None:
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile), phone=phone)
        try:
            driver.get(page.as_uri())
            # Wait for the images on screen (they load lazily) before the picture.
            driver.set_script_timeout(20)
            driver.execute_async_script(
                "const done = arguments[0];"
                "Promise.all([...document.images].filter(i => {"
                "  const r = i.getBoundingClientRect(); return r.top < innerHeight; })"
                "  .map(i => i.decode().catch(() => null))).then(() => done());"
            )
            driver.save_screenshot(str(target))
        finally:
            driver.quit()
    print(target)


def main() -> None:
    with tempfile.TemporaryDirectory() as temp:
        out = Path(temp) / "out"
        run_batch(out)
        page = out / "index.html"
        photograph(page, ROOT / "docs" / "gallery.png", phone=False)
        photograph(page, ROOT / "docs" / "gallery-phone.png", phone=True)


if __name__ == "__main__":
    main()
