"""The web page of match.py serve in a real browser: headless Chromium (Debian's chromium and
chromium-driver, installed by ``install_requirements.sh --browser`` when missing) opens the
page, uploads a clip through the form, and the result table is read from the page; a
screenshot of the result page is kept (``CLEWS_SCREENSHOT`` names where, for the record)."""

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.corpus import ROOT
from tests.test_server import clip_bytes, served  # noqa: F401  (the module's server fixture)

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def ensure_browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if shutil.which("apt-get") is None:  # not Debian: nothing this project can install
            pytest.skip(f"needs {CHROMIUM} and {DRIVER} (Debian's chromium, chromium-driver)")
        command = ["bash", "install_requirements.sh", "--browser"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def browser():
    ensure_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_upload_in_a_browser_and_read_the_results(served, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    root, audio, url = served
    clip = tmp_path / "excerpt of work 4.mp3"
    clip.write_bytes(clip_bytes(root, audio, 4, 0, 9.0))
    browser.get(url)
    browser.find_element(By.ID, "clip").send_keys(str(clip))
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 120).until(ready.presence_of_element_located((By.ID, "matches")))
    rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#matches tbody tr")
    ]
    assert len(rows) == 3 and rows[0][0] == "1" and rows[0][1] == "work004/v0", rows
    assert rows[0][6].startswith("0:09"), rows[0]  # the track range starts where the clip does
    assert "not calibrated" in browser.find_element(By.ID, "verdict").text
    shot = os.environ.get("CLEWS_SCREENSHOT") or str(tmp_path / "result.png")
    browser.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000
    # a bad upload shows its error on the page
    bad = tmp_path / "not audio.mp3"
    bad.write_bytes(os.urandom(4000))
    browser.get(url)
    browser.find_element(By.ID, "clip").send_keys(str(bad))
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 60).until(ready.presence_of_element_located((By.ID, "error")))
    assert "could not be used as audio" in browser.find_element(By.ID, "error").text
