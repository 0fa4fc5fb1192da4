"""
The service's page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
it loads, an upload draws the overlay and lists in the legend the classes of the answer's
segments, hovering names a region's class, the overlay toggles, and a bad file shows the error.
"""

import base64
import os
import shutil

import cv2
import numpy as np
import pytest
from panopticapi.utils import rgb2id

pytest.importorskip("fastapi", reason="the serve extra is installed by scripts/setup_env.sh")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is installed by scripts/setup_env.sh"
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from maskformer.serving import ServiceOptions  # noqa: E402
from tests.utils.serving import (  # noqa: E402
    block_test_images,
    png_bytes,
    ready,
    serving,
    tiny_predictor,
)

CHROMIUM = os.environ.get("MASKFORMER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MASKFORMER_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser():
    """Headless Chromium; skips where it is not installed (fails on CI, which installs it)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        message = f"{missing} not found: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never downloads a driver or browser
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(driver on the page, Client, folder for the files to upload)."""
    predictor = tiny_predictor("panoptic", tmp_path_factory.mktemp("panoptic"))
    driver = browser()
    try:
        with serving(lambda: [predictor], ServiceOptions()) as (client, _):
            ready(client)
            driver.get(f"http://127.0.0.1:{client.port}/")
            wait_for_state(driver, "ready")
            yield driver, client, tmp_path_factory.mktemp("uploads")
    finally:
        driver.quit()


def wait_for_state(driver, state: str):
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state
    )


def upload(driver, path) -> None:
    driver.execute_script("document.body.dataset.state = 'uploading'")
    driver.find_element(By.ID, "file").send_keys(str(path))


def test_upload_draws_overlay_and_legend(page):
    driver, client, folder = page
    path = folder / "blocks.png"
    path.write_bytes(png_bytes(block_test_images()[0]))
    upload(driver, path)
    wait_for_state(driver, "shown")
    assert driver.find_element(By.ID, "error").text == ""

    _, _, answer = client.predict(path.read_bytes(), "image/png")
    ids = rgb2id(_decode(answer["panoptic_seg"])[:, :, ::-1])
    category = {s["id"]: s["category_id"] for s in answer["segments_info"]}
    names = {c["id"]: c["name"] for c in answer["classes"]}
    expected = {names[category[i]] for i in np.unique(ids) if i}
    assert len(expected) >= 2
    legend = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#legend li .name")]
    assert sorted(legend) == sorted(expected)

    overlay = driver.find_element(By.ID, "overlay")
    painted = driver.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;",
        overlay,
    )
    assert painted == int((ids > 0).sum())  # every pixel of a segment, and those alone

    # hovering a pixel names its segment's class
    y, x = np.argwhere(ids > 0)[len(np.argwhere(ids > 0)) // 2]
    scale = overlay.size["width"] / answer["width"]
    ActionChains(driver).move_to_element_with_offset(
        overlay,
        int((x + 0.5) * scale - overlay.size["width"] / 2),
        int((y + 0.5) * scale - overlay.size["height"] / 2),
    ).perform()
    tooltip = driver.find_element(By.ID, "tooltip")
    WebDriverWait(driver, 10).until(lambda d: tooltip.is_displayed())
    assert tooltip.text.startswith(names[category[ids[y, x]]])

    driver.find_element(By.ID, "show-overlay").click()
    assert not overlay.is_displayed()
    driver.find_element(By.ID, "show-overlay").click()
    links = driver.find_elements(By.CSS_SELECTOR, "#downloads a")
    names = [link.get_attribute("download") for link in links]
    assert names == ["blocks_sem_seg.png", "blocks_panoptic.png", "blocks.json"]


def test_bad_file_shows_the_error(page):
    driver, _, folder = page
    path = folder / "notes.png"
    path.write_text("not an image at all")
    upload(driver, path)
    wait_for_state(driver, "error")
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text.startswith("notes.png: cannot read image: not an image file")
    assert "(HTTP 400)" in error.text


def _decode(text: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)
