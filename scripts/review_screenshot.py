"""Screenshot of a scoring run's review page in the MLflow UI, opened the way a reviewer opens it: headless
Debian chromium (Playwright) follows the link `score` printed (metrics.json `mlflow_run`, the "Model training"
view), opens the run's Artifacts tab and review/index.html. Writes the README's picture from the README's own run:

    make train && make score && make screenshot          # docs/img/review_page.png, of fabric
    .venv/bin/python scripts/review_screenshot.py --scored outputs/score/bracket --out /tmp/bracket.png

Uses the UI at the link's address when one answers there (`make ui` running), else starts `mlflow ui` over the
local store on that address for the time of the shot, as `make ui` does. Needs /usr/bin/chromium (`make browser`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def ui_at(base: str, store: Path, timeout: float = 300.0):
    """The MLflow UI at `base`: the one already there, or `mlflow ui` over `store` started for the block."""
    if answers(base):
        yield
        return
    parts = urlsplit(base)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
               "--host", parts.hostname or "127.0.0.1", "--port", str(parts.port or 5000)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not answers(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`{' '.join(command)}` did not answer on {base}")
            time.sleep(1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def shoot(link: str, out: Path, chromium: Path, timeout_ms: int = 120_000) -> None:
    """Open `link` (a run page), then Artifacts -> review -> index.html; a screenshot of the browser window.
    First the one click the README asks of a new browser: "Model training" in the side bar, which MLflow
    remembers (a link's workflowType holds for the page it opens; the run's tabs would fall back to GenAI)."""
    from playwright.sync_api import sync_playwright

    experiment = re.search(r"#/experiments/(\d+)/", link).group(1)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=FLAGS)
        # wide enough for a whole panel beside MLflow 3.17's Assistant side panel
        page = browser.new_page(viewport={"width": 1800, "height": 1100})
        page.set_default_timeout(timeout_ms)
        page.goto(link.split("#")[0] + f"#/experiments/{experiment}")  # the UI's own default: the GenAI view
        page.get_by_text("Model training", exact=True).first.click()
        page.wait_for_url(re.compile("workflowType=machine_learning"))
        page.goto(link)
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("review", exact=True).first.click()
        page.get_by_text("index.html", exact=True).first.click()
        frame = page.frame_locator("iframe").first
        frame.locator(".card img").first.wait_for()
        frame.locator(".card img").first.evaluate("img => img.decode()")
        # the first flagged panel (input | reconstruction | map) at the top, below the page's summary and table
        frame.locator(".card img").first.evaluate("img => img.closest('.card').scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scored", type=Path, default=ROOT / "outputs" / "score" / "fabric",
                        help="a score output folder (its metrics.json holds the link score printed)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "review_page.png")
    parser.add_argument("--store", type=Path, default=ROOT / "mlruns", help="the local store `make ui` serves")
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"))
    args = parser.parse_args(argv)
    metrics = json.loads((args.scored / "metrics.json").read_text())
    link = metrics.get("mlflow_run")
    if not link:
        print(f"error: {args.scored / 'metrics.json'} has no MLflow link: score with tracking on first", file=sys.stderr)
        return 1
    parts = urlsplit(link)
    with ui_at(f"{parts.scheme}://{parts.netloc}", args.store):
        shoot(link, args.out, args.chromium)
    print(f"{args.out} from {link}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
