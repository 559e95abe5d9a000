"""`fabric`: a plain-weave textile surface (one of the product's own categories).

Good parts vary in weave phase, orientation (small rotation), thread period, per-thread brightness,
mild smooth thread irregularity, lighting gradient, global brightness, fibre fuzz and sensor noise.
The weave is fine (period ~4.5 px at 128 px): texture, not structure, at the model's scale.

Defects (DEFECTS): hole, stain, fiber, thread_pull, misweave; 0.3 % - 3 % of the image area, contrast
comparable to the natural variation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline.data.generators import draw


@dataclass
class Fabric:
    """One good part: its weave parameters, thread coordinates and nuisance fields, all (n, n) or scalars."""

    n: int
    s: float                  # scale relative to 128 px
    x: np.ndarray
    y: np.ndarray
    theta: float              # weave orientation (rad)
    period: float             # thread period (px)
    gain_u: np.ndarray        # (64,) yarn-to-yarn brightness of the warp
    gain_v: np.ndarray        # (64,) ... of the weft
    weft_level: float
    level: float
    u0: np.ndarray            # warp coordinate of every pixel
    v0: np.ndarray            # weft coordinate of every pixel
    light: np.ndarray
    fuzz: np.ndarray
    noise: np.ndarray


def good_part(rng: np.random.Generator, n: int) -> Fabric:
    """Draw a good part's nuisance (drawn first so good and defective parts share the stream layout)."""
    s = n / 128.0
    x, y = draw.grid(n)
    theta = np.deg2rad(rng.uniform(-4.0, 4.0))
    period = 4.5 * s * rng.uniform(0.96, 1.04)
    ph_u, ph_v = rng.uniform(0, 2 * period, size=2)
    du = 0.5 * s * draw.smooth_field(rng, n, 10 * s)  # mild thread irregularity
    dv = 0.5 * s * draw.smooth_field(rng, n, 10 * s)
    gain_u = 1.0 + 0.05 * rng.standard_normal(64)  # yarn-to-yarn brightness
    gain_v = 1.0 + 0.05 * rng.standard_normal(64)
    weft_level = rng.uniform(0.78, 0.86)  # weft yarn is a bit darker than warp
    level = rng.uniform(0.40, 0.52)
    light = draw.lighting(rng, x, y, n, grad=0.25, bright=0.10)
    fuzz = 0.035 * rng.standard_normal((n, n))  # fibre fuzz: unreconstructable grain
    noise = 0.012 * rng.standard_normal((n, n))
    ct, st = np.cos(theta), np.sin(theta)
    u0 = ct * x + st * y + ph_u + du
    v0 = -st * x + ct * y + ph_v + dv
    return Fabric(n, s, x, y, theta, period, gain_u, gain_v, weft_level, level, u0, v0, light, fuzz, noise)


def weave(f: Fabric, u: np.ndarray, v: np.ndarray, sel_force: Optional[float] = None,
          sel_mask: Optional[np.ndarray] = None, sheen: Optional[np.ndarray] = None) -> np.ndarray:
    """Noise-free, unlit weave at thread coordinates (u, v); sel_mask forces the over/under selector."""
    fu, fv = u / f.period, v / f.period
    iu = np.floor(fu + 0.5).astype(int) % 64
    iv = np.floor(fv + 0.5).astype(int) % 64
    warp = (0.5 + 0.5 * np.cos(2 * np.pi * fu)) * f.gain_u[iu]
    weft = (0.5 + 0.5 * np.cos(2 * np.pi * fv)) * f.gain_v[iv] * f.weft_level
    # over/under selector: smooth checkerboard over thread crossings
    sel = 0.5 + 0.5 * np.tanh(2.5 * np.cos(np.pi * fu) * np.cos(np.pi * fv))
    if sel_mask is not None:
        sel = sel * (1 - sel_mask) + sel_force * sel_mask
    val = sel * warp + (1 - sel) * weft
    img = f.level * (0.55 + 0.75 * val)
    if sheen is not None:
        img = img * (1 + sheen)
    return img


