"""Review panels: pure functions over arrays that return PIL images. One renderer for scoring runs and
inspection batches.

A panel is three tiles side by side under a caption:

    #003 test_hole_004   FLAGGED
    score 4.21 by the anomaly map > threshold 2.87   p = 0.0033   defect area 3.1 %
    [ input | reconstruction | heat map + outline of the defect region ]

The defect region is the set of pixels whose map value exceeds the detector's pixel threshold (a high
quantile of the calibration images' maps); its outline is drawn on the heat map. A thumbnail (caption, input
and map in one flat row) is sized to fit an MLflow gallery card whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from pipeline.report.figures import heatmap_overlay
from pipeline.scoring.fusion import in_words
from pipeline.scoring.maps import defect_region

OUTLINE_RGB = (255, 0, 255)  # magenta: visible on the 'jet' heat map's blues, greens and reds
CAPTION_RGB = (255, 255, 255)
STATUS_RGB = {"FLAGGED": (255, 96, 96), "audit": (120, 200, 255), "not flagged": (170, 170, 170)}
GOOD_FLAGGED_RGB = (255, 176, 48)  # orange: a part labelled good that was flagged (a false alarm by the labels)
BACKGROUND_RGB = (24, 24, 24)


@dataclass(frozen=True)
class PanelText:
    """What the caption states; every number a reviewer needs to judge the decision."""

    rank: int                  # 1 = the highest score of the run
    sample_id: str
    status: str                # FLAGGED | not flagged | audit
    score: float
    threshold: float
    p_value: float
    defect_area: float | None  # share of the image's pixels inside the defect region, None without a pixel threshold
    truth: str | None = None   # where the data has labels: 'good' or the defect type; None without labels
    decided_by: str | None = None  # the fused component that set the score (scoring/fusion.py), None for another score

    @property
    def good_flagged(self) -> bool:
        """A part labelled good that was flagged: a false alarm by the labels."""
        return self.status == "FLAGGED" and self.truth == "good"

    def truth_note(self) -> str:
        if self.truth is None:
            return ""
        return "good part" if self.truth == "good" else f"defect: {self.truth}"

    def relation(self) -> str:
        relation = ">" if self.score > self.threshold else "<="
        limit = "inf (cannot flag)" if not math.isfinite(self.threshold) else f"{self.threshold:.4g}"
        by = f" by {in_words(self.decided_by)}" if self.decided_by else ""
        return f"score {self.score:.4g}{by} {relation} threshold {limit}"

    def lines(self) -> list[str]:
        area = "no pixel threshold" if self.defect_area is None else f"defect area {100 * self.defect_area:.1f} %"
        truth = f"   ({self.truth_note()})" if self.truth is not None else ""
        return [f"#{self.rank:03d} {self.sample_id}   {self.status}{truth}",
                f"{self.relation()}   p = {self.p_value:.3g}   {area}"]


def to_image(chw: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8."""
    return (np.clip(np.asarray(chw, dtype=np.float32).transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool region -> (H, W) bool boundary: region pixels with a neighbour outside the region.
    Pixels on the image border count as boundary (erosion treats outside the image as background)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~binary_erosion(mask, border_value=0)


def _tile(rgb: np.ndarray, size: int) -> Image.Image:
    """(H, W, 3) uint8 -> a size x size tile (nearest-neighbour, so pixels stay pixels when enlarged)."""
    return Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay_with_outline(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, pixel_threshold: float | None,
                         size: int) -> Image.Image:
    """The heat map over the input at size x size, with the defect region's outline drawn at tile resolution."""
    heat = heatmap_overlay(image, anomaly_map, vmax).resize((size, size), Image.Resampling.NEAREST)
    region = Image.fromarray(defect_region(anomaly_map, pixel_threshold)).resize((size, size), Image.Resampling.NEAREST)
    pixels = np.array(heat)  # (size, size, 3)
    pixels[outline(np.asarray(region))] = OUTLINE_RGB
    return Image.fromarray(pixels)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def render_panel(image: np.ndarray, reconstruction: np.ndarray, anomaly_map: np.ndarray, vmax: float,
                 pixel_threshold: float | None, text: PanelText, tile_size: int = 192) -> Image.Image:
    """image, reconstruction (H, W, C) uint8; anomaly_map (H, W) -> the RGB review panel.
    vmax: map value shown as the hottest colour (the same for every panel of a run, so colours compare)."""
    if image.shape[:2] != anomaly_map.shape or reconstruction.shape != image.shape:
        raise ValueError(f"image {image.shape}, reconstruction {reconstruction.shape} and map {anomaly_map.shape} "
                         "must have the same height and width")
    font_size = max(12, tile_size // 12)
    caption_height = 2 * (font_size + 6) + 4
    labels_height = font_size + 8
    width, height = 3 * tile_size + 4 * 4, caption_height + labels_height + tile_size + 4
    panel = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(panel)
    font = _font(font_size)
    first = GOOD_FLAGGED_RGB if text.good_flagged else STATUS_RGB.get(text.status, CAPTION_RGB)
    for i, line in enumerate(text.lines()):
        draw.text((6, 4 + i * (font_size + 6)), line, fill=first if i == 0 else CAPTION_RGB, font=font)
    tiles = [("input", _tile(_as_rgb(image), tile_size)),
             ("reconstruction", _tile(_as_rgb(reconstruction), tile_size)),
             ("map + defect outline", overlay_with_outline(image, anomaly_map, vmax, pixel_threshold, tile_size))]
    for i, (label, tile) in enumerate(tiles):
        x = 4 + i * (tile_size + 4)
        draw.text((x, caption_height + 2), label, fill=CAPTION_RGB, font=font)
        panel.paste(tile, (x, caption_height + labels_height))
    return panel


def _fitting_font(draw: ImageDraw.ImageDraw, lines: list[str], width: int, size: int):
    """The default font at `size`, or smaller until every line fits `width` pixels (not below 9)."""
    while True:
        font = _font(size)
        if size <= 9 or max(draw.textlength(line, font=font) for line in lines) <= width:
            return font, size
        size -= 1


def render_thumbnail(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, pixel_threshold: float | None,
                     text: PanelText, width: int = 256) -> Image.Image:
    """A card-sized view, flat: [caption | input | map + outline], the caption being rank, status, score against
    threshold and, with labels, the truth.

    Why flat: MLflow's gallery card centres the image in a square box as wide as the wider of the image and
    the run name above it (up to the card, 347 px at 1400 px) inside a 250 px high area, so an image stays
    whole only while box + image height <= about 440 px: 256 x 92 fits any run name (measured by tests/e2e/)."""
    gap = 4
    tile = round(width * 0.31)
    column = width - 2 * tile - 4 * gap  # the caption's width, left of the tiles
    limit = "inf" if not math.isfinite(text.threshold) else f"{text.threshold:.3g}"
    lines = [(f"#{text.rank:03d}", STATUS_RGB.get(text.status, CAPTION_RGB)),
             (text.status, STATUS_RGB.get(text.status, CAPTION_RGB)),
             (f"{text.score:.3g} {'>' if text.score > text.threshold else '<='} {limit}", CAPTION_RGB)]
    if text.truth is not None:
        lines.append((text.truth_note().removeprefix("defect: "),
                      GOOD_FLAGGED_RGB if text.good_flagged else CAPTION_RGB))
    thumb = Image.new("RGB", (width, tile + 2 * gap), BACKGROUND_RGB)
    draw = ImageDraw.Draw(thumb)
    font, size = _fitting_font(draw, [t for t, _ in lines], column, round(width / 17))
    for i, (line, colour) in enumerate(lines):
        draw.text((gap, gap + i * (size + 5)), line, fill=colour, font=font)
    thumb.paste(_tile(_as_rgb(image), tile), (column + 2 * gap, gap))
    thumb.paste(overlay_with_outline(image, anomaly_map, vmax, pixel_threshold, tile), (column + 3 * gap + tile, gap))
    return thumb
