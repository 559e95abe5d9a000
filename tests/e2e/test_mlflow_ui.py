"""Browser test: headless Debian chromium (driven by Playwright) opens the MLflow UI of the real server
from tests/served.py, goes to the scoring run and checks that the flagged-sample panels render.

Without /usr/bin/chromium it skips with a reason, unless PIPELINE_REQUIRE_BROWSER=1 (`make e2e`,
.ci/run), where it fails: CI never goes green without having looked at the UI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

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


def test_mlflow_ui_shows_the_gallery_of_flagged_samples(chromium, served, browser_page, tmp_path):
    client = MlflowClient(served["url"])
    run_id = served["score_newest"]["run_id"]
    run = client.get_run(run_id)
    n_panels = int(run.data.tags["review.n_panels"])
    assert n_panels > 0
    shots = Path(os.environ.get("E2E_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page = browser_page
    base = f"{served['url']}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    # The run page's Model metrics tab: one image card per flagged sample (log_image keys flagged/<id>).
    page.goto(f"{base}/model-metrics", timeout=TIMEOUT_MS)
    widths = _rendered(page, 'img[src*="flagged~"]', n_panels)
    assert len(widths) == n_panels and min(widths) > 0
    page.screenshot(path=str(shots / "gallery.png"), full_page=True)

    # The Artifacts tab: the flagged-samples table with its panel column as thumbnails.
    page.goto(f"{base}/artifacts/review/flagged_samples.json", timeout=TIMEOUT_MS)
    widths = _rendered(page, 'img[src*="table_images"]', 1)
    assert min(widths) > 0
    page.get_by_text("review_status").first.wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(shots / "flagged_table.png"), full_page=True)
    assert (shots / "gallery.png").stat().st_size > 10_000
