"""The kinds of synthetic anomaly, one small function each, made from normal images only.

Every kind takes one normal image x (C, H, W) in [0, 1], a pool of other normal images (N, C, H, W) to
draw material from, a torch.Generator and its parameters (conf/head/default.yaml), and returns the
altered image and the blending weight alpha (H, W) in [0, 1] it used (alpha = 0: untouched pixel).
What counts as the anomaly's mask is decided by the synthesizer from the pixels that really changed.

The recipe follows DRAEM (Zavrtanik et al., 2021: Perlin-shaped regions filled with other material, a
random opacity) and NSA (Schlueter et al., 2022: patches of other normal images, rescaled, moved and
blended softly), with the anomaly material always taken from the training images or from noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.data.filters import gaussian_blur
from pipeline.data.synthesis.perlin import perlin_mask


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def coin(generator: torch.Generator, p: float = 0.5) -> bool:
    return bool(torch.rand(1, generator=generator) < p)


def pick(generator: torch.Generator, n: int) -> int:
    return int(torch.randint(0, n, (1,), generator=generator))


def _ellipse(height: int, width: int, generator: torch.Generator, size: tuple[float, float]) -> torch.Tensor:
    """(H, W) bool: a randomly placed and oriented ellipse whose axes are `size` fractions of the side."""
    side = min(height, width)
    ry, rx = (uniform(generator, *size) * side / 2 for _ in range(2))
    cy, cx = uniform(generator, 0, height), uniform(generator, 0, width)
    angle = uniform(generator, 0, math.pi)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def region(height: int, width: int, generator: torch.Generator, params: dict) -> torch.Tensor:
    """(H, W) float: a Perlin-shaped region or an ellipse, edges feathered by a random Gaussian."""
    if coin(generator, params.get("perlin_share", 0.5)):
        mask = perlin_mask(height, width, generator, int(params.get("perlin_max_log2_cells", 4)),
                           float(params.get("perlin_threshold", 0.5)))
    else:
        mask = _ellipse(height, width, generator, tuple(params.get("ellipse_size", (0.1, 0.5))))
    return gaussian_blur(mask.float(), uniform(generator, *params.get("feather", (0.0, 1.5))))


def _blend(x: torch.Tensor, fill: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x * (1 - alpha) + fill.clamp(0, 1) * alpha).clamp(0, 1), alpha


def patch(x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle of another normal image, rescaled, rotated and moved, blended with a soft edge;
    half the time its mean is matched to the place it lands (as Poisson blending would)."""
    _, height, width = x.shape
    source = pool[pick(generator, len(pool))]
    ph, pw = (uniform(generator, *params["size"]) for _ in range(2))  # half-sizes, fractions of the side
    scale, angle = uniform(generator, *params["scale"]), math.radians(uniform(generator, -180, 180))
    src_c = (uniform(generator, -0.6, 0.6), uniform(generator, -0.6, 0.6))  # centres in [-1, 1] coordinates
    dst_c = (uniform(generator, -0.8, 0.8), uniform(generator, -0.8, 0.8))
    # The grid maps every destination pixel to a source position: rotate about the destination centre,
    # undo the scale, move to the source centre.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    matrix = torch.tensor([[cos, -sin, src_c[0] - cos * dst_c[0] + sin * dst_c[1]],
                           [sin, cos, src_c[1] - sin * dst_c[0] - cos * dst_c[1]]])
    grid = F.affine_grid(matrix[None], [1, *x.shape], align_corners=False)  # (1, H, W, 2) source coords
    moved = F.grid_sample(source[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    local = grid[0] - torch.tensor(src_c)  # source offset from the patch centre
    inside = (local[..., 0].abs() <= pw) & (local[..., 1].abs() <= ph)
    alpha = gaussian_blur(inside.float(), uniform(generator, *params["feather"])) * uniform(generator, *params["opacity"])
    if coin(generator) and inside.any():
        moved = moved + (x[:, inside].mean(dim=1) - moved[:, inside].mean(dim=1))[:, None, None]
    return _blend(x, moved, alpha)


def perlin_noise_fill(x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
                      params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A Perlin-shaped region filled with noise: fine grain, smooth blotches or a flat level."""
    channels, height, width = x.shape
    noise = torch.rand(1, height, width, generator=generator)
    choice = pick(generator, 3)
    if choice == 1:  # smooth blotches of random contrast around a random level
        smooth = gaussian_blur(noise, uniform(generator, 1.0, 4.0))
        smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-6)
        noise = uniform(generator, 0.1, 0.9) + uniform(generator, 0.05, 0.3) * smooth
    elif choice == 2:  # a flat level
        noise = torch.full_like(noise, uniform(generator, 0.0, 1.0))
    mask = perlin_mask(height, width, generator, int(params.get("perlin_max_log2_cells", 4)),
                       float(params.get("perlin_threshold", 0.5)))
    alpha = gaussian_blur(mask.float(), uniform(generator, *params["feather"])) * uniform(generator, *params["opacity"])
    return _blend(x, noise.expand(channels, -1, -1), alpha)


def perlin_image_fill(x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
                      params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A Perlin-shaped region filled with another normal image, augmented (inverted, gamma, contrast,
    flipped or shifted) so it is foreign material, at a random opacity (DRAEM's recipe)."""
    _, height, width = x.shape
    source = pool[pick(generator, len(pool))].clone()
    if coin(generator, 0.3):
        source = 1 - source
    source = source.clamp(1e-4, 1) ** uniform(generator, 0.5, 2.0)
    source = (source - source.mean()) * uniform(generator, 0.5, 2.0) + source.mean() + uniform(generator, -0.25, 0.25)
    source = torch.roll(source, (pick(generator, height), pick(generator, width)), dims=(1, 2))
    if coin(generator):
        source = source.flip(-1)
    mask = perlin_mask(height, width, generator, int(params.get("perlin_max_log2_cells", 4)),
                       float(params.get("perlin_threshold", 0.5)))
    alpha = gaussian_blur(mask.float(), uniform(generator, *params["feather"])) * uniform(generator, *params["opacity"])
    return _blend(x, source, alpha)


def blur_or_haze(x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
                 params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A region out of focus (Gaussian blur), or veiled by haze (a blend towards a flat level)."""
    _, height, width = x.shape
    if coin(generator):
        fill = gaussian_blur(x, uniform(generator, *params["blur_sigma"]))
        opacity = 1.0
    else:
        fill = torch.full_like(x, uniform(generator, 0.0, 1.0))
        opacity = uniform(generator, *params["haze_opacity"])
    return _blend(x, fill, region(height, width, generator, params) * opacity)


def _curve_distance(height: int, width: int, generator: torch.Generator, length: tuple[float, float]) -> torch.Tensor:
    """(H, W) distance in pixels to a random quadratic Bezier curve."""
    side = min(height, width)
    start = torch.tensor([uniform(generator, 0, width), uniform(generator, 0, height)])
    heading = uniform(generator, 0, 2 * math.pi)
    span = uniform(generator, *length) * side
    end = start + span * torch.tensor([math.cos(heading), math.sin(heading)])
    bend = (start + end) / 2 + uniform(generator, -0.3, 0.3) * span * torch.tensor([-math.sin(heading), math.cos(heading)])
    t = torch.linspace(0, 1, max(16, int(span)))[:, None]  # (T, 1)
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end  # (T, 2) as (x, y)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    pixels = torch.stack([xx, yy], dim=-1).reshape(-1, 2)  # (H*W, 2)
    # cdist without the matrix-product shortcut: the same distances to the last bit as the broadcast norm, 2.4x faster
    distances = torch.cdist(pixels, points, compute_mode="donot_use_mm_for_euclid_dist")  # (H*W, T)
    return distances.amin(dim=1).reshape(height, width)


def thin_lines(x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
               params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One to three thin curved lines (scratch- or fibre-like), brighter or darker than the surface."""
    _, height, width = x.shape
    alpha = torch.zeros(height, width)
    for _ in range(1 + pick(generator, int(params["max_lines"]))):
        distance = _curve_distance(height, width, generator, tuple(params["length"]))
        half = uniform(generator, *params["width"]) / 2
        alpha = torch.maximum(alpha, (half + 0.5 - distance).clamp(0, 1))  # antialiased stroke
    delta = uniform(generator, *params["contrast"]) * (1 if coin(generator) else -1)
    fill = x + delta if coin(generator) else torch.full_like(x, 1.0 if delta > 0 else 0.0)
    return _blend(x, fill, alpha * uniform(generator, *params["opacity"]))


def intensity_change(x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
                     params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A region brighter or darker, with more or less contrast (a stain, a worn or polished spot)."""
    _, height, width = x.shape
    mean = x.mean()
    fill = (x - mean) * uniform(generator, *params["gain"]) + mean + uniform(generator, *params["offset"])
    return _blend(x, fill, region(height, width, generator, params) * uniform(generator, *params["opacity"]))


KINDS = {
    "patch": patch,
    "perlin_noise": perlin_noise_fill,
    "perlin_image": perlin_image_fill,
    "blur": blur_or_haze,
    "line": thin_lines,
    "intensity": intensity_change,
}
