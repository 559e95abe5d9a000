"""Browser test: headless Debian chromium (driven by Playwright) opens the MLflow UI of the real server
from tests/served.py, goes to the scoring run and checks that the review set renders: the gallery of
thumbnails (flagged and audit images) and the review page (review/index.html) with every panel.

Without /usr/bin/chromium it skips with a reason, unless PIPELINE_REQUIRE_BROWSER=1 (`make e2e`,
.ci/run), where it fails: CI never goes green without having looked at the UI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.report.review_set import AUDIT, FLAGGED, RECORDS

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # a loaded 2-core machine renders the React app slowly


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Session-scoped so that it is checked before the (session-scoped, slow) served pipeline is built."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: run scripts/install-browser.sh (or `make e2e`)"
        if os.environ.get("PIPELINE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def browser_page(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our choosing.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def _rendered(page, selector: str, expected: int) -> list[int]:
    """Wait until `expected` images match and have loaded; returns their naturalWidth values."""
    page.wait_for_function(
        "([sel, n]) => { const imgs = [...document.querySelectorAll(sel)];"
        " return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=[selector, expected], timeout=TIMEOUT_MS)
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")


def test_mlflow_ui_shows_the_gallery_and_the_review_page(chromium, served, browser_page, tmp_path):
    client = MlflowClient(served["url"])
    run_id = served["score_newest"]["run_id"]
    run = client.get_run(run_id)
    records = json.loads((served["folder"] / "scored-newest" / RECORDS).read_text())
    n_flagged = sum(r["status"] == FLAGGED for r in records)
    n_audit = sum(r["status"] == AUDIT for r in records)
    assert n_flagged > 0 and run.data.metrics["n_flagged"] == n_flagged
    shots = Path(os.environ.get("E2E_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page = browser_page
    base = f"{served['url']}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    # The run page's Model metrics tab: one image card per reviewed image (log_image keys flagged/<rank>_<id>,
    # audit/<rank>_<id>).
    page.goto(f"{base}/model-metrics", timeout=TIMEOUT_MS)
    widths = _rendered(page, 'img[src*="flagged~"]', n_flagged)
    assert len(widths) == n_flagged and min(widths) > 0
    if n_audit:
        assert len(_rendered(page, 'img[src*="audit~"]', n_audit)) == n_audit
    page.screenshot(path=str(shots / "gallery.png"), full_page=True)

    # The Artifacts tab: the review page, self-contained (panels embedded), shown in an iframe.
    page.goto(f"{base}/artifacts/review/index.html", timeout=TIMEOUT_MS)
    frame = page.frame_locator("iframe").first
    frame.locator("img").nth(len(records) - 1).wait_for(timeout=TIMEOUT_MS)
    widths = frame.locator("img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == len(records) and min(widths) > 0
    first = frame.locator(".card").first.get_attribute("id")
    assert first == records[0]["key"]  # highest score first
    page.screenshot(path=str(shots / "review_page.png"), full_page=True)
    assert (shots / "gallery.png").stat().st_size > 10_000
