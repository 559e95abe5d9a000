"""A review panel for one flagged image: the input beside its heat-map overlay, with the decision
written under them. Kept to one function (`review_panel`) so that the richer panel from
pipeline/review/ can replace it without touching the batch code.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.report.figures import heatmap_overlay

MIN_SIDE = 192  # panels of small images are enlarged (nearest neighbour) so the text and defect are legible


def review_panel(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, lines: list[str]) -> Image.Image:
    """image (H, W, C) uint8, map (H, W) -> RGB panel: [input | overlay] over a band of text lines."""
    overlay = heatmap_overlay(image, anomaly_map, vmax)
    base = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("RGB")
    scale = max(1, int(np.ceil(MIN_SIDE / max(1, min(base.size)))))
    if scale > 1:
        size = (base.width * scale, base.height * scale)
        base, overlay = base.resize(size, Image.Resampling.NEAREST), overlay.resize(size, Image.Resampling.NEAREST)
    line_height = 14
    panel = Image.new("RGB", (base.width * 2 + 4, base.height + 6 + line_height * len(lines)), "white")
    panel.paste(base, (0, 0))
    panel.paste(overlay, (base.width + 4, 0))
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(lines):
        draw.text((4, base.height + 3 + i * line_height), line, fill="black")
    return panel
