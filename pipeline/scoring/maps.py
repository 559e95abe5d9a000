"""Per-pixel anomaly maps: squared residual, structure (MSGMS), gradient and projection maps, per-pixel
standardization by normal statistics, Gaussian smoothing, resizing to the original resolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.data.filters import gaussian_blur
from pipeline.models.loss import kl_divergence, reconstruction_nll


def residual_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error averaged over channels: (B, C, H, W) -> (B, H, W)."""
    return (x - x_hat).pow(2).mean(dim=1)


def pixel_statistics(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation of (N, H, W) normal maps -> (H, W) each, computed in float64."""
    maps = maps.double()
    return maps.mean(dim=0).float(), maps.std(dim=0).float()


def standardize_map(maps: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, floor_fraction: float) -> torch.Tensor:
    """(B, H, W) -> how many normal standard deviations each pixel lies above its normal mean.

    Where normal parts vary (edges that move with position jitter, a texture's bright yarns) the raw
    error is high on every image; dividing by the pixel's own spread makes one threshold fit the whole
    image. The floor (a fraction of the mean spread) keeps near-constant pixels from exploding."""
    return scale_map(maps - mean, std, 1.0, floor_fraction)


def scale_map(maps: torch.Tensor, std: torch.Tensor, power: float, floor_fraction: float) -> torch.Tensor:
    """(B, H, W) -> the map divided by spread**power * (mean std)**(1 - power), spread = pixel std + floor.

    power 1 divides each pixel by its own normal spread (texture noise calmed everywhere); power 0 by the
    image-wide mean spread only (the plain map's shape, in comparable units). In between, pixels where
    normal parts vary (a printed code, edges) are calmed only partly, so a defect there still shows.
    No mean is subtracted: the normal error level carries information where defects sit."""
    spread = std + floor_fraction * std.mean()
    return maps / (spread.pow(power) * std.mean().pow(1.0 - power))


PLAIN_RECONSTRUCTION_KINDS = ("residual", "msgms")  # plain maps that can be standardized ('<kind>_z')
# need only x and x_hat; 'combined' = residual_z + msgms_z; 'balanced' = both scaled by scale_map
RECONSTRUCTION_MAP_KINDS = (*PLAIN_RECONSTRUCTION_KINDS, "residual_z", "msgms_z", "combined", "balanced")
BALANCED_POWERS = {"residual": 0.5, "msgms": 1.0}  # scale_map powers of the 'balanced' map (chosen by measurement)


def statistics_tensors(stored: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """detector.json's `map_statistics` ({kind: {"mean": [[...]], "std": [[...]]}}) -> {kind: (mean, std)} (S, S)."""
    return {kind: (torch.tensor(v["mean"]), torch.tensor(v["std"])) for kind, v in stored.items()}


def reconstruction_map(x: torch.Tensor, x_hat: torch.Tensor, kind: str, sigma: float,
                       statistics: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                       floor_fraction: float = 0.1, computed: dict[str, torch.Tensor] | None = None,
                       balanced_powers: dict[str, float] | None = None) -> torch.Tensor:
    """Smoothed (B, H, W) map of a kind in RECONSTRUCTION_MAP_KINDS from images and reconstructions
    (B, C, H, W). '_z' kinds are standardized by `statistics` (plain kind -> per-pixel (mean, std) of
    normal smoothed maps); 'combined' is residual_z + msgms_z; 'balanced' is the sum of both plain maps,
    each scaled by scale_map with its power in `balanced_powers`. `computed`: plain maps already made."""
    if kind == "combined":
        return (reconstruction_map(x, x_hat, "residual_z", sigma, statistics, floor_fraction, computed)
                + reconstruction_map(x, x_hat, "msgms_z", sigma, statistics, floor_fraction, computed))
    if kind == "balanced":
        powers = balanced_powers or BALANCED_POWERS
        return sum(scale_map(reconstruction_map(x, x_hat, plain, sigma, computed=computed),
                             _statistics_of(statistics, plain, kind)[1].to(x.device), powers[plain], floor_fraction)
                   for plain in PLAIN_RECONSTRUCTION_KINDS)
    plain = kind.removesuffix("_z")
    if plain not in PLAIN_RECONSTRUCTION_KINDS:
        raise ValueError(f"{kind!r} is not a reconstruction map kind {RECONSTRUCTION_MAP_KINDS}")
    raw = (computed or {}).get(plain)
    if raw is None:
        raw = residual_map(x, x_hat) if plain == "residual" else msgms_map(x, x_hat)
    smoothed = gaussian_blur(raw, sigma)
    if kind == plain:
        return smoothed
    mean, std = _statistics_of(statistics, plain, kind)
    return standardize_map(smoothed, mean.to(smoothed.device), std.to(smoothed.device), floor_fraction)


def _statistics_of(statistics: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, plain: str,
                   kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not statistics or plain not in statistics:
        raise RuntimeError(f"map kind {kind} needs the per-pixel statistics of normal {plain} maps, and this "
                           "detector has none (trained before they existed?): use score.map=residual or msgms")
    return statistics[plain]


def resize_map(anomaly_map: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) map -> (H', W') with bilinear interpolation (anomaly maps are smooth, so this is exact enough)."""
    if tuple(anomaly_map.shape[-2:]) == tuple(size_hw):
        return anomaly_map
    return F.interpolate(anomaly_map[None, None], size=tuple(int(s) for s in size_hw), mode="bilinear",
                         align_corners=False)[0, 0]


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)  # (B, 1, H, W)


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude of (B, 1, H, W) images -> (B, 1, H, W)."""
    kx = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=x.device, dtype=x.dtype) / 3.0
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + 1e-12)


def msgms_map(x: torch.Tensor, x_hat: torch.Tensor, scales: int = 4, c: float = 0.0026) -> torch.Tensor:
    """1 - multi-scale gradient-magnitude similarity (Zavrtanik et al., RIAD 2021): (B, C, H, W) -> (B, H, W).

    Compares local structure (edges) rather than intensities, so a blurry but structurally right
    reconstruction scores low while a missing or extra edge scores high. Written here because no
    maintained library we use ships MSGMS.
    """
    a, b = _gray(x), _gray(x_hat)
    size = x.shape[-2:]
    total = torch.zeros_like(a)
    for scale in range(scales):
        if scale:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        ga, gb = gradient_magnitude(a), gradient_magnitude(b)
        gms = (2 * ga * gb + c) / (ga.pow(2) + gb.pow(2) + c)
        total = total + F.interpolate(gms, size=size, mode="bilinear", align_corners=False)
    return (1.0 - total / scales).squeeze(1)


def _neg_elbo_at_mean(net, x: torch.Tensor, recon_loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-ELBO of x decoded at the posterior mean (deterministic), (B,), and the decoder logits."""
    mu, log_var = net.encode(x)
    logits = net.decode(mu)
    loss = reconstruction_nll(logits, x, recon_loss)
    return (loss + kl_divergence(mu, log_var) if log_var is not None else loss), logits


def elbo_gradient_map(net, x: torch.Tensor, recon_loss: str) -> torch.Tensor:
    """|d(-ELBO)/dx| * squared residual, averaged over channels: (B, C, H, W) -> (B, H, W).

    The gradient says which pixels the model would most like to change to make the image typical;
    weighting by the residual keeps it on pixels the reconstruction also disagrees with.
    Evaluated at the posterior mean (deterministic).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss, logits = _neg_elbo_at_mean(net, x, recon_loss)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    residual = (x.detach() - torch.sigmoid(logits.detach())).pow(2)
    return (grad.abs() * residual).mean(dim=1)


def projection_map(net, x: torch.Tensor, recon_loss: str, steps: int = 10, step_size: float = 0.05,
                   l1_weight: float = 1.0) -> torch.Tensor:
    """|x0 - x_T| after projecting x0 towards the normal manifold (Dehaene et al., ICLR 2020),
    averaged over channels: (B, C, H, W) -> (B, H, W).

    Each step descends E(x) = -ELBO(x) + l1_weight * |x - x0|_1, with the gradient weighted by the
    squared residual so that only pixels the model cannot explain move.
    """
    x0 = x.detach()
    current = x0.clone()
    pixels = x0[0].numel()
    for _ in range(steps):
        with torch.enable_grad():
            current = current.detach().requires_grad_(True)
            energy, logits = _neg_elbo_at_mean(net, current, recon_loss)
            energy = energy / pixels + l1_weight * (current - x0).abs().flatten(1).mean(dim=1)
            (grad,) = torch.autograd.grad(energy.sum(), current)
        weight = (current.detach() - torch.sigmoid(logits.detach())).pow(2)
        current = (current.detach() - step_size * pixels * grad * weight).clamp(0.0, 1.0)
    return (x0 - current).abs().mean(dim=1)


def defect_region(anomaly_map: np.ndarray, pixel_threshold: float | None) -> np.ndarray:
    """(H, W) map -> (H, W) bool mask of the pixels above the pixel threshold (all False without one)."""
    if pixel_threshold is None:
        return np.zeros(np.shape(anomaly_map), dtype=bool)
    return np.asarray(anomaly_map, dtype=np.float32) > pixel_threshold


def defect_regions(anomaly_map: np.ndarray, pixel_threshold: float | None) -> dict:
    """Share of pixels in the defect region and its number of connected regions (NaN / -1 without a threshold)."""
    if pixel_threshold is None:
        return {"defect_area": float("nan"), "defect_regions": -1}
    mask = defect_region(anomaly_map, pixel_threshold)
    return {"defect_area": float(mask.mean()), "defect_regions": int(ndimage.label(mask)[1])}
