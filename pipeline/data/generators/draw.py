"""Drawing primitives shared by the built-in dataset generators: random fields, blobs, curves, bumps,
lighting, warps, and the defect mask computed from the pixels a defect changed.

Images are float64 arrays (n, n) in [0, 1] intensity units until `to_u8`; coordinates are pixel centres
relative to the image centre (x to the right, y down). Nothing here knows about a category.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

# A pixel counts as altered by a defect if the noise-free rendering changed by more than this
# (in [0, 1] intensity units, ~1 grey level).
DIFF_THRESHOLD = 1.0 / 255.0


@dataclass(frozen=True)
class Place:
    """Where an image was cut from the production run, for a family whose good parts drift along it: the
    training parts come first, the test parts later on the run; each split spreads its images evenly over
    its own stretch of the run, in the order of their indices."""

    test: bool = False        # a test/* image (cut after every training part) rather than a train/good one
    position: float = 0.0     # 0 = the split's first image ... 1 = its last: index / (count - 1)


def image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """Independent stream per image: reproducible without rendering others."""
    key = [
        int(seed) % (2**32),
        zlib.crc32(category.encode()),
        zlib.crc32(split.encode()),
        int(index),
    ]
    return np.random.default_rng(key)


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (n, n), centred on the image centre."""
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    return xx - c, yy - c


def smooth_field(rng: np.random.Generator, n: int, sigma) -> np.ndarray:
    """Zero-mean, unit-std, spatially smooth random field (n, n); sigma may be (sy, sx) for anisotropy."""
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def blob_alpha(
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    area: float,
    rng: np.random.Generator,
    soft: float = 0.0,
    aspect: float = 1.0,
) -> np.ndarray:
    """Irregular blob with compact support (alpha == 0 outside), given area in px."""
    ang = rng.uniform(0, np.pi)
    dx, dy = x - cx, y - cy
    ca, sa = np.cos(ang), np.sin(ang)
    u = ca * dx + sa * dy
    v = (-sa * dx + ca * dy) * aspect
    r0 = np.sqrt(area / np.pi)
    theta = np.arctan2(v, u)
    rr = np.ones_like(theta)
    for k in range(2, 6):  # a few low harmonics make a natural, irregular outline
        rr += rng.uniform(0.0, 0.18) / np.sqrt(k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rr *= r0
    d = np.hypot(u, v)
    if soft > 0:
        t = np.clip((rr - d) / (soft * rr), 0.0, 1.0)
        return t * t * (3 - 2 * t)  # smoothstep: soft edge but still compact
    return np.clip(rr - d + 0.5, 0.0, 1.0)  # 1-px antialiased hard edge


def random_walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    turn_sigma: float,
    persistence: float,
) -> np.ndarray:
    """Polyline (k, 2) in (x, y); persistence pulls the heading back to the start heading."""
    k = max(2, int(length / step))
    pts = np.empty((k + 1, 2))
    pts[0] = start
    h, h0 = heading, heading
    for i in range(k):
        h = h0 + persistence * (h - h0) + rng.normal(0, turn_sigma)
        pts[i + 1] = pts[i] + step * np.array([np.cos(h), np.sin(h)])
    return pts


def curve_alpha(n: int, pts: np.ndarray, width: float, origin: float) -> np.ndarray:
    """Antialiased thin curve (n, n) through pts (k, 2) given in centred coordinates."""
    seg = np.diff(pts, axis=0)
    dense = [pts[:1]]
    for p, d in zip(pts[:-1], seg):
        m = max(1, int(np.ceil(np.hypot(*d) / 0.25)))
        t = np.arange(1, m + 1)[:, None] / m
        dense.append(p + t * d)
    q = np.concatenate(dense) + origin
    ix = np.round(q[:, 0]).astype(int)
    iy = np.round(q[:, 1]).astype(int)
    ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    free = np.ones((n, n), dtype=bool)
    free[iy[ok], ix[ok]] = False
    if free.all():
        return np.zeros((n, n))
    dist = ndimage.distance_transform_edt(free)
    return np.clip(width / 2.0 + 0.5 - dist, 0.0, 1.0)


def bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, ang: float) -> np.ndarray:
    """Compactly supported smooth bump (1 at centre, 0 outside the ellipse)."""
    dx, dy = x - cx, y - cy
    ca, sa = np.cos(ang), np.sin(ang)
    u = (ca * dx + sa * dy) / rx
    v = (-sa * dx + ca * dy) / ry
    return np.clip(1.0 - (u * u + v * v), 0.0, None) ** 2


def lighting(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int, grad: float, bright: float) -> np.ndarray:
    """Multiplicative illumination (n, n): global brightness times a linear gradient."""
    gx, gy = rng.uniform(-grad, grad, size=2)
    return rng.uniform(1 - bright, 1 + bright) * (1.0 + gx * x / n + gy * y / n)


def rotate(x: np.ndarray, y: np.ndarray, ang: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) of the points (x, y) in a frame rotated by `ang` radians."""
    ca, sa = np.cos(ang), np.sin(ang)
    return ca * x + sa * y, -sa * x + ca * y


def sample(field: np.ndarray, x: np.ndarray, y: np.ndarray, order: int = 3) -> np.ndarray:
    """Periodic spline lookup of `field` (m, m) at centred coordinates (x, y): a texture seen through a warp
    (cubic by default, so a warp moves the grain without blurring it)."""
    c = (field.shape[0] - 1) / 2.0
    return ndimage.map_coordinates(field, [y + c, x + c], order=order, mode="grid-wrap")


def mask_from_diff(clean: np.ndarray, defect: np.ndarray, support: Optional[np.ndarray] = None) -> np.ndarray:
    """Mask = pixels the defect altered (+ its explicit support), closed by <= 1 px."""
    m = np.abs(defect - clean) > DIFF_THRESHOLD
    if support is not None:
        m |= support > 0
    # closing only fills pixels within 1 px of altered ones (e.g. texture zero-crossings)
    m = ndimage.binary_closing(m, structure=np.ones((3, 3), bool), border_value=0) | m
    return m


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
