"""Build the network a config or a stored detector names (`model.kind`: vae | ae | cvae)."""

from __future__ import annotations

from typing import Sequence

from pipeline.models.cvae import ConditionalConvVAE
from pipeline.models.vae import ConvAutoencoder, ConvVAE

NETWORKS = {"vae": ConvVAE, "ae": ConvAutoencoder}


def build_network(kind: str, in_channels: int, image_size: int, latent_dim: int,
                  hidden_channels: Sequence[int], latent_layout: str = "dense", n_classes: int = 0) -> ConvAutoencoder:
    """The network named by `model.kind` (vae | ae | cvae; cvae is conditioned on n_classes categories)."""
    if kind == "cvae":
        return ConditionalConvVAE(n_classes, in_channels, image_size, latent_dim, list(hidden_channels), latent_layout)
    if kind not in NETWORKS:
        raise ValueError(f"model.kind must be one of {sorted(NETWORKS) + ['cvae']}, got {kind!r}")
    return NETWORKS[kind](in_channels, image_size, latent_dim, list(hidden_channels), latent_layout)
