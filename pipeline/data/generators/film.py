"""`film`: an embossed plastic film seen on the roll, whose texture drifts slowly along the roll. Report-only:
the product's defaults are never chosen on it; it measures how the detector copes with good parts whose
normal appearance moves on beyond what the training parts showed.

A good part is a matte film embossed with a diamond lattice of small domes (pitch PITCH px at 128 px when
the roll starts), over a fine random matte grain, lit from a low angle (brightness = albedo x Lambert
shading of the relief) with faint gauge streaks running along the roll. Good parts vary in the lattice's
phase (where the part was cut) and orientation (the film tracks within 1.5 degrees), emboss depth, grain,
light direction, lighting gradient, brightness and sensor noise.

The drift along the roll: the film's stretch grows steadily as the line runs, so the whole texture (lattice
and grain together) is scaled by 1 + drift, the pitch growing with it. drift = TRAIN_DRIFT x position over
train/good (0 % for its first image ... 10 % for its last, in index order) and TRAIN_DRIFT + TEST_DRIFT x
position over every test split (10 % ... 15 %: the test parts were cut later on the roll, starting where
the training parts end); position is `draw.Place.position`, the image's index / (split size - 1). No other
scale jitter: the k-th image's pitch is set by its place alone (PITCH x (1 + drift)).

Defects (DEFECTS), each drawn here, mask = the pixels the defect changed (before sensor noise):

* crack: a jagged split 1-2 px wide, sometimes with a short branch: a dark gap, sunk into the relief so
  its edges catch the light faintly;
* scratch: a long, nearly straight line 1-2 px wide where the domes' tops are worn flat into a shallow
  furrow and the scuffed film scatters more light (brighter);
* hole: a small puncture showing the dark roller behind, its torn rim raised around it;
* gel: a fisheye (a lump of unmelted polymer): the film bulges and the emboss over it is stretched
  (a local change of the texture's scale) and flattened;
* wrinkle: a short crease: a ridge lit on one side, the emboss gathered (compressed) towards it;
* stain: an oily spot, darker, the emboss slightly softened.

Unlike anything the product's training-time anomaly synthesizer makes: gel and wrinkle (the texture itself
is rescaled or gathered, with the relief's own shading, no foreign pixels are pasted) and hole (a torn rim
lit by the light); crack, scratch and stain are close to its thin lines and local intensity changes (the
crack jagged and branched, both lines drawn into the relief rather than blended on top).

Fixed settings: the constants and parameter ranges in this file, at the defaults of `data.generate` (128 px;
1000 train, 400 test good, 30 per defect), generated with seed 0. Committed before any default work of
issue 22 and set by looking at rendered images only: no detector has been trained or measured on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from pipeline.data.generators import draw

PITCH = 8.0            # lattice pitch of the emboss (px at 128) at the start of the roll
DOME = 0.40            # dome radius as a share of the pitch
DEPTH = 1.6            # emboss height (px at 128): sets the slopes the light picks out
GRAIN = 0.18           # std of the matte grain's height (px at 128)
ELEVATION = 0.6        # elevation of the light above the film (rad): a low, raking light
AMBIENT = 0.4          # share of the light that is not directional
TRAIN_DRIFT = 0.10     # scale drift over train/good: first image 1.00, last image 1.10
TEST_DRIFT = 0.05      # further drift over each test split: 1.10 ... 1.15


def drift(place: draw.Place) -> float:
    """How much the texture has grown at `place` (0.10 = 10 % larger than at the start of the roll)."""
    return TRAIN_DRIFT + TEST_DRIFT * place.position if place.test else TRAIN_DRIFT * place.position


@dataclass
class Film:
    """One good part: the film's frame and drift, its relief and albedo, light and nuisance, all (n, n) or
    scalars."""

    n: int
    s: float                  # scale relative to 128 px
    x: np.ndarray
    y: np.ndarray
    theta: float              # orientation of the film (rad)
    stretch: float            # 1 + drift: how much larger the texture is than at the start of the roll
    phase: tuple[float, float]  # film coordinates of the image centre
    pitch: float              # lattice pitch in film coordinates (px)
    depth: float              # emboss height (px)
    grain: np.ndarray         # (n, n) periodic matte grain height field, sampled at film coordinates
    albedo: np.ndarray        # (n, n) reflectance (gauge streaks along the roll)
    lx: float                 # direction the light comes from (unit vector in the image plane)
    ly: float
    light: np.ndarray
    noise: np.ndarray


def good_part(rng: np.random.Generator, n: int, place: draw.Place) -> Film:
    s = n / 128.0
    x, y = draw.grid(n)
    theta = np.deg2rad(rng.uniform(-1.5, 1.5))
    pitch = PITCH * s
    phase = tuple(rng.uniform(0, 2 * pitch, size=2))  # where along the lattice the part was cut
    depth = DEPTH * s * rng.uniform(0.9, 1.1)
    grain = GRAIN * s * draw.smooth_field(rng, n, 0.8 * s)
    level = rng.uniform(0.55, 0.68)
    albedo = level * (1 + rng.uniform(0.01, 0.03) * draw.smooth_field(rng, n, (40.0 * s, 3.0 * s)))
    ang = np.deg2rad(rng.uniform(-110.0, -70.0))  # light from the top of the image (upstream on the roll)
    light = draw.lighting(rng, x, y, n, grad=0.2, bright=0.06)
    noise = rng.uniform(0.008, 0.018) * rng.standard_normal((n, n))
    return Film(n, s, x, y, theta, 1.0 + drift(place), phase, pitch, depth, grain, albedo, np.cos(ang),
                np.sin(ang), light, noise)


def film_at(p: Film, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Film coordinates (u, v) (px of film at the start of the roll) seen at image coordinates (x, y)."""
    u, v = draw.rotate(x, y, p.theta)
    return u / p.stretch + p.phase[0], v / p.stretch + p.phase[1]


