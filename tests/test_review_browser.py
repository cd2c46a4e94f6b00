"""The review station as an operator uses it: the real `dcam-review` process (uvicorn), Debian's
chromium driven by Playwright, labels given with the keyboard, the station killed mid-labelling
and restarted with every label found, and the token and loopback default over real sockets.

Chromium comes from Debian (`apt-get install chromium`, which `make setup` does as root);
Playwright never downloads a browser here. Without it these tests skip, and fail under CI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from dcam.core.network import interface_addresses
from dcam.review.app import product_key
from dcam.review.runs import part_id
from dcam.review.store import LabelStore
from dcam.serve.server import free_port
from tests.review_data import write_line
from tests.tools import require_that

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "browser-test-token-0123456789"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    require_that(CHROMIUM is not None, "Debian's chromium is needed: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@contextmanager
def station(
    line: dict, *options: str, host: str = "127.0.0.1"
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dcam-review open` as a process; yields its base URL and the process."""
    port = free_port()
    cmd = [
        str(BIN / "dcam-review"),
        "open",
        str(line["results"]),
        "--heatmaps",
        str(line["heatmaps"]),
        "--host",
        host,
        "--port",
        str(port),
        *options,
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dcam-review exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("dcam-review did not answer /healthz")


def test_labels_given_with_the_keyboard_survive_a_killed_station(browser, tmp_path: Path) -> None:
    line = write_line(tmp_path)
    page = browser.new_page()
    given: dict[str, str] = {}
    with station(line) as (url, process):
        page.goto(f"{url}/operator?next=/product/{product_key('bolt')}")
        page.fill("#operator-name", "ann")
        page.click("#operator-save")
        page.click("#flagged a.card >> nth=0")
        for key in "dgdgsdg":
            path = page.text_content("#part-path")
            with page.expect_navigation():
                page.keyboard.press(key)
            given[path] = {"d": "defect", "g": "good", "s": "skip"}[key]
        assert page.text_content("#part-path") not in given  # the next unlabelled part
        process.send_signal(signal.SIGKILL)  # no shutdown handler runs
        process.wait(timeout=10)
        # The tab now points at a dead station: a label given now is refused, never half-kept.
        with pytest.raises(PlaywrightError, match="ERR_CONNECTION_REFUSED"):
            page.goto(f"{url}/product/{product_key('bolt')}")
    with station(line) as (url, _):
        page.goto(f"{url}/product/{product_key('bolt')}")
        for path, label in given.items():  # the restarted station's page shows each label
            card = page.locator(f'a.card[data-id="{part_id(path)}"]')
            assert label in card.get_attribute("class").split()
        stored = LabelStore(line["results"].with_name("scores.labels.sqlite")).current()
        assert {p: lab.label for p, lab in stored.items()} == given
        assert {lab.operator for lab in stored.values()} == {"ann"}
    page.close()


def test_the_station_listens_on_loopback_unless_given_a_token(browser, tmp_path: Path) -> None:
    line = write_line(tmp_path)
    outside = [a for a in interface_addresses() if not a.startswith("127.") and ":" not in a]
    with station(line) as (url, _):
        port = url.rsplit(":", 1)[1]
        for address in outside:
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=2)
    refused = subprocess.run(
        [str(BIN / "dcam-review"), str(line["results"]), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={**os.environ, "DCAM_REVIEW_TOKEN": ""},
        timeout=60,
    )
    assert refused.returncode == 1 and "give a token" in refused.stderr
    with station(line, "--token", TOKEN, host="0.0.0.0") as (url, _):
        page = browser.new_page()
        assert page.goto(f"{url}/").status == 401
        assert page.goto(f"{url}/?token={TOKEN}").status == 200  # then a cookie
        assert page.goto(f"{url}/product/{product_key('gear')}").status == 200
        assert "gear" in page.text_content("h1")
        page.close()


def test_the_truth_script_labels_the_queue_through_the_api(tmp_path: Path) -> None:
    """`python -m dcam.review.truth` (the demo's stand-in operator) against a real station."""
    line = write_line(tmp_path)
    with station(line) as (url, _):
        done = subprocess.run(
            [sys.executable, "-m", "dcam.review.truth", url, "--operator", "script"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    stored = LabelStore(line["results"].with_name("scores.labels.sqlite")).current()
    assert stored and all(line["truth"][p] == lab.label for p, lab in stored.items())
    assert f"labelled {sum(v == 'defect' for v in (lab.label for lab in stored.values()))}" in (
        done.stdout
    )
