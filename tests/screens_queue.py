"""Screenshots of the one training slot on a shared app: another visitor's job running, and a job waiting in line,
at 1400 px and 420 px, into artifacts/screens/ (tests/screens.py's approach; for a person to look at).

    python tests/screens_queue.py        # about a minute on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_server import CHROMIUM, ROOT, start_app  # noqa: E402
from screens import OUT, WIDTHS, open_tab, visible, wait_for  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="screens-queue-")) / "runs"
    runs.mkdir()
    proc, url = start_app(runs, extra_args=["--shared"], env={"STUDIO_MAX_JOB_MINUTES": "5"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            owner = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            owner.goto(url)
            open_tab(owner, "Train")
            wait_for(lambda: visible(owner, "Max steps (-1: use epochs)").input_value() == "200", 120)
            visible(owner, "Max steps (-1: use epochs)").fill("100000")
            owner.get_by_role("button", name="Start", exact=True).click()
            wait_for(lambda: "running" in owner.locator("#train-progress").inner_text(), 120)
            for label, width in WIDTHS.items():  # two more visitors: one per width
                page = browser.new_context(viewport={"width": width, "height": 1000}).new_page()
                page.goto(url)
                open_tab(page, "Train")
                wait_for(lambda: "busy" in page.locator("#train-queue").inner_text(), 30)
                path = OUT / f"train-slot-busy-{label}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path.relative_to(ROOT))
                wait_for(lambda: visible(page, "Max steps (-1: use epochs)").input_value() == "200", 60)
                page.get_by_role("button", name="Start", exact=True).click()
                wait_for(lambda: "Waiting in line" in page.locator("#train-queue").inner_text(), 60)
                page.wait_for_timeout(800)
                path = OUT / f"train-waiting-{label}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path.relative_to(ROOT))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
