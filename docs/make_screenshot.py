"""README's screenshot: the demo's failed session page in headless Chromium (Debian's).

make screenshot      # runs the demo into a temporary directory, writes docs/session-page.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.demo import run  # noqa: E402


def main(output: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("make screenshot needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="rtcap-screenshot-") as tmp:
        found = run(Path(tmp) / "demo", say=lambda line: None)
        page_path = found["page"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1400, "height": 820}, device_scale_factor=1)
            page.goto(Path(page_path).resolve().as_uri())
            page.wait_for_function("() => window.rtcap && window.rtcap.ready")
            page.screenshot(path=str(output))
            browser.close()
    print(f"wrote {output} from {Path(page_path).name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "session-page.png")
