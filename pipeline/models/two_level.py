"""The local level of a two-level VAE: a spatial code that carries the part's detail, so the reconstruction the
learned map compares with is the part as it should look, not a blur.

The global level is the VAE itself (models/vae.py: one code for the whole image, its ELBO the score for a wrong
part or a wrong digit); `encode`/`decode` of the network stay that level's, so every likelihood score, the latent
report and the export mean what they meant. The local level adds:

    x (B, C, S, S) -> local encoder -> q(z_local | x) = N(mu, sigma^2), (B, L, S/2^k, S/2^k), prior N(0, I)
    z_local + the global decoder's features at the same side -> local decoder -> logits (B, C, S, S)

It is trained to *restore* (DRAEM's reconstructive network, Zavrtanik et al. 2021): its input carries a synthetic
anomaly, its target is the clean image (training/module.py). The global features enter detached: the global level
learns only from its own ELBO. No skip connection bypasses the code, so what the code cannot hold (the anomaly)
cannot reach the output.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pipeline.models.vae import ConvAutoencoder, _decoder, _encoder


class LocalLevel(nn.Module):
    def __init__(self, in_channels: int, hidden_channels: Sequence[int], latent_dim: int, context_channels: int):
        super().__init__()
        self.hidden_channels, self.latent_dim = tuple(hidden_channels), latent_dim
        self.encoder = _encoder(in_channels, hidden_channels)  # (B, C, S, S) -> (B, h[-1], S/2^k, S/2^k)
        self.fc_mu = nn.Conv2d(hidden_channels[-1], latent_dim, 1)
        self.fc_log_var = nn.Conv2d(hidden_channels[-1], latent_dim, 1)
        self.fc_decode = nn.Conv2d(latent_dim + context_channels, hidden_channels[-1], 1)
        self.decoder = _decoder(in_channels, hidden_channels)  # back to (B, C, S, S) logits

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.hidden_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) -> (mu, log_var), each (B, L, S/2^k, S/2^k)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_log_var(h)

    def decode(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """z (B, L, s, s) and the global level's features (B, K, s, s) -> logits (B, C, S, S)."""
        return self.decoder(self.fc_decode(torch.cat([z, context], dim=1)))


def context_channels(hidden_channels: Sequence[int], local_hidden: Sequence[int]) -> int:
    """Channels of the global decoder's features at the local code's side (checked against the network's depth)."""
    if len(local_hidden) >= len(hidden_channels):
        raise ValueError(f"model.local.hidden_channels {list(local_hidden)} must have fewer stages than "
                         f"model.hidden_channels {list(hidden_channels)}: the local code sits above the global one")
    return list(hidden_channels)[len(local_hidden) - 1]


def global_context(net: ConvAutoencoder, z: torch.Tensor, side: int) -> torch.Tensor:
    """The global decoder's features for code z (B, latent_size) at spatial side `side`, (B, K, side, side)."""
    h = net.fc_decode(z.view(z.shape[0], *net._code_shape)).view(z.shape[0], *net._bottleneck)
    for module in net.decoder:  # (transposed conv, batch norm, activation) per stage
        h = module(h)
        if isinstance(module, nn.LeakyReLU) and h.shape[-1] == side:
            return h
    raise ValueError(f"the global decoder has no stage at side {side}")


def restore(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, logits: torch.Tensor | None = None,
            sample: bool = False) -> torch.Tensor:
    """The reconstruction the map compares with, in [0, 1], (B, C, S, S): the local level's restoration when the
    network has one, else the global level's posterior-mean reconstruction `sigmoid(logits)` (`logits` None:
    decoded here, only where needed: the local level reads the global decoder's features, not its output).
    `sample`: draw the local code instead of taking its mean (training). A network that brings its own
    `restore_image(x, mu)` (the ONNX Runtime one, export/onnx.py) uses it."""
    restore_image = getattr(net, "restore_image", None)
    if restore_image is not None:
        return restore_image(x, mu)
    local: LocalLevel | None = getattr(net, "local", None)
    if local is None:
        return torch.sigmoid(net.decode(mu) if logits is None else logits)
    return torch.sigmoid(local_logits(net, x, mu, sample))


def local_logits(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, sample: bool = False,
                 moments: list | None = None) -> torch.Tensor:
    """The local level's logits (B, C, S, S) for image x and global code mu; `moments`, when given, receives the
    local posterior's (mu, log_var) for the KL term."""
    local: LocalLevel = net.local
    side = x.shape[-1] // local.downsampling
    context = global_context(net, mu, side).detach()
    mu_l, log_var_l = local.encode(x)
    z = mu_l + torch.randn_like(mu_l) * torch.exp(0.5 * log_var_l) if sample else mu_l
    if moments is not None:
        moments.extend([mu_l.flatten(1), log_var_l.flatten(1)])
    return local.decode(z, context)
