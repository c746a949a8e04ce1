"""docs/demo.png: the demo page after a photo was chosen, in Debian's headless chromium.

python scripts/demo_screenshot.py ../shared/data/cbsd68/101085.png [--model=starter] [--output=F]
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo")
    parser.add_argument("--model", default="starter")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "demo.png"))
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    command = [sys.executable, "-m", "trainer.demo", f"--local_model={args.model}", "--port=0"]
    demo = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,1100"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        url = re.search(r"(http://\S+/)", demo.stdout.readline()).group(1)
        browser.get(url)
        browser.find_element(By.ID, "photo").send_keys(os.path.abspath(args.photo))
        WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "result").is_displayed())
        browser.save_screenshot(args.output)
    finally:
        browser.quit()
        demo.terminate()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
