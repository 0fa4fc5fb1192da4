"""
docs/serving_page.png: the service's page (tools/serve.py) in headless Chromium with a trained run's
model, after uploading an image and hovering a segment.

    python scripts/screenshot_serving_page.py --model-dir output/synthetic_panoptic \
        --image datasets/maskformer_synthetic/images/val/000003.jpg [--output docs/serving_page.png]

Needs the serve extra, selenium, and Debian's chromium + chromium-driver (what the tests use).
"""

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO_ROOT = Path(__file__).resolve().parents[1]
PORT = 8765


def main(args) -> None:
    server = subprocess.Popen(
        [sys.executable, "tools/serve.py", "--model-dir", args.model_dir, "--port", str(PORT)],
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health") as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the service did not come up in 120 s")
                time.sleep(1)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1100,760",
        ):
            options.add_argument(argument)
        os.environ.setdefault("SE_OFFLINE", "true")
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService("/usr/bin/chromedriver")
        )
        try:
            driver.get(f"http://127.0.0.1:{PORT}/")
            state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
            WebDriverWait(driver, 60).until(lambda d: state(d) == "ready")
            driver.find_element(By.ID, "file").send_keys(str(Path(args.image).resolve()))
            WebDriverWait(driver, 120).until(lambda d: state(d) in ("shown", "error"))
            canvas = driver.find_element(By.TAG_NAME, "canvas")
            ActionChains(driver).move_to_element_with_offset(canvas, 10, 10).perform()
            time.sleep(0.5)
            driver.save_screenshot(args.output)
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(60)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--model-dir", default="output/synthetic_panoptic")
    parser.add_argument("--image", required=True)
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "serving_page.png"))
    main(parser.parse_args())
