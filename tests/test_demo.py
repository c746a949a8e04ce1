"""`python -m trainer.demo`: its HTTP contract, and the page in a real browser (Debian's chromium).

The browser test needs /usr/bin/chromium and /usr/bin/chromedriver (.ci/run installs them); it
skips without them unless COLORIZER_REQUIRE_BROWSER is set, as CI sets it.
"""

import io
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, make_photo

pytestmark = pytest.mark.system  # a server process with TensorFlow, and a browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_export):
    """A running demo on a free port over a tiny export; yields its address."""
    folder = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "trainer.demo", f"--local_model={tiny_export}", "--port=0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    address = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    assert address, line
    yield address.group(1), folder
    process.terminate()
    process.wait(timeout=30)


def _photo(path, size=(90, 60)):
    Image.fromarray(make_photo(5, size=size)).save(path, quality=95)
    return path


def _post(url, data: bytes):
    request = urllib.request.Request(url + "colorize", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_the_page_and_the_colorize_endpoint(demo, tmp_path):
    url, _ = demo
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200 and b'<input id="photo" type="file"' in page.read()
    status, kind, body = _post(url, _photo(tmp_path / "a.jpg").read_bytes())
    assert status == 200 and kind == "image/png"
    assert Image.open(io.BytesIO(body)).size == (90, 60)
    status, kind, body = _post(url, b"not a photo")
    assert status == 400 and body.startswith(b"the photo: not a readable image (")


def test_a_user_chooses_a_photo_and_sees_it_colorized_in_a_real_browser(demo, tmp_path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("COLORIZER_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} needed: apt-get install chromium chromium-driver")
        pytest.skip("no chromium: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        url, _ = demo
        browser.get(url)
        browser.find_element(By.ID, "photo").send_keys(str(_photo(tmp_path / "holiday.jpg", (120, 80))))
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "result").is_displayed())
        colorized = browser.find_element(By.ID, "colorized")
        assert (colorized.get_property("naturalWidth"), colorized.get_property("naturalHeight")) == (120, 80)
        assert browser.find_element(By.ID, "download").get_attribute("download") == "holiday-colorized.png"
        assert "holiday.jpg: 120 x 80" in browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(tmp_path / "demo.png"))
        assert np.asarray(Image.open(tmp_path / "demo.png")).std() > 0  # something was drawn
        (tmp_path / "notes.txt").write_text("not a photo")
        browser.find_element(By.ID, "photo").send_keys(str(tmp_path / "notes.txt"))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "error").text)
        error = browser.find_element(By.ID, "error").text
        assert error.startswith("notes.txt: the photo: not a readable image")
    finally:
        browser.quit()
