"""The run page's image gallery (the *Model metrics* tab): one card per reviewed image, the card showing a
thumbnail made for it and a click on it opening the full review panel.

Why not `MlflowClient.log_image(panel, key=...)`: it writes the image (opened on click) and a copy shrunk to
256 px (shown on the card) that it makes itself, so a three-tile panel's caption ends up about 6 px high on
the card, and it has no parameter for a card image of our own. So we write the same two files it writes,
under the names its UI reads (mlflow/tracking/client.py `log_image`; the UI lists `images/` and parses them):

    images/<key, '/' as '~'>+step+0+timestamp+<ms>+<file key>.png                  the full panel (on click)
    images/<key, '/' as '~'>+step+0+timestamp+<ms>+<file key>+compressed.webp      the card's thumbnail

plus the run tag `mlflow.loggedImages` that tells the UI to look. The file key is the sample id where
log_image puts a UUID, so the names can be read. tests/e2e/ checks in a real browser that the UI shows them.

What the card does with the image (MLflow 3.17, measured in headless Chromium at 1400 x 1000): under the run
name it draws a square box as wide as the wider of the image (at most 256 px) and the run name, centres the
image in it, and clips what falls outside a 250 px high area of the card (263 px wide with the Assistant
panel open, 382 px with it closed). So an image stays whole only while the box fits the card's width and
box + image height <= about 440 px: the thumbnails are 256 x 87 (report/panels.py), and run names stay
under about 210 px (tracking/detection_run.py run_name).

MLflow, not us: a card per key sorted by key within a section named by the key's prefix (sections sorted by
name), a step slider on every card (disabled with one step), and the search box, which filters metric
charts but not image cards.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
from PIL import Image

IMAGES_DIR = "images"  # where MLflow's UI looks for logged images
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-./ ]+$")  # what log_image accepts as a key


def gallery_file_names(key: str, file_key: str, timestamp_ms: int) -> tuple[str, str]:
    """(full image name, card image name) under images/ for image `key` at step 0."""
    if not KEY_PATTERN.match(key) or not KEY_PATTERN.match(file_key) or "/" in file_key:
        raise ValueError(f"gallery key {key!r} / file key {file_key!r}: letters, digits, _ - . and space only")
    stem = f"{key.replace('/', '~')}+step+0+timestamp+{timestamp_ms}+{file_key}"
    return f"{stem}.png", f"{stem}+compressed.webp"


def write_gallery_card(key: str, file_key: str, panel: Path, thumbnail: Path, folder: Path) -> None:
    """The two files of one gallery card into `folder`, which is then logged as the run's images/ in one call
    (one artifact upload per card made scoring 150 flagged images take seconds): `thumbnail` on the card,
    `panel` (a PNG) one click away."""
    full_name, card_name = gallery_file_names(key, file_key, int(time.time() * 1000))
    shutil.copyfile(panel, folder / full_name)
    with Image.open(thumbnail) as card:
        # WebP, as log_image writes it; the fastest lossless effort: 1.6 instead of 43 ms a card, 25 % larger
        card.convert("RGB").save(folder / card_name, format="WEBP", lossless=True, method=0)


def mark_run_has_images(client, run_id: str) -> None:
    client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, "true")
