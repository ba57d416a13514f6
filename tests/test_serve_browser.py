"""``ddpm serve`` in a real browser: headless Debian chromium driven by playwright (its own browser download
cannot work here, so ``executable_path`` points at ``chromium``) against the page of a tiny trained run on
127.0.0.1. Skips with the reason where chromium, playwright or gradio is absent."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(serve_page):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(30_000)
        pg.goto(serve_page[1])
        pg.wait_for_selector("#sample-button")
        yield pg
        browser.close()


# Records every text the sample status takes, so updates that come and go between polls are seen.
WATCH_STATUS = """() => {
  window.__statuses = [];
  const el = document.querySelector('#sample-status');
  new MutationObserver(() => window.__statuses.push(el.innerText.trim()))
    .observe(el, {subtree: true, childList: true, characterData: true});
}"""


def _set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(value)
    box.press("Enter")


def test_sample_shows_progress_then_an_image(page):
    page.get_by_role("tab", name="Sample").click()
    page.evaluate(WATCH_STATUS)
    _set_number(page, "sample-steps", "60")
    page.click("#sample-button")
    page.wait_for_function("() => document.querySelector('#sample-status').innerText.includes('done')")
    statuses = page.evaluate("window.__statuses")
    assert any(s.startswith("evaluation ") for s in statuses), statuses  # progress arrived before the end
    assert statuses.index(next(s for s in statuses if s.startswith("evaluation "))) < len(statuses) - 1
    img = page.locator("#sample-grid img")
    assert img.count() == 1 and img.evaluate("el => el.naturalWidth") > 0


def test_a_bad_value_shows_an_error_and_the_next_request_works(page):
    page.get_by_role("tab", name="Sample").click()
    _set_number(page, "sample-seed", str(2**62))  # past the server's limit: refused by the handler
    page.click("#sample-button")
    error = page.get_by_text("seed must be between", exact=False).first
    error.wait_for()
    assert error.is_visible()
    _set_number(page, "sample-seed", "3")
    page.click("#sample-button")
    page.wait_for_function("() => document.querySelector('#sample-status').innerText.includes('done')")


def test_dashboard_shows_the_runs_curve(page):
    page.get_by_role("tab", name="Run dashboard").click()
    page.wait_for_selector("#dashboard-curves img")
    assert page.locator("#dashboard-curves img").evaluate("el => el.naturalWidth") > 100
    assert "step 6" in page.locator("#dashboard-summary").inner_text()
    page.wait_for_selector("#dashboard-grid img")
