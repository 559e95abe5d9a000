"""Review panels of flagged images: pure functions over arrays that return a PIL image.

A panel is three tiles side by side under a caption line:

    [ input | reconstruction | heat map + outline of the defect region ]
    score 0.0123 > threshold 0.0100   p = 0.020   defect area 3.1 %

The defect region is the set of pixels whose anomaly-map value exceeds the detector's pixel
threshold (a high quantile of the normal validation maps); its outline is drawn on the heat map.
Nothing here reads files or talks to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from pipeline.report.figures import heatmap_overlay

OUTLINE_RGB = (255, 0, 255)  # magenta: visible on the 'jet' heat map's blues, greens and reds
CAPTION_RGB = (255, 255, 255)
BACKGROUND_RGB = (24, 24, 24)


@dataclass(frozen=True)
class PanelText:
    """What the caption states; every number a reviewer needs to judge the flag."""

    sample_id: str
    score: float
    threshold: float
    p_value: float
    defect_area: float | None  # share of the image's pixels inside the defect region, None without a pixel threshold

    def lines(self) -> list[str]:
        area = "no pixel threshold" if self.defect_area is None else f"defect area {100 * self.defect_area:.1f} %"
        return [self.sample_id,
                f"score {self.score:.4g} > threshold {self.threshold:.4g}   p = {self.p_value:.3g}   {area}"]


def defect_region(anomaly_map: np.ndarray, pixel_threshold: float | None) -> np.ndarray:
    """(H, W) map -> (H, W) bool mask of the pixels above the pixel threshold (all False without one)."""
    if pixel_threshold is None:
        return np.zeros(anomaly_map.shape, dtype=bool)
    return np.asarray(anomaly_map, dtype=np.float32) > pixel_threshold


def defect_area(anomaly_map: np.ndarray, pixel_threshold: float | None) -> float | None:
    """Share of pixels in the defect region, in [0, 1]; None when the detector has no pixel threshold."""
    if pixel_threshold is None:
        return None
    return float(defect_region(anomaly_map, pixel_threshold).mean())


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool region -> (H, W) bool boundary: region pixels with a neighbour outside the region.

    Pixels on the image border count as boundary (erosion treats outside the image as background).
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~binary_erosion(mask, border_value=0)


def _tile(rgb: np.ndarray, size: int) -> Image.Image:
    """(H, W, 3) uint8 -> a size x size tile (nearest-neighbour, so pixels stay pixels when enlarged)."""
    return Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 with C in {1, 3} -> (H, W, 3) uint8."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay_with_outline(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, pixel_threshold: float | None,
                         size: int) -> Image.Image:
    """The heat map over the input at `size` x `size`, with the defect region's outline drawn at tile
    resolution (one tile pixel wide, however small the original image)."""
    heat = heatmap_overlay(image, anomaly_map, vmax).resize((size, size), Image.Resampling.NEAREST)
    region = Image.fromarray(defect_region(anomaly_map, pixel_threshold)).resize((size, size),
                                                                                  Image.Resampling.NEAREST)
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

    vmax: map value shown as the hottest colour (the same for every panel of a run, so colours compare).
    """
    if image.shape[:2] != anomaly_map.shape or reconstruction.shape != image.shape:
        raise ValueError(f"image {image.shape}, reconstruction {reconstruction.shape} and map {anomaly_map.shape} "
                         "must have the same height and width")
    font_size = max(10, tile_size // 14)
    caption_height = 2 * (font_size + 6) + 4
    labels_height = font_size + 8
    width, height = 3 * tile_size + 4 * 4, caption_height + labels_height + tile_size + 4
    panel = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(panel)
    font = _font(font_size)
    for i, line in enumerate(text.lines()):
        draw.text((6, 4 + i * (font_size + 6)), line, fill=CAPTION_RGB, font=font)
    tiles = [("input", _tile(_as_rgb(image), tile_size)),
             ("reconstruction", _tile(_as_rgb(reconstruction), tile_size)),
             ("anomaly map + defect outline", overlay_with_outline(image, anomaly_map, vmax, pixel_threshold,
                                                                    tile_size))]
    for i, (label, tile) in enumerate(tiles):
        x = 4 + i * (tile_size + 4)
        draw.text((x, caption_height + 2), label, fill=CAPTION_RGB, font=font)
        panel.paste(tile, (x, caption_height + labels_height))
    return panel