# Each defect: (rng, part, clean weave, area px, centre cx, cy) -> (defective weave, explicit support or None).
def hole(rng, f: Fabric, clean, area, cx, cy):
    """Missing yarn: the darker backing shows through, with a 1-px frayed edge."""
    a = draw.blob_alpha(f.x, f.y, cx, cy, area * 0.6, rng, aspect=rng.uniform(1, 2))
    hole_val = f.level * rng.uniform(0.35, 0.65)
    return clean * (1 - a) + hole_val * a, a


def stain(rng, f: Fabric, clean, area, cx, cy):
    """Oil / dirt: smooth-edged local brightness change, texture still visible."""
    a = draw.blob_alpha(f.x, f.y, cx, cy, area, rng, soft=0.5, aspect=rng.uniform(1, 2.5))
    k = rng.uniform(0.20, 0.35) * rng.choice([-1.0, -1.0, 1.0])
    return clean * (1 + k * a), a


def fiber(rng, f: Fabric, clean, area, cx, cy):
    """A foreign fibre or hair lying on the surface."""
    length = rng.uniform(25, 70) * f.s
    pts = draw.random_walk(rng, (cx, cy), rng.uniform(0, 2 * np.pi), length, 1.5 * f.s, 0.12, 0.97)
    a = draw.curve_alpha(f.n, pts, rng.uniform(1.2, 2.2) * f.s, (f.n - 1) / 2.0)
    tone = f.level * rng.choice([rng.uniform(0.35, 0.6), rng.uniform(1.4, 1.7)])
    return clean * (1 - 0.9 * a) + tone * 0.9 * a, a


def thread_pull(rng, f: Fabric, clean, area, cx, cy):
    """A pulled yarn drags its neighbours along its length (local warp) and catches light differently."""
    along_u = rng.random() < 0.5
    length = np.sqrt(area) * rng.uniform(1.5, 2.5)
    width = max(3.0 * f.s, area / (length * 1.6))
    ang = f.theta + (np.pi / 2 if along_u else 0.0)
    b = draw.bump(f.x, f.y, cx, cy, length / 2, width / 2 + 2 * f.s, ang)
    amp = rng.uniform(2.0, 3.5) * f.s * rng.choice([-1.0, 1.0])
    sheen = rng.uniform(0.12, 0.22) * b * rng.choice([-1.0, 1.0])
    if along_u:
        return weave(f, f.u0, f.v0 + amp * b, sheen=sheen), None
    return weave(f, f.u0 + amp * b, f.v0, sheen=sheen), None


def misweave(rng, f: Fabric, clean, area, cx, cy):
    """Wrong interlacing: over a run of crossings one yarn floats on top and reflects differently."""
    length = np.sqrt(area) * rng.uniform(1.5, 3.0)
    width = max(3.0 * f.period, area / length)
    ang = f.theta + rng.choice([0.0, np.pi / 2])
    b = draw.bump(f.x, f.y, cx, cy, length / 2, width / 2, ang)
    selm = np.clip(b * 3.0, 0, 1)  # flat-topped, compact
    sheen = rng.uniform(0.10, 0.20) * selm * rng.choice([-1.0, 1.0])
    return weave(f, f.u0, f.v0, sel_force=float(rng.random() < 0.5), sel_mask=selm, sheen=sheen), None


DEFECTS = {"hole": hole, "stain": stain, "fiber": fiber, "thread_pull": thread_pull, "misweave": misweave}


def render(rng: np.random.Generator, n: int, defect: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One image (n, n) uint8 and its bool mask (None for a good part)."""
    f = good_part(rng, n)
    clean = weave(f, f.u0, f.v0)
    img, mask = clean, None
    if defect is not None:
        area = draw.log_uniform(rng, 0.003, 0.03) * n * n
        m = 0.38 * n  # keep defects inside the image
        cx, cy = rng.uniform(-m, m, size=2)
        img, support = DEFECTS[defect](rng, f, clean, area, cx, cy)
        mask = draw.mask_from_diff(clean * f.light, img * f.light, support)
    out = img * f.light * (1 + f.fuzz) + f.noise
    return draw.to_u8(out), mask
