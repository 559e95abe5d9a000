"""A DEV-only stochastic texture, `granite`, for choosing what helps on random natural textures without touching the
report-only families (sand, mesh, film are never looked at while choosing). Not a product family: it is written by
this study script only, in the MVTec layout, under a folder of the caller's choosing.

Good parts: grains of random brightness and size on multi-scale mottling; grain size and density vary by up to
10 % between parts, with brightness, contrast, a lighting gradient and sensor noise. Defects (0.3-4 % of the image,
contrast a person sees at the generated size): crack (thin dark curve), smudge (soft brightness shift), coarse
(larger grains in a region), smooth (grains missing in a region), inclusion (a cluster of large particles).

    python scripts/studies/dev_texture.py /tmp/dev/granite [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.data.generators import draw

DEFECTS = ("crack", "smudge", "coarse", "smooth", "inclusion")


def grains(rng: np.random.Generator, n: int, size: float, density: float) -> np.ndarray:
    """Zero-mean grain field: random-signed dots blurred to grains of about `size` px."""
    count = rng.poisson(density * n * n / (size * size))
    field = np.zeros((n, n))
    ys, xs = rng.integers(0, n, count), rng.integers(0, n, count)
    np.add.at(field, (ys, xs), rng.normal(0.0, 1.0, count))
    field = ndimage.gaussian_filter(field, size / 2.0, mode="wrap")
    return field / (field.std() + 1e-12)


def render(rng: np.random.Generator, n: int, defect: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    s = n / 128.0
    x, y = draw.grid(n)
    size = 2.2 * s * rng.uniform(0.9, 1.1)
    density = 0.9 * rng.uniform(0.9, 1.1)
    level = rng.uniform(0.45, 0.55)
    contrast = 0.09 * rng.uniform(0.9, 1.1)
    mottle = 0.03 * draw.smooth_field(rng, n, 8 * s) + 0.02 * draw.smooth_field(rng, n, 3 * s)
    light = draw.lighting(rng, x, y, n, grad=0.2, bright=0.08)
    noise = 0.01 * rng.standard_normal((n, n))
    grain = grains(rng, n, size, density)
    texture_scale = np.ones((n, n))
    extra = np.zeros((n, n))
    alt_grain = None
    support = None
    if defect is not None:
        cx, cy = rng.uniform(-0.32 * n, 0.32 * n, size=2)
        area = n * n * draw.log_uniform(rng, 0.005, 0.04)
        if defect == "crack":
            pts = draw.random_walk(rng, (cx, cy), rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.5) * n, 1.5 * s,
                                   0.25, 0.7)
            alpha = draw.curve_alpha(n, pts, rng.uniform(2.0, 3.0) * s, (n - 1) / 2.0)
            extra -= rng.uniform(0.25, 0.35) * alpha
        elif defect == "smudge":
            extra += rng.choice([-1, 1]) * rng.uniform(0.12, 0.2) * draw.blob_alpha(x, y, cx, cy, area, rng,
                                                                                      soft=0.5)
        elif defect == "coarse":
            alpha = draw.blob_alpha(x, y, cx, cy, area, rng, soft=0.3)
            alt_grain = (alpha, grains(rng, n, size * rng.uniform(3.0, 4.0), density))
        elif defect == "smooth":
            texture_scale -= rng.uniform(0.85, 1.0) * draw.blob_alpha(x, y, cx, cy, area, rng, soft=0.3)
        elif defect == "inclusion":
            for _ in range(rng.integers(3, 7)):
                px, py = cx + rng.normal(0, 4 * s), cy + rng.normal(0, 4 * s)
                extra += rng.choice([-1, 1]) * rng.uniform(0.3, 0.4) * draw.blob_alpha(
                    x, y, px, py, rng.uniform(10, 25) * s * s, rng)
        else:
            raise ValueError(defect)
    clean = level + contrast * grain + mottle
    texture = grain if alt_grain is None else grain * (1 - alt_grain[0]) + alt_grain[1] * alt_grain[0]
    img = level + contrast * texture * texture_scale + mottle + extra
    mask = None
    if defect is not None:
        mask = draw.mask_from_diff(clean * light, img * light, support)
    return draw.to_u8(img * light + noise), mask


def write(root: Path, seed: int, n: int = 128, n_train: int = 1000, n_test_good: int = 400,
          n_defect: int = 30) -> Path:
    final = root / "granite"
    if final.exists():
        return final
    partial = root / "granite.partial"
    shutil.rmtree(partial, ignore_errors=True)
    jobs = [("train/good", n_train), ("test/good", n_test_good)] + [(f"test/{d}", n_defect) for d in DEFECTS]
    for split, count in jobs:
        (partial / split).mkdir(parents=True, exist_ok=True)
        kind = split.split("/")[-1]
        if kind != "good":
            (partial / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, mask = render(draw.image_rng(seed, "granite", split, i), n, None if kind == "good" else kind)
            Image.fromarray(img).save(partial / split / f"{i:03d}.png")
            if mask is not None:
                Image.fromarray(mask.astype(np.uint8) * 255).save(partial / "ground_truth" / kind / f"{i:03d}_mask.png")
    os.rename(partial, final)
    return final


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(write(args.root, args.seed))