def relief(p: Film, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (n, n) of the film seen at image coordinates (x, y): the dome lattice (diamond: the square
    lattice turned 45 degrees) plus the matte grain, both scaled by the drift."""
    u, v = film_at(p, x, y)
    a, b = (u + v) / np.sqrt(2.0), (v - u) / np.sqrt(2.0)
    fa = (a / p.pitch) % 1.0 - 0.5  # position inside the lattice cell, in pitches
    fb = (b / p.pitch) % 1.0 - 0.5
    r2 = (fa * fa + fb * fb) / DOME**2
    return p.depth * np.clip(1.0 - r2, 0.0, None) ** 2 + draw.sample(p.grain, u, v)


def shade(p: Film, height: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Noise-free, unlit image: albedo times Lambert shading of the relief under the raking light."""
    gy, gx = np.gradient(height)
    c, z = np.cos(ELEVATION), np.sin(ELEVATION)
    lambert = (-gx * c * p.lx - gy * c * p.ly + z) / np.sqrt(1 + gx * gx + gy * gy)
    return albedo * (AMBIENT + (1 - AMBIENT) * np.clip(lambert, 0, None) / z)


def _centre(rng, n: int) -> tuple[float, float]:
    m = 0.34 * n  # keep defects inside the image
    cx, cy = rng.uniform(-m, m, size=2)
    return float(cx), float(cy)


def _line(rng, p: Film, start, heading: float, length: float, turn: float, persistence: float,
          width: float) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased line (n, n) along a random walk, and the walk's points (k, 2)."""
    pts = draw.random_walk(rng, start, heading, length, 1.0 * p.s, turn, persistence)
    return draw.curve_alpha(p.n, pts, width, (p.n - 1) / 2.0), pts


# Each defect: (rng, part) -> (noise-free unlit image, explicit support or None).
def crack(rng, p: Film):
    heading = rng.uniform(0, 2 * np.pi)
    a, pts = _line(rng, p, _centre(rng, p.n), heading, rng.uniform(20.0, 40.0) * p.s, 0.45, 0.5,
                   rng.uniform(1.0, 1.6) * p.s)
    if rng.uniform() < 0.5:  # a short branch off the crack, at 30 to 70 degrees to it
        fork = pts[rng.integers(len(pts) // 4, 3 * len(pts) // 4)]
        turn = np.deg2rad(rng.uniform(30.0, 70.0)) * rng.choice([-1.0, 1.0])
        branch, _ = _line(rng, p, fork, heading + turn, rng.uniform(6.0, 12.0) * p.s, 0.45, 0.5, 1.0 * p.s)
        a = np.maximum(a, branch)
    height = relief(p, p.x, p.y) - rng.uniform(0.3, 0.5) * p.depth * a  # the split opens into the film
    return shade(p, height, p.albedo * (1 - rng.uniform(0.35, 0.55) * a)), None


def scratch(rng, p: Film):
    a, _ = _line(rng, p, _centre(rng, p.n), rng.uniform(0, 2 * np.pi), rng.uniform(45.0, 90.0) * p.s, 0.03, 0.9,
                 rng.uniform(1.2, 2.0) * p.s)
    height = relief(p, p.x, p.y)
    cap = rng.uniform(0.1, 0.3) * p.depth  # the domes' tops are worn down to this height, a shallow furrow below
    height = height - a * (np.clip(height - cap, 0, None) + 0.15 * p.depth)
    return shade(p, height, p.albedo * (1 + rng.uniform(0.22, 0.35) * a)), None


def hole(rng, p: Film):
    cx, cy = _centre(rng, p.n)
    cover = draw.blob_alpha(p.x, p.y, cx, cy, rng.uniform(10.0, 28.0) * p.s * p.s, rng, aspect=rng.uniform(1, 1.6))
    dist = ndimage.distance_transform_edt(cover < 0.5)
    rim = np.clip(1 - ((dist - 1.5 * p.s) / (1.5 * p.s)) ** 2, 0, None) ** 2 * (cover < 0.5)  # torn edge, raised
    height = relief(p, p.x, p.y) + rng.uniform(0.8, 1.2) * p.depth * rim
    backing = p.albedo.mean() * rng.uniform(0.15, 0.3)  # the dark roller behind the film
    return cover * backing + (1 - cover) * shade(p, height, p.albedo), cover


def gel(rng, p: Film):
    cx, cy = _centre(rng, p.n)
    r = rng.uniform(6.0, 9.0) * p.s
    w = draw.bump(p.x, p.y, cx, cy, r, r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi))
    zoom = rng.uniform(1.4, 1.8)  # the emboss over the lump looks this much larger
    k = (1 - 1 / zoom) * np.clip(1.5 * w, 0, 1)
    height = relief(p, p.x - k * (p.x - cx), p.y - k * (p.y - cy)) * (1 - 0.6 * w)
    return shade(p, height + rng.uniform(2.5, 3.5) * p.s * w, p.albedo), None


def wrinkle(rng, p: Film):
    cx, cy = _centre(rng, p.n)
    ang = rng.uniform(0, np.pi)
    t, q = draw.rotate(p.x - cx, p.y - cy, ang)  # along and across the crease
    half, width = rng.uniform(20.0, 35.0) * p.s, rng.uniform(3.0, 4.5) * p.s
    taper = np.clip(1 - (t / half) ** 2, 0, None) ** 2
    ridge = taper * np.clip(1 - (q / width) ** 2, 0, None) ** 2  # compact: 0 beyond `width` across
    gather = rng.uniform(0.35, 0.5) * q * ridge  # film drawn towards the crease: more film per pixel
    dx, dy = draw.rotate(np.zeros_like(q), gather, -ang)  # that shift across the crease, in image axes
    height = relief(p, p.x + dx, p.y + dy) + rng.uniform(2.5, 3.5) * p.s * ridge
    return shade(p, height, p.albedo), None


def stain(rng, p: Film):
    cx, cy = _centre(rng, p.n)
    area = draw.log_uniform(rng, 0.01, 0.03) * p.n * p.n
    a = draw.blob_alpha(p.x, p.y, cx, cy, area, rng, soft=0.6, aspect=rng.uniform(1, 2))
    height = relief(p, p.x, p.y) * (1 - 0.3 * a)
    return shade(p, height, p.albedo * (1 - rng.uniform(0.15, 0.24) * a)), a


DEFECTS = {"crack": crack, "scratch": scratch, "hole": hole, "gel": gel, "wrinkle": wrinkle, "stain": stain}


def render(
    rng: np.random.Generator, n: int, defect: Optional[str], place: draw.Place = draw.Place()
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One image (n, n) uint8 and its bool mask (None for a good part), cut at `place` on the roll."""
    p = good_part(rng, n, place)
    clean = shade(p, relief(p, p.x, p.y), p.albedo)
    if defect is None:
        return draw.to_u8(clean * p.light + p.noise), None
    img, support = DEFECTS[defect](rng, p)
    return draw.to_u8(img * p.light + p.noise), draw.mask_from_diff(clean * p.light, img * p.light, support)
