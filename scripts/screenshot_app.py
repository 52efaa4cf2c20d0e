"""Screenshot of the web page after an upload, for the README (needs Chromium and playwright).

Run from the repository root with `python -m`: it imports a script of the root (export.py, app.py).

    python -m scripts.screenshot_app [--cls_ckpt CLS.ckpt] [--seg_ckpt SEG.ckpt] --image SLICE.jpg --output docs/app.png

Without models, the bundled ones (models/).
"""

from __future__ import annotations

import argparse

from playwright.sync_api import sync_playwright

# The scripts at the top of the checkout are not installed: import them from there.
from app import build_app
from inference.arguments import parse_arguments
from inference.bundled import models_to_use
from inference.predictor import TumorPredictor

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cls_ckpt")
    parser.add_argument("--seg_ckpt")
    parser.add_argument("--image", required=True)
    parser.add_argument("--output", default="docs/app.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parse_arguments(parser)

    app = build_app(TumorPredictor(*models_to_use(args.cls_ckpt, args.seg_ckpt), "cpu"))
    app.launch(prevent_thread_lock=True, server_port=None)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app.local_url)
            page.set_input_files("#upload input[type=file]", args.image)
            page.wait_for_function("(document.querySelector('#message')?.innerText || '').includes('Predicted')")
            page.wait_for_selector("#gradcam img")
            page.wait_for_timeout(1000)  # let the images finish fading in
            page.screenshot(path=args.output, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
