"""`bracket`: a bright machined metal plate with two holes, a slot and a printed code, on a dark
background (one of the product's own categories).

Good parts vary in position (a few px), rotation (a few degrees), light direction, lighting gradient,
brightness, brushed surface grain and sensor noise. The part is described by a signed distance field
(negative inside the metal) in part coordinates; shading turns a distance field and an ink coverage into
an image with a chamfer rim and a soft cast shadow.

Defects (DEFECTS): scratch, crack, chip, contamination, bent, misprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from pipeline.data.generators import draw

# printed product code: bar positions/heights are fixed for the product
CODE_X = (-12.0, -7.0, -2.5, 2.5, 7.0, 12.0)
CODE_H = (4.0, 2.5, 4.0, 3.0, 4.0, 2.5)


def sd_round_box(x, y, cx, cy, hx, hy, r):
    """Signed distance to a rounded box centred at (cx, cy) with half sizes (hx, hy) and corner radius r."""
    qx = np.abs(x - cx) - hx + r
    qy = np.abs(y - cy) - hy + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def sd_circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


@dataclass
class Bracket:
    """One good part: pose, light, material and the nuisance fields, all (n, n) or scalars."""

    n: int
    s: float                  # scale relative to 128 px
    x: np.ndarray
    y: np.ndarray
    ct: float                 # cos / sin of the part's rotation
    st: float
    tx: float                 # translation (px)
    ty: float
    lx: float                 # light direction
    ly: float
    metal: float
    bg: np.ndarray
    light: np.ndarray
    brushed: np.ndarray
    grain: np.ndarray
    noise: np.ndarray
    px0: np.ndarray           # part coordinates of every pixel (inverse rigid transform)
    py0: np.ndarray


def good_part(rng: np.random.Generator, n: int) -> Bracket:
    s = n / 128.0
    x, y = draw.grid(n)
    theta = np.deg2rad(rng.uniform(-2.5, 2.5))
    tx, ty = rng.uniform(-2.5, 2.5, size=2) * s
    light_ang = np.deg2rad(225 + rng.uniform(-25, 25))  # light from upper left
    metal = rng.uniform(0.58, 0.66)
    bg = rng.uniform(0.26, 0.32) * (1 + 0.08 * draw.smooth_field(rng, n, 20 * s))
    light = draw.lighting(rng, x, y, n, grad=0.25, bright=0.10)
    brushed = draw.smooth_field(rng, n, (0.6 * s, 6.0 * s))  # brushing marks along x
    grain = rng.standard_normal((n, n))
    noise = 0.012 * rng.standard_normal((n, n))
    ct, st = np.cos(theta), np.sin(theta)
    px0 = ct * (x - tx) + st * (y - ty)
    py0 = -st * (x - tx) + ct * (y - ty)
    return Bracket(n, s, x, y, ct, st, tx, ty, np.cos(light_ang), np.sin(light_ang), metal, bg, light, brushed,
                   grain, noise, px0, py0)


def part_sdf(b: Bracket, px, py, chip=None):
    """Signed distance of the plate with its holes and slot (and an optional chipped-off region)."""
    s = b.s
    d = sd_round_box(px, py, 0, 0, 48 * s, 32 * s, 9 * s)
    d = np.maximum(d, -sd_circle(px, py, -32 * s, 6 * s, 7.5 * s))
    d = np.maximum(d, -sd_circle(px, py, 32 * s, 6 * s, 7.5 * s))
    d = np.maximum(d, -sd_round_box(px, py, 0, 14 * s, 11 * s, 4 * s, 4 * s))
    if chip is not None:
        d = np.maximum(d, -chip)
    return d


def code(b: Bracket, dx=0.0, dy=0.0, keep=None):
    """Ink coverage (n, n) of the printed bars, optionally shifted by (dx, dy) or with bars left out."""
    s = b.s
    ink = np.zeros_like(b.px0)
    for i, (bx, bh) in enumerate(zip(CODE_X, CODE_H)):
        if keep is not None and not keep[i]:
            continue
        d = sd_round_box(b.px0, b.py0, (bx + dx) * s, (-17 + dy + 4 - bh) * s, 1.3 * s, bh * s, 0.5 * s)
        ink = np.maximum(ink, np.clip(0.5 - d, 0, 1))
    return ink


def _shadow_edge(b: Bracket, d):
    # shadow = blurred, shifted silhouette; computed from the same sdf image
    sil = np.clip(0.5 - d, 0, 1)
    shift = (2.0 * b.s, 2.0 * b.s)
    return 0.5 - ndimage.gaussian_filter(ndimage.shift(sil, shift, order=1), 2.0 * b.s)


def shade(b: Bracket, d, ink, extra=0.0):
    """Noise-free, unlit image of the part with distance field d and ink coverage ink."""
    s = b.s
    cov = np.clip(0.5 - d / (2.0 * s), 0.0, 1.0)  # chamfered edge: ~2 px ramp
    gy_, gx_ = np.gradient(d)
    nrm = np.hypot(gx_, gy_) + 1e-9
    facing = -(gx_ * b.lx + gy_ * b.ly) / nrm  # chamfer brightness depends on light dir
    rim = np.exp(-np.maximum(-d, 0) / (1.5 * s)) * (0.10 + 0.12 * facing)
    surf = b.metal * (1 + 0.045 * b.brushed + 0.03 * b.grain) * (1 - 0.5 * ink) + extra
    # soft cast shadow of the part on the background
    shadow = 0.35 * np.clip(0.5 - _shadow_edge(b, d), 0, 1)
    back = b.bg * (1 - shadow) * (1 + 0.05 * b.grain)
    return cov * (surf + rim) + (1 - cov) * back


def pick_on_part(rng, b: Bracket, d0):
    """A random pixel (centred coordinates) well inside the metal."""
    inside = np.argwhere(d0 < -4 * b.s)
    iy, ix = inside[rng.integers(len(inside))]
    return ix - (b.n - 1) / 2.0, iy - (b.n - 1) / 2.0


def to_img(b: Bracket, px, py):
    """Part coordinates -> centred image coordinates."""
    return b.ct * px - b.st * py + b.tx, b.st * px + b.ct * py + b.ty


def boundary_point(rng, s: float):
    """A random point on the outer outline or a hole rim (part coordinates), with its outward normal."""
    kind = rng.integers(3)
    if kind == 0:
        t = rng.uniform(-1, 1)
        side = rng.integers(4)
        p, nrm = [((t * 38 * s, 32 * s), (0, 1)), ((t * 38 * s, -32 * s), (0, -1)),
                  ((48 * s, t * 22 * s), (1, 0)), ((-48 * s, t * 22 * s), (-1, 0))][side]
    else:
        hx = -32 * s if kind == 1 else 32 * s
        a = rng.uniform(0, 2 * np.pi)
        p = (hx + 7.5 * s * np.cos(a), 6 * s + 7.5 * s * np.sin(a))
        nrm = (-np.cos(a), -np.sin(a))  # "outward" = into the hole
    return np.array(p, float), np.array(nrm, float)


# Each defect: (rng, part, distance field d0, ink0, area px) -> (defective image, explicit support or None).
def scratch(rng, b: Bracket, d0, ink0, area):
    cx, cy = pick_on_part(rng, b, d0)
    length = rng.uniform(20, 60) * b.s
    pts = draw.random_walk(rng, (cx, cy), rng.uniform(0, 2 * np.pi), length, 2.0 * b.s, 0.03, 0.9)
    a = draw.curve_alpha(b.n, pts, rng.uniform(1.0, 1.8) * b.s, (b.n - 1) / 2.0)
    a = a * np.clip(-d0, 0, 1)  # a scratch only marks the metal
    k = rng.uniform(0.20, 0.35) * rng.choice([-1.0, 1.0])
    return shade(b, d0, ink0, extra=k * b.metal * a), a


def crack(rng, b: Bracket, d0, ink0, area):
    p, nrm = boundary_point(rng, b.s)
    length = rng.uniform(12, 35) * b.s
    head = np.arctan2(-nrm[1], -nrm[0])  # grow into the material
    pts_part = draw.random_walk(rng, tuple(p), head, length, 1.5 * b.s, 0.55, 0.6)
    ix, iy = to_img(b, pts_part[:, 0], pts_part[:, 1])
    a = draw.curve_alpha(b.n, np.stack([ix, iy], 1), rng.uniform(1.2, 2.0) * b.s, (b.n - 1) / 2.0)
    a = a * np.clip(0.5 - d0, 0, 1)
    k = -rng.uniform(0.35, 0.60)
    return shade(b, d0, ink0, extra=k * b.metal * a), a


def chip(rng, b: Bracket, d0, ink0, area):
    """Missing material at an edge: the background shows through."""
    p, nrm = boundary_point(rng, b.s)
    r = np.sqrt(area * 0.5 / np.pi) * rng.uniform(0.8, 1.2)
    c = p + nrm * r * rng.uniform(0.1, 0.5)
    ang = np.arctan2(b.py0 - c[1], b.px0 - c[0])
    rr = r * (1 + 0.15 * np.cos(3 * ang + rng.uniform(0, 6.3)) + 0.1 * np.cos(5 * ang + rng.uniform(0, 6.3)))
    hollow = np.hypot(b.px0 - c[0], b.py0 - c[1]) - rr
    return shade(b, part_sdf(b, b.px0, b.py0, chip=hollow), ink0), None


def contamination(rng, b: Bracket, d0, ink0, area):
    cx, cy = pick_on_part(rng, b, d0)
    a = draw.blob_alpha(b.x, b.y, cx, cy, area, rng, soft=0.4, aspect=rng.uniform(1, 2))
    k = rng.uniform(0.20, 0.35) * rng.choice([-1.0, -1.0, 1.0])
    return shade(b, d0, ink0, extra=k * b.metal * a * np.clip(-d0, 0, 1)), a * np.clip(0.5 - d0, 0, 1)


def bent(rng, b: Bracket, d0, ink0, area):
    """Dent or bend of an edge: a local warp of the outline."""
    p, nrm = boundary_point(rng, b.s)
    radius = np.sqrt(area) * rng.uniform(0.8, 1.3)
    amp = rng.uniform(2.0, 4.0) * b.s * rng.choice([-1.0, 1.0])
    w = draw.bump(b.px0, b.py0, p[0], p[1], radius, radius, 0.0)
    return shade(b, part_sdf(b, b.px0 + amp * nrm[0] * w, b.py0 + amp * nrm[1] * w), ink0), None


def misprint(rng, b: Bracket, d0, ink0, area):
    """Bars missing, the whole code shifted, or an ink smear over part of it."""
    mode = rng.integers(3)
    if mode == 0:
        keep = np.ones(len(CODE_X), bool)
        keep[rng.choice(len(CODE_X), size=rng.integers(1, 4), replace=False)] = False
        ink1 = code(b, keep=keep)
    elif mode == 1:
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(2.5, 5.0)
        ink1 = code(b, dx=dist * np.cos(ang), dy=dist * np.sin(ang))
    else:
        cx, cy = to_img(b, rng.uniform(-12, 12) * b.s, -17 * b.s)
        a = draw.blob_alpha(b.x, b.y, cx, cy, rng.uniform(40, 120) * b.s * b.s, rng, soft=0.3,
                            aspect=rng.uniform(1, 2.5))
        ink1 = np.maximum(ink0, 0.8 * a)
    return shade(b, d0, ink1), None


DEFECTS = {"scratch": scratch, "crack": crack, "chip": chip, "contamination": contamination, "bent": bent,
           "misprint": misprint}


def render(rng: np.random.Generator, n: int, defect: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One image (n, n) uint8 and its bool mask (None for a good part)."""
    b = good_part(rng, n)
    d0 = part_sdf(b, b.px0, b.py0)
    ink0 = code(b)
    clean = shade(b, d0, ink0)
    img, mask = clean, None
    if defect is not None:
        area = draw.log_uniform(rng, 0.003, 0.03) * n * n
        img, support = DEFECTS[defect](rng, b, d0, ink0, area)
        mask = draw.mask_from_diff(clean * b.light, img * b.light, support)
    out = img * b.light + b.noise
    return draw.to_u8(out), mask
