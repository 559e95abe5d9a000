"""Deterministic generator of the product's built-in default dataset.

The pipeline needs a dataset that exists on every machine (no downloads) and
that behaves like a real industrial inspection problem, so that training,
scoring and evaluation can be exercised end to end.  This module renders two
categories of grayscale images and writes them in the MVTec AD folder layout::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect_type>/000.png ...
    <root>/<category>/ground_truth/<defect_type>/000_mask.png   (0 / 255)

Categories:

* ``fabric``  - a plain-weave textile surface.  Good parts vary in weave
  phase, orientation (small rotation), thread period, per-thread brightness,
  mild smooth thread irregularity, lighting gradient, global brightness,
  fibre fuzz and sensor noise.
  Defects: hole, stain, fiber, thread_pull, misweave.
* ``bracket`` - a bright machined metal plate with two holes, a slot and a
  printed code, on a dark background.  Good parts vary in position (a few px),
  rotation (a few degrees), light direction, lighting gradient, brightness,
  brushed surface grain and sensor noise.
  Defects: scratch, crack, chip, contamination, bent, misprint.

Why it is built this way: the nuisance variation is deliberately non-linear
(rotation, translation, smooth warps) so that a linear subspace model (PCA)
is clearly weaker than a convolutional VAE, and fine random grain that no
model can reconstruct is present so defects have to stand out from it after
spatial smoothing.  Defects are subtle (contrast comparable to the natural
variation, 0.3 % - 3 % of the image area) and every mask is computed from the
pixels the defect actually altered (before sensor noise), closed by at most
one pixel.

Every image is rendered from its own ``numpy.random.default_rng`` seeded from
(seed, category, split, index), so any single image is reproducible without
rendering the others.  Generation writes into ``<root>/<category>.partial``
and renames it at the end, so an interrupted run is detectable and never
mistaken for a complete category.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
import zlib
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["CATEGORIES", "DEFECT_TYPES", "generate_category", "generate_builtin"]

CATEGORIES: tuple[str, ...] = ("fabric", "bracket")
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "stain", "fiber", "thread_pull", "misweave"),
    "bracket": ("scratch", "crack", "chip", "contamination", "bent", "misprint"),
}

# A pixel counts as altered by a defect if the noise-free rendering changed by
# more than this (in [0, 1] intensity units, ~1 grey level).
_DIFF_THRESHOLD = 1.0 / 255.0


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """Independent stream per image: reproducible without rendering others."""
    key = [
        int(seed) % (2**32),
        zlib.crc32(category.encode()),
        zlib.crc32(split.encode()),
        int(index),
    ]
    return np.random.default_rng(key)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) centred on the image centre."""
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    return xx - c, yy - c


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std, spatially smooth random field."""
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _aniso_grain(rng: np.random.Generator, n: int, sig: tuple[float, float]) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)), sig, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _blob_alpha(
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


def _random_walk(
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


def _curve_alpha(n: int, pts: np.ndarray, width: float, origin: float) -> np.ndarray:
    """Antialiased thin curve through pts (centred coordinates)."""
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


def _bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, ang: float) -> np.ndarray:
    """Compactly supported smooth bump (1 at centre, 0 outside the ellipse)."""
    dx, dy = x - cx, y - cy
    ca, sa = np.cos(ang), np.sin(ang)
    u = (ca * dx + sa * dy) / rx
    v = (-sa * dx + ca * dy) / ry
    return np.clip(1.0 - (u * u + v * v), 0.0, None) ** 2


def _lighting(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int, grad: float, bright: float) -> np.ndarray:
    """Multiplicative illumination: global brightness times a linear gradient."""
    gx, gy = rng.uniform(-grad, grad, size=2)
    return rng.uniform(1 - bright, 1 + bright) * (1.0 + gx * x / n + gy * y / n)


def _mask_from_diff(clean: np.ndarray, defect: np.ndarray, support: Optional[np.ndarray] = None) -> np.ndarray:
    """Mask = pixels the defect altered (+ its explicit support), closed by <= 1 px."""
    m = np.abs(defect - clean) > _DIFF_THRESHOLD
    if support is not None:
        m |= support > 0
    # closing only fills pixels within 1 px of altered ones (e.g. texture zero-crossings)
    m = ndimage.binary_closing(m, structure=np.ones((3, 3), bool), border_value=0) | m
    return m


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------
# fabric: plain-weave textile
# --------------------------------------------------------------------------
def _render_fabric(rng: np.random.Generator, n: int, defect: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    s = n / 128.0
    x, y = _grid(n)
    # --- nuisance of good parts (drawn first so good/defect share the stream layout)
    theta = np.deg2rad(rng.uniform(-4.0, 4.0))
    period = 4.5 * s * rng.uniform(0.96, 1.04)  # fine weave: texture, not structure, at model scale
    ph_u, ph_v = rng.uniform(0, 2 * period, size=2)
    du = 0.5 * s * _smooth_field(rng, n, 10 * s)  # mild thread irregularity
    dv = 0.5 * s * _smooth_field(rng, n, 10 * s)
    gain_u = 1.0 + 0.05 * rng.standard_normal(64)  # yarn-to-yarn brightness
    gain_v = 1.0 + 0.05 * rng.standard_normal(64)
    weft_level = rng.uniform(0.78, 0.86)  # weft yarn is a bit darker than warp
    level = rng.uniform(0.40, 0.52)
    light = _lighting(rng, x, y, n, grad=0.25, bright=0.10)
    fuzz = 0.035 * rng.standard_normal((n, n))  # fibre fuzz: unreconstructable grain
    noise = 0.012 * rng.standard_normal((n, n))

    ct, st = np.cos(theta), np.sin(theta)
    u0 = ct * x + st * y + ph_u + du
    v0 = -st * x + ct * y + ph_v + dv

    def weave(u, v, sel_force=None, sel_mask=None, sheen=None):
        fu, fv = u / period, v / period
        iu = np.floor(fu + 0.5).astype(int) % 64
        iv = np.floor(fv + 0.5).astype(int) % 64
        warp = (0.5 + 0.5 * np.cos(2 * np.pi * fu)) * gain_u[iu]
        weft = (0.5 + 0.5 * np.cos(2 * np.pi * fv)) * gain_v[iv] * weft_level
        # over/under selector: smooth checkerboard over thread crossings
        sel = 0.5 + 0.5 * np.tanh(2.5 * np.cos(np.pi * fu) * np.cos(np.pi * fv))
        if sel_mask is not None:
            sel = sel * (1 - sel_mask) + sel_force * sel_mask
        val = sel * warp + (1 - sel) * weft
        img = level * (0.55 + 0.75 * val)
        if sheen is not None:
            img = img * (1 + sheen)
        return img

    clean = weave(u0, v0)
    if defect is None:
        img = clean
        mask = None
    else:
        area = _log_uniform(rng, 0.003, 0.03) * n * n
        m = 0.38 * n  # keep defects inside the image
        cx, cy = rng.uniform(-m, m, size=2)
        support = None
        if defect == "hole":
            # missing yarn: the darker backing shows through, with a 1-px frayed edge
            a = _blob_alpha(x, y, cx, cy, area * 0.6, rng, aspect=rng.uniform(1, 2))
            hole_val = level * rng.uniform(0.35, 0.65)
            img = clean * (1 - a) + hole_val * a
            support = a
        elif defect == "stain":
            # oil / dirt: smooth-edged local brightness change, texture still visible
            a = _blob_alpha(x, y, cx, cy, area, rng, soft=0.5, aspect=rng.uniform(1, 2.5))
            k = rng.uniform(0.20, 0.35) * rng.choice([-1.0, -1.0, 1.0])
            img = clean * (1 + k * a)
            support = a
        elif defect == "fiber":
            # foreign fibre / hair lying on the surface
            length = rng.uniform(25, 70) * s
            pts = _random_walk(rng, (cx, cy), rng.uniform(0, 2 * np.pi), length, 1.5 * s, 0.12, 0.97)
            a = _curve_alpha(n, pts, rng.uniform(1.2, 2.2) * s, (n - 1) / 2.0)
            tone = level * rng.choice([rng.uniform(0.35, 0.6), rng.uniform(1.4, 1.7)])
            img = clean * (1 - 0.9 * a) + tone * 0.9 * a
            support = a
        elif defect == "thread_pull":
            # a pulled yarn drags its neighbours along its length (local warp) and
            # catches light slightly differently
            along_u = rng.random() < 0.5
            L = np.sqrt(area) * rng.uniform(1.5, 2.5)
            W = max(3.0 * s, area / (L * 1.6))
            ang = theta + (np.pi / 2 if along_u else 0.0)
            b = _bump(x, y, cx, cy, L / 2, W / 2 + 2 * s, ang)
            amp = rng.uniform(2.0, 3.5) * s * rng.choice([-1.0, 1.0])
            sheen = rng.uniform(0.12, 0.22) * b * rng.choice([-1.0, 1.0])
            if along_u:
                img = weave(u0, v0 + amp * b, sheen=sheen)
            else:
                img = weave(u0 + amp * b, v0, sheen=sheen)
        elif defect == "misweave":
            # wrong interlacing: over a run of crossings one yarn floats on top
            L = np.sqrt(area) * rng.uniform(1.5, 3.0)
            W = max(3.0 * period, area / L)
            ang = theta + rng.choice([0.0, np.pi / 2])
            b = _bump(x, y, cx, cy, L / 2, W / 2, ang)
            selm = np.clip(b * 3.0, 0, 1)  # flat-topped, compact
            # a floating yarn lies loose and reflects differently from the weave
            sheen = rng.uniform(0.10, 0.20) * selm * rng.choice([-1.0, 1.0])
            img = weave(u0, v0, sel_force=float(rng.random() < 0.5), sel_mask=selm, sheen=sheen)
        else:
            raise ValueError(f"unknown fabric defect {defect!r}")
        mask = _mask_from_diff(clean * light, img * light, support)
    out = img * light * (1 + fuzz) + noise
    return _to_u8(out), mask


# --------------------------------------------------------------------------
# bracket: machined metal plate on a dark background
# --------------------------------------------------------------------------
def _sd_round_box(x, y, cx, cy, hx, hy, r):
    qx = np.abs(x - cx) - hx + r
    qy = np.abs(y - cy) - hy + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _sd_circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


# printed product code: bar positions/heights are fixed for the product
_CODE_X = (-12.0, -7.0, -2.5, 2.5, 7.0, 12.0)
_CODE_H = (4.0, 2.5, 4.0, 3.0, 4.0, 2.5)


def _render_bracket(rng: np.random.Generator, n: int, defect: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    s = n / 128.0
    x, y = _grid(n)
    # --- nuisance of good parts
    theta = np.deg2rad(rng.uniform(-2.5, 2.5))
    tx, ty = rng.uniform(-2.5, 2.5, size=2) * s
    light_ang = np.deg2rad(225 + rng.uniform(-25, 25))  # light from upper left
    lx, ly = np.cos(light_ang), np.sin(light_ang)
    metal = rng.uniform(0.58, 0.66)
    bg = rng.uniform(0.26, 0.32) * (1 + 0.08 * _smooth_field(rng, n, 20 * s))
    light = _lighting(rng, x, y, n, grad=0.25, bright=0.10)
    brushed = _aniso_grain(rng, n, (0.6 * s, 6.0 * s))  # brushing marks along x
    grain = rng.standard_normal((n, n))
    noise = 0.012 * rng.standard_normal((n, n))

    ct, st = np.cos(theta), np.sin(theta)
    # part coordinates of every pixel (inverse rigid transform)
    px0 = ct * (x - tx) + st * (y - ty)
    py0 = -st * (x - tx) + ct * (y - ty)

    def part_sdf(px, py, chip=None):
        d = _sd_round_box(px, py, 0, 0, 48 * s, 32 * s, 9 * s)
        d = np.maximum(d, -_sd_circle(px, py, -32 * s, 6 * s, 7.5 * s))
        d = np.maximum(d, -_sd_circle(px, py, 32 * s, 6 * s, 7.5 * s))
        d = np.maximum(d, -_sd_round_box(px, py, 0, 14 * s, 11 * s, 4 * s, 4 * s))
        if chip is not None:
            d = np.maximum(d, -chip)
        return d

    def code(px, py, dx=0.0, dy=0.0, keep=None):
        ink = np.zeros_like(px)
        for i, (bx, bh) in enumerate(zip(_CODE_X, _CODE_H)):
            if keep is not None and not keep[i]:
                continue
            d = _sd_round_box(px, py, (bx + dx) * s, (-17 + dy + 4 - bh) * s, 1.3 * s, bh * s, 0.5 * s)
            ink = np.maximum(ink, np.clip(0.5 - d, 0, 1))
        return ink

    def shade(d, ink, extra=0.0):
        cov = np.clip(0.5 - d / (2.0 * s), 0.0, 1.0)  # chamfered edge: ~2 px ramp
        gy_, gx_ = np.gradient(d)
        nrm = np.hypot(gx_, gy_) + 1e-9
        facing = -(gx_ * lx + gy_ * ly) / nrm  # chamfer brightness depends on light dir
        rim = np.exp(-np.maximum(-d, 0) / (1.5 * s)) * (0.10 + 0.12 * facing)
        surf = metal * (1 + 0.045 * brushed + 0.03 * grain) * (1 - 0.5 * ink) + extra
        # soft cast shadow of the part on the background
        shadow = 0.35 * np.clip(0.5 - part_shift(d), 0, 1)
        back = bg * (1 - shadow) * (1 + 0.05 * grain)
        return cov * (surf + rim) + (1 - cov) * back

    shift = (2.0 * s, 2.0 * s)

    def part_shift(d):
        # shadow = blurred, shifted silhouette; computed from the same sdf image
        sil = np.clip(0.5 - d, 0, 1)
        return 0.5 - ndimage.gaussian_filter(ndimage.shift(sil, shift, order=1), 2.0 * s)

    d0 = part_sdf(px0, py0)
    ink0 = code(px0, py0)
    clean = shade(d0, ink0)

    if defect is None:
        img, mask = clean, None
    else:
        area = _log_uniform(rng, 0.003, 0.03) * n * n
        inside = np.argwhere(d0 < -4 * s)  # candidate defect centres on the part surface
        support = None

        def pick_on_part():
            iy, ix = inside[rng.integers(len(inside))]
            return ix - (n - 1) / 2.0, iy - (n - 1) / 2.0

        def to_img(px, py):
            return ct * px - st * py + tx, st * px + ct * py + ty

        def boundary_point():
            # random point on the outer outline or a hole rim, with outward normal
            kind = rng.integers(3)
            if kind == 0:
                t = rng.uniform(-1, 1)
                side = rng.integers(4)
                if side == 0:
                    p, nrm = (t * 38 * s, 32 * s), (0, 1)
                elif side == 1:
                    p, nrm = (t * 38 * s, -32 * s), (0, -1)
                elif side == 2:
                    p, nrm = (48 * s, t * 22 * s), (1, 0)
                else:
                    p, nrm = (-48 * s, t * 22 * s), (-1, 0)
            else:
                hx = -32 * s if kind == 1 else 32 * s
                a = rng.uniform(0, 2 * np.pi)
                p = (hx + 7.5 * s * np.cos(a), 6 * s + 7.5 * s * np.sin(a))
                nrm = (-np.cos(a), -np.sin(a))  # "outward" = into the hole
            return np.array(p, float), np.array(nrm, float)

        if defect == "scratch":
            cx, cy = pick_on_part()
            length = rng.uniform(20, 60) * s
            pts = _random_walk(rng, (cx, cy), rng.uniform(0, 2 * np.pi), length, 2.0 * s, 0.03, 0.9)
            a = _curve_alpha(n, pts, rng.uniform(1.0, 1.8) * s, (n - 1) / 2.0)
            a = a * np.clip(-d0, 0, 1)  # a scratch only marks the metal
            k = rng.uniform(0.20, 0.35) * rng.choice([-1.0, 1.0])
            img = shade(d0, ink0, extra=k * metal * a)
            support = a
        elif defect == "crack":
            p, nrm = boundary_point()
            length = rng.uniform(12, 35) * s
            head = np.arctan2(-nrm[1], -nrm[0])  # grow into the material
            pts_part = _random_walk(rng, tuple(p), head, length, 1.5 * s, 0.55, 0.6)
            ix, iy = to_img(pts_part[:, 0], pts_part[:, 1])
            a = _curve_alpha(n, np.stack([ix, iy], 1), rng.uniform(1.2, 2.0) * s, (n - 1) / 2.0)
            a = a * np.clip(0.5 - d0, 0, 1)
            k = -rng.uniform(0.35, 0.60)
            img = shade(d0, ink0, extra=k * metal * a)
            support = a
        elif defect == "chip":
            # missing material at an edge: the background shows through
            p, nrm = boundary_point()
            r = np.sqrt(area * 0.5 / np.pi) * rng.uniform(0.8, 1.2)
            c = p + nrm * r * rng.uniform(0.1, 0.5)
            ang = np.arctan2(py0 - c[1], px0 - c[0])
            rr = r * (1 + 0.15 * np.cos(3 * ang + rng.uniform(0, 6.3)) + 0.1 * np.cos(5 * ang + rng.uniform(0, 6.3)))
            chip = np.hypot(px0 - c[0], py0 - c[1]) - rr
            d1 = part_sdf(px0, py0, chip=chip)
            img = shade(d1, ink0)
        elif defect == "contamination":
            cx, cy = pick_on_part()
            a = _blob_alpha(x, y, cx, cy, area, rng, soft=0.4, aspect=rng.uniform(1, 2))
            k = rng.uniform(0.20, 0.35) * rng.choice([-1.0, -1.0, 1.0])
            img = shade(d0, ink0, extra=k * metal * a * np.clip(-d0, 0, 1))
            support = a * np.clip(0.5 - d0, 0, 1)
        elif defect == "bent":
            # dent/bend of an edge: local warp of the outline
            p, nrm = boundary_point()
            R = np.sqrt(area) * rng.uniform(0.8, 1.3)
            amp = rng.uniform(2.0, 4.0) * s * rng.choice([-1.0, 1.0])
            b = _bump(px0, py0, p[0], p[1], R, R, 0.0)
            d1 = part_sdf(px0 + amp * nrm[0] * b, py0 + amp * nrm[1] * b)
            img = shade(d1, ink0)
        elif defect == "misprint":
            mode = rng.integers(3)
            if mode == 0:  # one or more bars missing
                keep = np.ones(len(_CODE_X), bool)
                keep[rng.choice(len(_CODE_X), size=rng.integers(1, 4), replace=False)] = False
                ink1 = code(px0, py0, keep=keep)
            elif mode == 1:  # whole code shifted
                ang = rng.uniform(0, 2 * np.pi)
                dist = rng.uniform(2.5, 5.0)
                ink1 = code(px0, py0, dx=dist * np.cos(ang), dy=dist * np.sin(ang))
            else:  # smeared print: ink blob over part of the code
                cx, cy = to_img(rng.uniform(-12, 12) * s, -17 * s)
                a = _blob_alpha(x, y, cx, cy, rng.uniform(40, 120) * s * s, rng, soft=0.3, aspect=rng.uniform(1, 2.5))
                ink1 = np.maximum(ink0, 0.8 * a)
            img = shade(d0, ink1)
        else:
            raise ValueError(f"unknown bracket defect {defect!r}")
        mask = _mask_from_diff(clean * light, img * light, support)
    out = img * light + noise
    return _to_u8(out), mask


_RENDERERS = {"fabric": _render_fabric, "bracket": _render_bracket}


def render_sample(
    category: str, split: str, index: int, *, seed: int = 0, image_size: int = 128
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Render one image in memory (uint8 HxW) and its bool mask (None for good).

    ``split`` is "train/good", "test/good" or "test/<defect_type>".
    """
    if category not in _RENDERERS:
        raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")
    kind = split.split("/")[-1]
    defect = None if kind == "good" else kind
    if defect is not None and defect not in DEFECT_TYPES[category]:
        raise ValueError(f"unknown defect type {defect!r} for {category!r}")
    return _RENDERERS[category](_rng(seed, category, split, index), int(image_size), defect)


