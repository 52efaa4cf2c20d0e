"""The web page in a real headless Chromium, with the bundled models: upload, wait, read the probabilities."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, script_env, synthetic_slice
from tests.test_dicom import write_dicom

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out of a closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no Chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    """`python app.py` as a new user runs it straight after the install: no arguments, the bundled models."""
    port = free_port()
    env = {**script_env(), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None:
            pytest.fail(f"app.py exited: {process.stdout.read()[-3000:]}")
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def upload_and_wait(page, path, text: str) -> str:
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_function(
        "t => (document.querySelector('#message')?.innerText || '').includes(t)", arg=text, timeout=60_000
    )
    return page.inner_text("#message")


@pytest.mark.slow  # a server process and a browser
def test_upload_shows_probabilities_overlays_and_disclaimer(app_url, tmp_path):
    image = tmp_path / "slice.png"
    cv2.imwrite(str(image), synthetic_slice(np.random.default_rng(0), 1, size=96))
    not_an_image, empty = tmp_path / "report.jpg", tmp_path / "empty.png"
    not_an_image.write_text("not an image at all")
    empty.write_bytes(b"")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(app_url)
        assert "not a diagnosis" in page.inner_text("#disclaimer")

        message = upload_and_wait(page, image, "Predicted class")
        probabilities = page.inner_text("#probabilities")
        for name in ("glioma", "meningioma", "no_tumor", "pituitary"):
            assert name in probabilities
        assert probabilities.count("%") >= 4
        assert "Segmented tumor area" in message
        for panel in ("#tumor img", "#gradcam img"):
            page.wait_for_selector(panel, timeout=30_000)
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

        page.reload()
        dicom = write_dicom(
            tmp_path / "slice.dcm",
            synthetic_slice(np.random.default_rng(1), 3, size=96) * 16,
            WindowCenter=2000,
            WindowWidth=4000,
        )
        assert "Predicted class" in upload_and_wait(page, dicom, "Segmented tumor area")

        for bad_file, message in ((not_an_image, "not an image"), (empty, "empty file")):
            page.reload()  # the upload box holds the last file until cleared; a fresh page is what a user sees
            assert message in upload_and_wait(page, bad_file, "Could not read")
        browser.close()
