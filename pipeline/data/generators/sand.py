"""`sand`: a stochastic natural texture (sand or fine gravel seen from above). Report-only: the product's
defaults are never chosen on it; it measures how the detector carries over to a surface it was not designed on.

A good part is a random height field (grain at three scales: fine sand, coarser grains, gentle ripples,
no period) and a mineral albedo (a few dark and a few bright grains), lit by a directional light:
brightness = albedo x (1 + relief x slope towards the light). Good parts vary in grain size (scale jitter),
the weight of each scale, grain colours, light direction, lighting gradient, brightness and sensor noise.

Defects (DEFECTS), each drawn here, mask = the pixels the defect changed (before sensor noise):

* dent: a shallow impression; the sand inside is pressed smoother, the rim is lit and shadowed by the
  light, and the grain is pushed outwards (a geometric deformation of the texture);
* clump: the grain is locally magnified (a lump of coarser grains grading into the surrounding sand: a
  local change of the grain's scale);
* pebble: a foreign stone lying on the sand, with its own dome shading and a cast shadow;
* groove: a furrow dragged through the sand, with raised rims lit on one side;
* wet: a damp patch, darker and with the fine relief softened.

Unlike anything the product's training-time anomaly synthesizer makes: dent and clump (the grain itself
is displaced or rescaled, no foreign pixels are pasted) and pebble (an object with its own shading and
shadow); groove and wet are closer to its lines and local intensity changes.

Fixed settings (not tuned any further): the constants and parameter ranges in this file, at the defaults of
`data.generate` (128 px; 1000 train, 400 test good, 30 per defect), generated with seed 0. The product's plain
autoencoder at its defaults (seed 0; `python -m pipeline train data.category=sand model=ae
tracking.enabled=false`, then `score` with `detector=<its detector folder>`) measured image AUROC
0.520, pixel AUROC 0.553, AUPRO 0.216 (docs/datasets.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from pipeline.data.generators import draw

ROUGHNESS = 0.3        # std of the relief's slopes
ELEVATION = 0.8        # elevation of the light above the surface (rad)
AMBIENT = 0.35         # share of the light that is not directional
SCALES = (1.0, 2.2, 6.0)  # grain scales of the height field (px at 128)


@dataclass
class Sand:
    """One good part: height and albedo fields, light and nuisance, all (n, n) or scalars."""

    n: int
    s: float                  # scale relative to 128 px
    x: np.ndarray
    y: np.ndarray
    height: np.ndarray        # (n, n) relief (px); its slopes have std ROUGHNESS
    albedo: np.ndarray        # (n, n) reflectance around `level`
    lx: float                 # direction the light comes from (unit vector in the image plane)
    ly: float
    light: np.ndarray
    noise: np.ndarray


def good_part(rng: np.random.Generator, n: int) -> Sand:
    s = n / 128.0
    x, y = draw.grid(n)
    grain = s * rng.uniform(0.85, 1.15)  # grain size jitter
    weights = rng.uniform(0.7, 1.0, size=3) * (1.0, 0.5, 0.3)
    height = sum(w * sig * draw.smooth_field(rng, n, sig * grain) for w, sig in zip(weights, SCALES))
    gy, gx = np.gradient(height)
    height = ROUGHNESS * height / (np.hypot(gx, gy).std() + 1e-12)
    level = rng.uniform(0.50, 0.62)
    minerals = draw.smooth_field(rng, n, 0.9 * grain)
    dark, bright = rng.uniform(0.25, 0.45), rng.uniform(0.10, 0.25)
    albedo = level * (1 + 0.06 * draw.smooth_field(rng, n, 1.2 * grain)
                      - dark * (minerals > 1.6) + bright * (minerals < -1.9))
    albedo = ndimage.gaussian_filter(albedo, 0.5 * s, mode="wrap")  # grains, not single pixels
    ang = rng.uniform(0, 2 * np.pi)
    light = draw.lighting(rng, x, y, n, grad=0.25, bright=0.08)
    noise = 0.012 * rng.standard_normal((n, n))
    return Sand(n, s, x, y, height, albedo, np.cos(ang), np.sin(ang), light, noise)


def shade(p: Sand, height: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Noise-free, unlit image: albedo times Lambert shading of the relief under the directional light."""
    gy, gx = np.gradient(height)
    c, z = np.cos(ELEVATION), np.sin(ELEVATION)
    lambert = (-gx * c * p.lx - gy * c * p.ly + z) / np.sqrt(1 + gx * gx + gy * gy)
    return albedo * (AMBIENT + (1 - AMBIENT) * np.clip(lambert, 0, None) / z)


