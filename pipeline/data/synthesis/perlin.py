"""Perlin noise and the irregular masks thresholded from it (Perlin, 1985; as DRAEM draws its anomaly
shapes). Pure torch, seeded by a torch.Generator, so every mask is reproducible.

Written here because no maintained library we depend on has 2-D Perlin noise (the `noise` package is a
C extension without wheels for every platform); the algorithm is twenty lines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _fade(t: torch.Tensor) -> torch.Tensor:
    return 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3  # Perlin's quintic: smooth at lattice edges


def perlin_noise(height: int, width: int, cells: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(height, width) gradient noise with `cells` = (rows, cols) lattice cells, values about in [-1, 1]."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (rows+1, cols+1, 2)
    y = torch.linspace(0, rows, height + 1)[:-1]  # lattice coordinates of every pixel row
    x = torch.linspace(0, cols, width + 1)[:-1]
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # (H, W)
    y0, x0 = yy.floor().long(), xx.floor().long()
    fy, fx = yy - y0, xx - x0

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[y0 + dy, x0 + dx]  # (H, W, 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    u, v = _fade(fy), _fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), v)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), v)
    return math.sqrt(2) * torch.lerp(top, bottom, u)


def perlin_mask(height: int, width: int, generator: torch.Generator, max_log2_cells: int = 4,
                threshold: float = 0.5, rotate: bool = True) -> torch.Tensor:
    """(height, width) bool mask: Perlin noise of a random lattice (2^a x 2^b cells, a, b < max_log2_cells)
    above `threshold`, rotated by a random angle so the lattice's axes do not show."""
    cells = tuple(int(2 ** torch.randint(0, max_log2_cells, (1,), generator=generator)) for _ in range(2))
    noise = perlin_noise(height, width, cells, generator)
    if rotate:
        noise = rotate_image(noise[None], float(torch.empty(1).uniform_(-90, 90, generator=generator)))[0]
    return noise > threshold


def rotate_image(image: torch.Tensor, degrees: float, mode: str = "bilinear") -> torch.Tensor:
    """(C, H, W) rotated about its centre; pixels from outside the image are the border's."""
    theta = math.radians(degrees)
    matrix = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0],
                           [math.sin(theta), math.cos(theta), 0.0]], dtype=image.dtype)
    grid = F.affine_grid(matrix[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode=mode, padding_mode="border", align_corners=False)[0]