# --------------------------------------------------------------------------
# writing to disk
# --------------------------------------------------------------------------
def _save_png(arr: np.ndarray, path: pathlib.Path) -> None:
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path, format="PNG")  # 2-D uint8 -> "L"


def generate_category(
    root,
    category: str,
    *,
    seed: int = 0,
    image_size: int = 128,
    n_train: int = 400,
    n_test_good: int = 200,
    n_test_defect_per_type: int = 30,
) -> pathlib.Path:
    """Write one category in MVTec AD layout under ``root`` and return ``root/category``.

    Raises FileExistsError if ``root/category`` already exists (never overwrites).
    A leftover ``root/category.partial`` from an interrupted run is discarded.
    """
    if category not in _RENDERERS:
        raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")
    root = pathlib.Path(root)
    final = root / category
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite")
    partial = root / f"{category}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # only ever our own incomplete output
    root.mkdir(parents=True, exist_ok=True)

    def width(count: int) -> int:
        return max(3, len(str(max(count - 1, 0))))

    jobs = [("train/good", n_train), ("test/good", n_test_good)]
    jobs += [(f"test/{d}", n_test_defect_per_type) for d in DEFECT_TYPES[category]]
    for split, count in jobs:
        out_dir = partial / split
        out_dir.mkdir(parents=True, exist_ok=True)
        defect = split.split("/")[-1]
        gt_dir = None
        if defect != "good":
            gt_dir = partial / "ground_truth" / defect
            gt_dir.mkdir(parents=True, exist_ok=True)
        w = width(count)
        for i in range(count):
            img, mask = render_sample(category, split, i, seed=seed, image_size=image_size)
            _save_png(img, out_dir / f"{i:0{w}d}.png")
            if gt_dir is not None:
                _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{i:0{w}d}_mask.png")
    if final.exists():  # created concurrently while we were rendering
        raise FileExistsError(f"{final} already exists; refusing to overwrite")
    os.rename(partial, final)
    return final


def generate_builtin(
    root,
    *,
    categories: Iterable[str] = CATEGORIES,
    seed: int = 0,
    image_size: int = 128,
    n_train: int = 400,
    n_test_good: int = 200,
    n_test_defect_per_type: int = 30,
    progress: Optional[Callable[[str], None]] = None,
) -> list[pathlib.Path]:
    """Generate every requested category under ``root``; returns the category dirs."""
    paths = []
    for cat in categories:
        t0 = time.perf_counter()
        p = generate_category(
            root,
            cat,
            seed=seed,
            image_size=image_size,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_defect_per_type=n_test_defect_per_type,
        )
        paths.append(p)
        if progress is not None:
            n_def = n_test_defect_per_type * len(DEFECT_TYPES[cat])
            progress(
                f"synthetic {cat}: {n_train} train, {n_test_good} test good, "
                f"{n_def} defective ({len(DEFECT_TYPES[cat])} types) -> {p} "
                f"[{time.perf_counter() - t0:.1f}s]"
            )
    return paths
