"""Browser test: headless Debian chromium (driven by Playwright, 1400 x 1000) opens the MLflow UI of the real
server from tests/served.py and checks what a reviewer sees, on a scoring run and on an inspection batch:

- the gallery (Model metrics tab): one card per flagged image, keyed flagged/<rank>_<id>, in score order, each
  card's panel whole inside its card;
- the review page (review/index.html in the Artifacts tab) with every reviewed panel, highest score first;
- the Description names the model version, the alias it had when used and the training run;
- a verdict added as a tag `verdict.<sample id>` with the run page's tag editor is read by `pipeline review`;
- a batch whose threshold cannot fire (infinite) is marked unable to flag (run name, detection.status, page);
- the link `score` printed opens the scoring experiment in MLflow's "Model training" view (a fresh browser, which
  would otherwise open the GenAI view), where the reviewer finds the run and its review page.

Screenshots go to E2E_SCREENSHOT_DIR (`make e2e`: outputs/e2e/), else to the test's tmp folder.
Without /usr/bin/chromium it skips with a reason, unless PIPELINE_REQUIRE_BROWSER=1 (`make e2e`, CI), where
it fails: CI never goes green without having looked at the UI.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.report.review_set import FLAGGED, RECORDS
from tests.inspection_helpers import add_dark, add_parts
from tests.served import cli

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = int(os.environ.get("E2E_TIMEOUT_MS", 60_000))  # a loaded 2-core machine renders the React app slowly
NAME = "tiny-vae"
EXPERIMENT = "e2e-inspection"  # this test's batches only: the registry tests look for the newest flagged run
CARD = '[data-testid="experiment-view-compare-runs-card"]'
WORKFLOW = "workflowType=machine_learning"  # MLflow's "Model training" view (pipeline/tracking/links.py)


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
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("E2E_SCREENSHOT_DIR", tmp_path / "shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _inspect(served, folder: Path, n_normal: int, *extra: str) -> dict:
    """One inspection batch on the served champion (normal parts and an all-black image); its one batch's run."""
    inbox = folder / "inbox"
    add_parts(inbox, [f"part_{i}.png" for i in range(n_normal)], seed=7)
    add_dark(inbox, "dark.png")
    summary = cli("inspect", *served["overrides"](f"inspect.inbox={inbox}", f"inspect.output_dir={folder / 'out'}",
                                                  "inspect.min_age_seconds=0", f"inspect.experiment={EXPERIMENT}", *extra))
    assert len(summary["batches"]) == 1 and summary["mlflow_pending_batches"] == 0
    client = MlflowClient(served["url"])
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    batch = summary["batches"][0]["batch_id"]
    [run] = client.search_runs([experiment], filter_string=f"tags.batch_id = '{batch}'")
    return {"summary": summary, "run": run}


def _records(client: MlflowClient, run_id: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, RECORDS, tmp)).read_text())


