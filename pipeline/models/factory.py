"""Build the network a config or a stored detector names (`model.kind`: vae | ae | cvae)."""

from __future__ import annotations

from typing import Sequence

from pipeline.models.cvae import ConditionalConvVAE
from pipeline.models.two_level import LocalLevel, context_channels
from pipeline.models.vae import ConvAutoencoder, ConvVAE
from pipeline.models.vqvae import VQVAE

NETWORKS = {"vae": ConvVAE, "ae": ConvAutoencoder}


def build_network(kind: str, in_channels: int, image_size: int, latent_dim: int,
                  hidden_channels: Sequence[int], latent_layout: str = "dense", n_classes: int = 0,
                  local: dict | None = None, codebook_size: int = 128, commitment: float = 0.25) -> ConvAutoencoder:
    """The network named by `model.kind` (vae | ae | cvae | vqvae; cvae is conditioned on n_classes categories), with
    the local level of a two-level VAE (models/two_level.py) when `local` (model.local) is enabled."""
    if kind == "cvae":
        net = ConditionalConvVAE(n_classes, in_channels, image_size, latent_dim, list(hidden_channels), latent_layout)
    elif kind == "vqvae":
        net = VQVAE(in_channels, image_size, latent_dim, list(hidden_channels), latent_layout, codebook_size, commitment)
    elif kind in NETWORKS:
        net = NETWORKS[kind](in_channels, image_size, latent_dim, list(hidden_channels), latent_layout)
    else:
        raise ValueError(f"model.kind must be one of {sorted(NETWORKS) + ['cvae', 'vqvae']}, got {kind!r}")
    if local and local.get("enabled"):
        if kind in ("cvae", "vqvae"):
            raise ValueError(f"model.local.enabled=true is not available for model={kind}: set model.local.enabled=false")
        net.local = LocalLevel(in_channels, local["hidden_channels"], int(local["latent_dim"]),
                               context_channels(hidden_channels, local["hidden_channels"]))
    return net
