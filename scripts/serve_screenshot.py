"""Make ``docs/images/serve.png``: the ``restorekit serve`` page after restoring the astronaut ×8.

Starts the server (every installed method, the demo's metrics) on a free localhost port, drives
headless Chromium (Debian's ``chromium`` + ``chromium-driver``) as a person would — the astronaut
photo, "restore its largest face", "it is sharp", ×8, every method that runs here — and saves the
page as an 8-bit palette PNG (small enough for the docs).

    .venv/bin/python scripts/serve_screenshot.py [--out docs/images/serve.png] [--width 1180]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser set-up the tests use

from serve_helpers import chromium_driver, find_chromium  # noqa: E402

from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.server import start  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs/images/serve.png")
    ap.add_argument("--width", type=int, default=1180)
    ap.add_argument("--scale", default="8")
    args = ap.parse_args()
    found = find_chromium()
    if isinstance(found, str):
        sys.exit(found)
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    srv = start(ServeConfig(port=0))
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium_driver(*found, profile=Path(profile), size=(args.width, 1000))
        try:
            wait = WebDriverWait(driver, 120, poll_frequency=0.2)
            driver.get(srv.url + "/")
            wait.until(lambda d: d.execute_script("return document.querySelectorAll('#methods .method').length"))
            driver.find_element(By.ID, "sample").click()
            wait.until(lambda d: d.execute_script("return !!document.getElementById('upload-preview')"))
            driver.find_element(By.CSS_SELECTOR, "input[name=faces][value=crop]").click()
            driver.find_element(By.ID, "degrade").click()
            Select(driver.find_element(By.ID, "scale")).select_by_value(args.scale)
            driver.find_element(By.ID, "run").click()
            wait.until(lambda d: d.execute_script("return state.job && state.job.finished"))
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"))
            # show why one method cannot run here, as a reader of the docs would click it
            driver.execute_script("const d = document.querySelector('#methods details'); if (d) d.open = true;")
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            import base64
            import io

            img = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        finally:
            driver.quit()
            srv.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        args.out, optimize=True)
    print(f"{args.out}: {img.width}×{img.height}, {args.out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
