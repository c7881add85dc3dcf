"""The web page of ``ssltk serve`` driven end to end by a real browser (headless Chromium).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped when
they are missing, unless ``SSLTK_REQUIRE_BROWSER=1`` (set by CI) makes that a failure. Set
``SSLTK_SCREENSHOT=docs/img/serve.png`` to refresh the screenshot of docs/serve.md.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from _lesion import add_lesion_2d, head_2d, save_png

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from ssltk.engine.bundle import load_bundle  # noqa: E402
from ssltk.engine.predict import forward  # noqa: E402
from ssltk.serve.app import create_app  # noqa: E402
from ssltk.store.ingest_images import load_image  # noqa: E402

# The machine's network is closed: no background or update traffic, no QUIC.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,1100")


def _browser() -> tuple[str, str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        message = ("headless Chromium is not installed (apt-get install chromium "
                   "chromium-driver)")
        if os.environ.get("SSLTK_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; SSLTK_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    return binary, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(uvicorn.Server):
    """uvicorn's server, with an event set once its startup is over (listening, or failed)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


@pytest.fixture
def server(lesion2d):
    port = _free_port()
    server = _Server(uvicorn.Config(create_app(lesion2d.bundle), host="127.0.0.1", port=port,
                                    log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(60) and server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    binary, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'profile'}",):
        options.add_argument(flag)
    # an explicit driver: Selenium Manager (which downloads drivers) is never called
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_choose_a_file_submit_and_see_prediction_and_gradcam(server, browser, lesion2d,
                                                              tmp_path):
    path = save_png(add_lesion_2d(head_2d(777), (12, 20)), tmp_path / "patient.png")
    bundle = load_bundle(lesion2d.bundle)
    want = forward(bundle, load_image(path, (32, 32))[None])[0]
    browser.get(server)
    assert "bundle2d" in browser.title
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.ID, "predicted").text.strip())
    assert browser.find_element(By.ID, "predicted").text == bundle.classes[int(np.argmax(want))]
    rows = browser.find_elements(By.CSS_SELECTOR, "#probabilities tr")
    shown = {r.find_elements(By.TAG_NAME, "td")[0].text: float(r.find_elements(
        By.TAG_NAME, "td")[1].text) for r in rows}
    assert shown == pytest.approx(dict(zip(bundle.classes, want)), abs=1e-3)
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('overlay'); return !i.hidden && i.complete "
        "&& i.naturalWidth > 0;"))
    shot = os.environ.get("SSLTK_SCREENSHOT")
    browser.save_screenshot(str(tmp_path / "page.png"))
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)
    assert (tmp_path / "page.png").stat().st_size > 10_000

    bad = tmp_path / "notes.txt"
    bad.write_text("not a scan")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text.strip())
    assert browser.find_element(By.ID, "error").text.startswith("Error 415: unsupported file")
