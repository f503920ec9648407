"""Screenshot pass: every tab, empty / working / done-or-error, at 1400 px and 420 px, into artifacts/screens/.

    python tests/screens.py            # starts the app on a fresh runs folder; about 2-4 minutes on 2 cores

Not a test: the pictures are for a person to look at (the habit that catches layout bugs no assert names).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_server import CHROMIUM, ROOT, start_app  # noqa: E402

OUT = ROOT / "artifacts" / "screens"
WIDTHS = {"wide": 1400, "narrow": 420}


def wait_for(cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return True
        except Exception:  # noqa: BLE001 - the page is still rendering
            pass
        time.sleep(0.3)
    print(f"  (timed out after {timeout}s)", file=sys.stderr)
    return False


def open_tab(page, name):
    page.get_by_role("tab", name="Data", exact=True).wait_for()  # the tab bar is drawn (after a reload too)
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count():
        tab.click()
    else:  # a narrow screen: the rest sit behind the labelled "More tabs"
        page.locator(".overflow-menu > button").click()
        # exact: "Train" alone also names the Data tab's "Use this dataset on the Train tab" button
        page.get_by_role("button", name=name, exact=True).click()
    page.wait_for_timeout(1200)


def visible(page, label):
    return page.get_by_label(label, exact=True).filter(visible=True).first


def status(page, box):
    el = page.locator(f"{box} .studio-progress")
    return el.get_attribute("data-status") if el.count() else None


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="screens-")) / "runs"
    runs.mkdir()
    proc, url = start_app(runs)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            pages = {}
            for label, width in WIDTHS.items():
                page = browser.new_context(viewport={"width": width, "height": 1000}).new_page()
                page.goto(url)
                page.get_by_role("tab", name="Data").wait_for()
                pages[label] = page

            def shot(tab, state, only=None):
                for label, page in pages.items():
                    if only and label != only:
                        continue
                    path = OUT / f"{tab.lower().replace(' ', '-')}-{state}-{label}.png"
                    page.screenshot(path=str(path), full_page=True)
                    print(path.relative_to(ROOT))

            def each(fn):
                for page in pages.values():
                    fn(page)

            # empty: every tab as a first visit shows it
            for tab in ("Data", "Train", "DPO", "Persona Chat", "Evaluate", "Export"):
                each(lambda page: open_tab(page, tab))
                if tab == "Train":
                    each(lambda page: wait_for(lambda: visible(page, "Max steps (-1: use epochs)").input_value()
                                               == "200", 120))
                shot(tab, "empty")

            # Data: an error, then the bundled sample loaded
            def data_error(page):
                open_tab(page, "Data")
                page.get_by_role("radio", name="Local path").check()
                page.get_by_placeholder("/path/to/data.jsonl").fill("/nowhere/data.jsonl")
                page.get_by_role("button", name="Load dataset").click()
                wait_for(lambda: page.locator(".studio-error").count() > 0, 30)

            def data_done(page):
                page.get_by_role("radio", name="Bundled sample").check()
                page.get_by_role("button", name="Load dataset").click()
                wait_for(lambda: "usable rows" in page.locator("#data-info").inner_text(), 60)

            each(data_error)
            shot("Data", "error")
            each(data_done)
            shot("Data", "done")

            # Train: a failed start (error), a run in progress (working), a finished run (done)
            wide, narrow = pages["wide"], pages["narrow"]

            def start(page, steps, model=None):
                open_tab(page, "Train")
                wait_for(lambda: visible(page, "Max steps (-1: use epochs)").input_value() != "", 60)
                field = visible(page, "Base model (preset, Hub id or local folder)")
                field.fill(model or "embedded/tiny-llama")
                field.press("Enter")
                steps_box = visible(page, "Max steps (-1: use epochs)")
                steps_box.fill(str(steps))
                steps_box.press("Tab")
                page.get_by_role("button", name="Start", exact=True).click()

            for page in pages.values():
                start(page, 200, "nobody/no-such-model")
                wait_for(lambda: status(page, "#train-progress") == "failed", 60)
                page.wait_for_timeout(1500)
            shot("Train", "error")
            start(wide, 60)
            wait_for(lambda: (wide.locator("#train-progress .studio-progress").get_attribute("data-step") or "0")
                     not in ("0", "1", "2"), 120)
            narrow.reload()
            open_tab(narrow, "Train")
            narrow.wait_for_timeout(2000)
            shot("Train", "working")
            wait_for(lambda: status(wide, "#train-progress") == "done", 300)
            for page in pages.values():
                page.wait_for_timeout(2500)
            shot("Train", "done")

            # DPO: a short run on the bundled pairs
            open_tab(wide, "DPO")
            steps_box = visible(wide, "Max steps (-1: use epochs)")
            wait_for(lambda: steps_box.input_value() != "", 60)
            steps_box.fill("8")
            steps_box.press("Tab")
            wide.get_by_role("button", name="Start DPO").click()
            wait_for(lambda: status(wide, "#dpo-progress") in ("running", "done", "failed"), 120)
            open_tab(narrow, "DPO")
            shot("DPO", "working")
            wait_for(lambda: status(wide, "#dpo-progress") in ("done", "failed"), 300)
            wide.wait_for_timeout(2500)
            narrow.wait_for_timeout(2500)
            shot("DPO", "done")

            # Persona Chat: a reply (done)
            for page in pages.values():
                open_tab(page, "Persona Chat")
                page.locator("#chat-model input").fill("embedded/tiny-llama")  # fast; the real default loads ~20 s
                page.locator("#chat-model input").press("Enter")
                page.locator("#chat-message textarea").fill("hello, what do you do in winter?")
                page.locator("#chat-send").click()
                wait_for(lambda: "done" in page.locator("#chat-status").inner_text(), 120)
            shot("Persona Chat", "done")

            # Evaluate and Export: their main button with nothing picked (error), or on the run (done)
            for tab, button in (("Evaluate", "Evaluate"), ("Export", "Export")):
                for page in pages.values():
                    open_tab(page, tab)
                    page.get_by_role("button", name=button, exact=True).click()
                    page.wait_for_timeout(4000)
                shot(tab, "after-click")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