def _run_page(served, run) -> str:
    return f"{served['url']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def check_gallery(page, base: str, records: list[dict], shot: Path) -> None:
    """Model metrics: one card per flagged image, in score order, the panel whole inside its card."""
    flagged = [r["key"] for r in sorted(records, key=lambda r: r["rank"]) if r["status"] == FLAGGED]
    assert flagged, "nothing flagged: no gallery to look at"
    # the UI renders only the cards near the screen: a window tall enough for every row of three cards
    page.set_viewport_size({"width": 1400, "height": max(1000, 400 + 350 * -(-len(flagged) // 3))})
    page.goto(f"{base}/model-metrics")
    # A card is keyed by its title (flagged/<rank>_<id>): MLflow 3.18 loads the images as blob: URLs, so the src
    # no longer names the artifact.
    page.wait_for_function("""([cardSelector, n]) => {
        const cards = [...document.querySelectorAll(cardSelector)].filter(c => c.innerText.startsWith('flagged/'));
        return cards.length >= n && cards.every(c => {
            const img = c.querySelector('img'); return img && img.complete && img.naturalWidth > 0; }); }""",
        arg=[CARD, len(flagged)])
    cards = page.eval_on_selector_all(CARD, """cards => cards.filter(c => c.innerText.startsWith('flagged/')).map(card => {
        const box = r => { const b = r.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
        const img = card.querySelector('img');
        // the card and every element between it and the image that clips what overflows it
        const clips = [];
        for (let e = img.parentElement; e && card.contains(e); e = e.parentElement) {
            const s = getComputedStyle(e);
            if (e === card || s.overflow !== 'visible' || s.overflowX !== 'visible' || s.overflowY !== 'visible')
                clips.push(box(e));
        }
        return {img: box(img), card: box(card), clips, title: card.innerText.split('\\n')[0]};
    })""")
    keys = [c["title"].removeprefix("flagged/") for c in cards]
    assert keys == flagged, "one card per flagged image, in score order (keys sort by rank)"
    assert keys == sorted(keys)
    for key, card in zip(keys, cards):
        left, top, right, bottom = card["img"]
        assert right - left > 100 and bottom - top > 30, f"{key}: panel drawn {card['img']}"
        for clip in card["clips"]:
            assert (left >= clip[0] - 0.5 and top >= clip[1] - 0.5 and right <= clip[2] + 0.5
                    and bottom <= clip[3] + 0.5), f"{key}: panel {card['img']} not inside its card's box {clip}"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def check_review_page(page, base: str, records: list[dict], shot: Path) -> None:
    """Artifacts tab, review/index.html (self-contained, in an iframe): every reviewed panel, by rank."""
    page.goto(f"{base}/artifacts/review/index.html")
    frame = page.frame_locator("iframe").first
    frame.locator(".card img").nth(len(records) - 1).wait_for()
    frame.locator(".card img").first.evaluate("img => img.decode()")
    widths = frame.locator(".card img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == len(records) and min(widths) > 0
    ids = frame.locator(".card").evaluate_all("cards => cards.map(c => c.id)")
    assert ids == [r["key"] for r in sorted(records, key=lambda r: r["rank"])]  # highest score first
    flagged = {r["key"] for r in records if r["status"] == FLAGGED}
    assert flagged <= set(ids)
    page.screenshot(path=str(shot), full_page=True)


def check_description(page, base: str, run, alias: str, training_run: str, shot: Path) -> None:
    """Overview: the Description names the model version (linked), the alias when used and the training run."""
    note = run.data.tags["mlflow.note.content"]
    assert f"[{NAME} version 2](#/models/{NAME}/versions/2?{WORKFLOW})" in note
    assert f"alias when used: **{alias}**" in note and f"training run {training_run}" in note
    page.goto(base)
    version = page.locator(f'a[href$="#/models/{NAME}/versions/2?{WORKFLOW}"]').first
    version.wait_for()
    assert version.inner_text() == f"{NAME} version 2"
    trained = page.locator(f'a[href$="/runs/{training_run}?{WORKFLOW}"]').first
    assert trained.inner_text() == f"training run {training_run}"
    assert "alias when used: " + alias in page.locator("body").inner_text()
    page.screenshot(path=str(shot), full_page=True)


def add_tag_in_ui(page, base: str, key: str, value: str) -> None:
    """The run page's Tags: the edit button, key and value, add, save."""
    page.goto(base)
    page.get_by_role("button", name="Edit tags").click()
    dialog = page.get_by_role("dialog")
    key_box = dialog.locator("input[type=search]")
    key_box.click()
    key_box.fill(key)
    page.keyboard.press("Enter")
    dialog.get_by_label("Value").fill(value)
    dialog.get_by_role("button", name="Add tag").click()
    dialog.get_by_text(key).wait_for()
    dialog.get_by_role("button", name="Save tags").click()
    dialog.wait_for(state="hidden")
    page.get_by_text(key).first.wait_for()  # the run page shows the new tag


def test_scoring_run_in_the_ui(served, browser_page, shots):
    client = MlflowClient(served["url"])
    run = client.get_run(served["score_newest"]["run_id"])
    records = _records(client, run.info.run_id)
    assert run.data.metrics["n_flagged"] == sum(r["status"] == FLAGGED for r in records) > 0
    base = _run_page(served, run)
    check_gallery(browser_page, base, records, shots / "score_gallery.png")
    check_review_page(browser_page, base, records, shots / "score_review_page.png")
    # `score` took the newest version, 2, which had no alias yet then
    check_description(browser_page, base, run, "none", served["train"][1]["run_id"], shots / "score_overview.png")


def test_inspection_batch_in_the_ui_and_a_verdict_set_there(served, browser_page, shots, tmp_path):
    batch = _inspect(served, tmp_path / "ok", 3)
    client = MlflowClient(served["url"])
    run = batch["run"]
    assert run.data.tags["stage"] == "inspect" and run.data.tags["detection.status"] == "ok"
    records = _records(client, run.info.run_id)
    flagged = [r for r in records if r["status"] == FLAGGED]
    assert flagged and run.data.metrics["n_flagged"] == len(flagged)
    assert any(r["sample_id"] == "dark" for r in flagged)  # the black image, far from every normal part
    base = _run_page(served, run)
    check_gallery(browser_page, base, records, shots / "inspect_gallery.png")
    check_review_page(browser_page, base, records, shots / "inspect_review_page.png")
    # inspect judges with the champion: version 2 since `promote 2`
    check_description(browser_page, base, run, "champion", served["train"][1]["run_id"],
                      shots / "inspect_overview.png")

    # A reviewer records a verdict in the UI; `pipeline review` reads the tag and counts it.
    add_tag_in_ui(browser_page, base, "verdict.dark", "true_defect")
    browser_page.screenshot(path=str(shots / "inspect_verdict_tag.png"), full_page=True)
    assert client.get_run(run.info.run_id).data.tags["verdict.dark"] == "true_defect"
    result = cli("review", run.info.run_id, *served["overrides"]("review.interactive=false"))
    assert (result["run_id"], result["recorded"]) == (run.info.run_id, 0)
    assert result["n_true_defect"] == 1 and result["n_pending"] == len(records) - 1 and result["status"] == "partial"
    tags = client.get_run(run.info.run_id).data.tags
    assert (tags["review.n_true_defect"], tags["review.status"]) == ("1", "partial")


def test_a_batch_that_cannot_flag_is_marked_so_in_the_ui(served, browser_page, shots, tmp_path):
    # 7 calibration images cannot support alpha=0.05: the threshold is +inf, judged only when allowed
    batch = _inspect(served, tmp_path / "unable", 2, "score.alpha=0.05", "score.allow_unable_to_flag=true")
    run = batch["run"]
    assert batch["summary"]["n_flagged"] == 0
    assert run.info.run_name.startswith("[UNABLE_TO_FLAG] ")
    assert (run.data.tags["detection.status"], run.data.tags["review.status"]) == ("unable_to_flag", "blocked")
    assert run.data.tags["decision.threshold"] == "inf"
    page = browser_page
    page.goto(_run_page(served, run))
    page.get_by_text(run.info.run_name).first.wait_for()
    page.get_by_text("UNABLE TO FLAG").first.wait_for()  # the Description's title
    assert "unable_to_flag" in page.locator("body").inner_text()  # the detection.status tag
    page.screenshot(path=str(shots / "unable_to_flag_overview.png"), full_page=True)


def test_the_link_score_printed_opens_the_model_training_view_and_the_review(served, browser_page, shots):
    scored = served["score_newest"]
    link = scored["mlflow_experiment"]  # what `score` printed, as a reviewer would copy it
    assert link.startswith(f"{served['url']}/#/experiments/") and link.endswith(f"?{WORKFLOW}")
    page = browser_page  # a fresh profile: the UI's own default would be the GenAI view (#/experiments/<id>/overview)
    page.goto(link)
    page.wait_for_url(re.compile(rf"#/experiments/\d+/runs\?(.*&)?{WORKFLOW}"))  # the run list of Model training
    page.get_by_role("link", name="Model registry").first.wait_for()  # the side bar of Model training, not GenAI's
    assert page.get_by_text("Evaluation runs", exact=True).count() == 0
    page.screenshot(path=str(shots / "printed_link_runs.png"))
    run_id = scored["run_id"]
    page.locator(f'a[href*="/runs/{run_id}"]').first.click()  # the run, in the run list
    page.wait_for_url(re.compile(f"/runs/{run_id}"))
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("review", exact=True).first.click()
    page.get_by_text("index.html", exact=True).first.click()
    frame = page.frame_locator("iframe").first
    frame.locator(".card img").first.wait_for()
    records = _records(MlflowClient(served["url"]), run_id)
    assert frame.locator(".card").count() == len(records)
    assert frame.locator(f'a[href="{scored["mlflow_run"]}"]').count() == 1  # the page links back to its run
    page.screenshot(path=str(shots / "printed_link_review_page.png"))