def warped(p: Sand, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height and albedo seen through the displacement (dx, dy): the grain at x comes from x - d."""
    return draw.sample(p.height, p.x - dx, p.y - dy), draw.sample(p.albedo, p.x - dx, p.y - dy)


def _centre(rng, n: int) -> tuple[float, float]:
    m = 0.36 * n  # keep defects inside the image
    cx, cy = rng.uniform(-m, m, size=2)
    return float(cx), float(cy)


# Each defect: (rng, part) -> (noise-free unlit image, explicit support or None).
def dent(rng, p: Sand):
    cx, cy = _centre(rng, p.n)
    r = rng.uniform(12.0, 20.0) * p.s
    w = draw.bump(p.x, p.y, cx, cy, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))
    push = rng.uniform(0.8, 1.6) * p.s  # grain pushed outwards by the impression
    dist = np.hypot(p.x - cx, p.y - cy) + 1e-9
    height, albedo = warped(p, push * w * (p.x - cx) / dist, push * w * (p.y - cy) / dist)
    depth = rng.uniform(3.0, 5.0) * r / 8.0
    height = height * (1 - rng.uniform(0.5, 0.8) * w) - depth * w
    return shade(p, height, albedo), None


def clump(rng, p: Sand):
    cx, cy = _centre(rng, p.n)
    r = rng.uniform(12.0, 18.0) * p.s
    w = np.clip(1.6 * draw.bump(p.x, p.y, cx, cy, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)), 0, 1)
    zoom = rng.uniform(2.0, 2.8)  # grains inside look this much larger
    k = (1 - 1 / zoom) * w
    height, albedo = warped(p, k * (p.x - cx), k * (p.y - cy))
    height = height * (1 + (zoom - 1) * 0.5 * w)  # larger grains stand higher: keep their slopes
    return shade(p, height, albedo), None


def pebble(rng, p: Sand):
    cx, cy = _centre(rng, p.n)
    rx, ry = rng.uniform(5.0, 9.0, size=2) * p.s
    ang = rng.uniform(0, np.pi)
    u, v = draw.rotate(p.x - cx, p.y - cy, ang)
    rho = np.hypot(u / rx, v / ry)
    cover = np.clip((1 - rho) * min(rx, ry) + 0.5, 0, 1)  # 1-px antialiased outline
    dome = np.sqrt(np.clip(1 - rho**2, 0, 1))
    nx, ny = draw.rotate(u / rx**2, v / ry**2, -ang)  # outward normal direction of the dome
    facing = np.clip(0.6 + 0.9 * (nx * p.lx + ny * p.ly) * (1 - dome) / (np.hypot(nx, ny) + 1e-9), 0.15, 1.6)
    tone = p.albedo.mean() * rng.choice([rng.uniform(0.45, 0.65), rng.uniform(1.35, 1.6)])
    stone = tone * facing * (1 + 0.04 * rng.standard_normal(p.x.shape))
    sx, sy = -2.0 * p.s * p.lx, -2.0 * p.s * p.ly  # the shadow falls away from the light
    shadow = ndimage.gaussian_filter(ndimage.shift(cover, (sy, sx), order=1), 1.2 * p.s)
    ground = shade(p, p.height, p.albedo) * (1 - 0.55 * shadow)
    return cover * stone + (1 - cover) * ground, cover


def groove(rng, p: Sand):
    cx, cy = _centre(rng, p.n)
    length = rng.uniform(35.0, 70.0) * p.s
    pts = draw.random_walk(rng, (cx, cy), rng.uniform(0, 2 * np.pi), length, 1.5 * p.s, 0.05, 0.9)
    on_path = draw.curve_alpha(p.n, pts, 1.0, (p.n - 1) / 2.0) > 0.5
    dist = ndimage.distance_transform_edt(~on_path)
    width = rng.uniform(2.5, 3.5) * p.s
    depth = rng.uniform(2.5, 4.0)
    profile = -depth * np.exp(-(dist / width) ** 2) + 0.5 * depth * np.exp(-((dist - 2 * width) / width) ** 2)
    profile = profile * (dist < 4 * width)
    return shade(p, p.height + profile, p.albedo), None


def wet(rng, p: Sand):
    cx, cy = _centre(rng, p.n)
    area = draw.log_uniform(rng, 0.01, 0.035) * p.n * p.n
    a = draw.blob_alpha(p.x, p.y, cx, cy, area, rng, soft=0.6, aspect=rng.uniform(1, 2))
    smooth = ndimage.gaussian_filter(p.height, 1.0 * p.s, mode="wrap")
    height = p.height * (1 - 0.5 * a) + smooth * 0.5 * a
    return shade(p, height, p.albedo * (1 - rng.uniform(0.2, 0.32) * a)), a


DEFECTS = {"dent": dent, "clump": clump, "pebble": pebble, "groove": groove, "wet": wet}


def render(rng: np.random.Generator, n: int, defect: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One image (n, n) uint8 and its bool mask (None for a good part)."""
    p = good_part(rng, n)
    clean = shade(p, p.height, p.albedo)
    if defect is None:
        return draw.to_u8(clean * p.light + p.noise), None
    img, support = DEFECTS[defect](rng, p)
    return draw.to_u8(img * p.light + p.noise), draw.mask_from_diff(clean * p.light, img * p.light, support)
