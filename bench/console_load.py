"""
How long the console's pages take with 100,000 incidents in the store: a
real ``twistd gwebhook`` (TLS, an API token, a store filled as the browser
tests fill it) and Debian's chromium driven by Playwright, logged in.  For
each page, ``--rounds`` loads of two kinds:

- full: the browser opens the page's URL from a blank tab (the HTML, the
  modules, the session, the API's answers) until its content is shown;
- in-app: the page is reached from another page of the console (a hash
  change: the API's answers and the rendering), as an operator clicks.

Prints the median and p90 of each, in milliseconds.  Run from the
repository (it uses tests/support/browser.py's store filler):

    .venv/bin/python bench/console_load.py [--incidents 100000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from ports import free_port, wait_listening  # noqa: E402
from support.browser import chromium_path, fill_store  # noqa: E402

BIN = Path(sys.executable).parent
# A fresh API token for this run's daemon only.
TOKEN = secrets.token_urlsafe(24)
# Each page, and what is on it once it is shown.
PAGES = [
    ("incidents", "#incident-rows tr"),
    ("incident/54321", "#body-text"),
    ("incidents?instance=bulk-2", "#incident-rows tr[data-id='99802']"),
    ("samples", "#samples"),
    ("workbench?instance=bulk-1", "#preview-summary"),
    ("deliveries", "#forwards"),
    ("health", "#store-status"),
]
# Where an in-app load starts from: the health page, or for the health
# page itself the deliveries (a hash that does not change renders nothing).
AWAY = (("health", "#store-status"), ("deliveries", "#forwards"))
# From another page to this one, in the page itself (what the test did).
IN_APP = """([route, ready]) => new Promise((resolve) => {
    const started = performance.now();
    const old = document.querySelector("main").firstChild;
    window.location.hash = "#/" + route;
    const look = () => {
        const el = document.querySelector(ready);
        if (el && document.querySelector("main").firstChild !== old) {
            resolve(performance.now() - started);
        } else requestAnimationFrame(look);
    };
    look();
})"""


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def measure(origin: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, dict[str, list[float]]] = {
        route: {"full": [], "in-app": []} for route, _ in PAGES
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path())
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1280, "height": 800}
        )
        page = context.new_page()
        page.goto(origin + "/console/")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#incident-rows tr")
        for n in range(rounds + 1):  # the first round warms, and is not kept
            for route, ready in PAGES:
                page.goto("about:blank")
                started = time.perf_counter()
                page.goto(f"{origin}/console/#/{route}")
                page.wait_for_selector(ready, state="attached")
                full = (time.perf_counter() - started) * 1000
                # Away (to another page), then back from within the console.
                away, there = AWAY[route == "health"]
                page.evaluate(f"window.location.hash = '#/{away}'")
                page.wait_for_selector(there, state="attached")
                in_app = page.evaluate(IN_APP, [route, ready])
                if n:
                    times[route]["full"].append(full)
                    times[route]["in-app"].append(in_app)
        browser.close()
    return times


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--incidents", type=int, default=100_000)
    options.add_argument("--rounds", type=int, default=30)
    args = options.parse_args()
    if chromium_path() is None:
        raise SystemExit("no chromium (apt-get install chromium)")
    directory = Path(tempfile.mkdtemp(prefix="gwebhook-console-load-"))
    process = None
    try:
        subprocess.run(
            [str(BIN / "gwebhook"), "make-cert", str(directory)],
            check=True,
            capture_output=True,
        )
        (directory / "tokens").write_text(TOKEN + "\n")
        started = time.monotonic()
        fill_store(directory / "gwebhook.sqlite", args.incidents)
        print(
            f"store: {args.incidents} incidents written in "
            f"{time.monotonic() - started:.1f} s"
        )
        port = free_port()
        process = subprocess.Popen(
            [
                str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", "twistd.log",
                "gwebhook", "--port", str(port), "--interface", "127.0.0.1",
                "--cert", "server.crt", "--key", "server.key",
                "--db", "gwebhook.sqlite", "--api-token-file", "tokens",
                "--allow-anonymous", "--store-samples",
            ],
            cwd=directory,
            start_new_session=True,
        )  # fmt: skip
        wait_listening(port)
        times = measure(f"https://127.0.0.1:{port}", args.rounds)
        print(
            f"{'page':<28} {'full median':>12} {'full p90':>9} "
            f"{'in-app median':>14} {'in-app p90':>11}   (ms, {args.rounds} loads)"
        )
        for route, kinds in times.items():
            full, in_app = kinds["full"], kinds["in-app"]
            print(
                f"{route:<28} {statistics.median(full):>12.0f} {p90(full):>9.0f} "
                f"{statistics.median(in_app):>14.0f} {p90(in_app):>11.0f}"
            )
        return 0
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
