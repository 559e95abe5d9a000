"""Per-sample anomaly scores (higher = more anomalous) as pure functions of a network and a batch.

Reconstruction scores use the posterior-mean reconstruction x_hat = sigmoid(decode(mu)); likelihood
scores (negative ELBO, negative IWAE bound) use K shared Monte Carlo draws `eps` (K, L): every image
sees the same draws (common random numbers), so an image's score does not depend on which batch or
which process scored it.
"""

from __future__ import annotations

import math

import torch

from pipeline.models.loss import kl_divergence, reconstruction_nll
from pipeline.models.vae import ConvAutoencoder

# Every score, by what it costs: the first group needs only the posterior-mean reconstruction and the map
# (computed for every image anyway); the others are computed only when asked for (score.extra) or chosen.
BASE_SCORES = ("recon_error", "l1_error", "kl", "neg_elbo_mean", "map_max", "map_topk")
LINEAR_SCORES = ("linear_max",)                 # only where the detector kept a linear level (models/linear.py)
NEAREST_SCORES = ("nearest_distance",)          # only where it kept the nearest-parts level (models/nearest.py)
MONTE_CARLO_SCORES = ("neg_elbo", "neg_iwae")  # K = detect.mc_samples extra decodes per image
STRUCTURE_SCORES = ("msgms_error",)            # a multi-scale gradient map
FUSED = "fused"                                # the largest standardized component (scoring/fusion.py)
LEVEL_SCORES = (*LINEAR_SCORES, *NEAREST_SCORES)  # the fitted levels' scores, computed for every image where kept
SCORE_NAMES = (FUSED, *BASE_SCORES, *LEVEL_SCORES, *MONTE_CARLO_SCORES, *STRUCTURE_SCORES)
COMPONENTS = (*BASE_SCORES, *LEVEL_SCORES)      # what detect.components may name


def posterior_mean(net: ConvAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Decode the posterior mean: (decoder logits (B, C, H, W), mu (B, L), log_var (B, L) or None)."""
    mu, log_var = net.encode(x)
    return net.decode(mu), mu, log_var


def bernoulli_entropy(x: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of the entropy of Bernoulli(x), (B, C, H, W) -> (B,): the smallest value the Bernoulli
    reconstruction term can take for image x, reached when the reconstruction is x itself."""
    p = x.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log()).flatten(1).sum(dim=1)


def neg_elbo_at_mean(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor | None,
                     recon_loss: str) -> torch.Tensor:
    """-log p(x | z = mu) + KL(q(z|x) || p(z)), (B,): the negative ELBO with the reconstruction term taken at the
    posterior mean instead of sampled (deterministic; one decode instead of K). For Bernoulli likelihoods of grey
    images the reconstruction term's floor, the entropy of Bernoulli(x), is subtracted: it measures how much grey
    an image holds, not how well the model explains it (input complexity, Serra et al. 2020), and would rank
    busy normal images above plain anomalous ones. For the autoencoder (no posterior) the KL is 0.5 |mu|^2."""
    reconstruction = reconstruction_nll(logits, x, recon_loss)
    if recon_loss == "bce":
        reconstruction = reconstruction - bernoulli_entropy(x)
    return reconstruction + kl_score(mu, log_var)


def recon_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B, C, H, W) x2 -> (B,)."""
    return (x - x_hat).pow(2).flatten(1).mean(dim=1)


def l1_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: (B, C, H, W) x2 -> (B,)."""
    return (x - x_hat).abs().flatten(1).mean(dim=1)


DECODE_CHUNK = 256  # images per decoder call when the K draws are decoded together (bounds peak memory)


def _sampled_log_weights(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
                         eps: torch.Tensor, recon_loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x|z_k) (K, B) and log p(z_k) - log q(z_k|x) (K, B) for z_k = mu + eps_k * sigma."""
    sigma = torch.exp(0.5 * log_var)
    z = mu.unsqueeze(0) + eps.unsqueeze(1) * sigma.unsqueeze(0)  # (K, B, L)
    # log N(z; 0, I) - log N(z; mu, sigma^2): the 0.5*log(2*pi) terms cancel.
    log_ratio = (-0.5 * z.pow(2) + 0.5 * eps.pow(2).unsqueeze(1) + 0.5 * log_var.unsqueeze(0)).sum(dim=2)
    # Several draws per decoder call: one call on (k*B) codes costs about half the CPU time of k calls
    # on B codes (small batches leave the convolutions under-used); chunks keep peak memory bounded.
    per_call = max(1, DECODE_CHUNK // max(1, x.shape[0]))
    if getattr(net, "conditional", False):
        per_call = 1  # a conditional decoder holds one category label per image of the batch
    log_lik = []
    for start in range(0, eps.shape[0], per_call):
        zk = z[start:start + per_call]  # (k, B, L)
        k = zk.shape[0]
        logits = net.decode(zk.reshape(k * x.shape[0], -1))  # (k*B, C, H, W)
        target = x.unsqueeze(0).expand(k, *x.shape).reshape(logits.shape)
        log_lik.append(-reconstruction_nll(logits, target, recon_loss).view(k, x.shape[0]))
    return torch.cat(log_lik), log_ratio


def likelihood_scores(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor | None,
                      eps: torch.Tensor, recon_loss: str) -> dict[str, torch.Tensor]:
    """neg_elbo, neg_iwae and kl from one pass of K decodes, each (B,).

    neg_elbo = mean_k -log p(x|z_k) + KL(q(z|x) || p(z)) in closed form (the training objective);
    neg_iwae = -log mean_k p(x|z_k) p(z_k) / q(z_k|x). For the autoencoder (no posterior) both are
    -log p(x|mu) and kl is 0.5 |mu|^2.
    """
    if log_var is None:
        nll = reconstruction_nll(net.decode(mu), x, recon_loss)
        return {"neg_elbo": nll, "neg_iwae": nll, "kl": kl_score(mu, None)}
    log_lik, log_ratio = _sampled_log_weights(net, x, mu, log_var, eps, recon_loss)  # (K, B) each
    kl = kl_divergence(mu, log_var)
    return {"neg_elbo": -log_lik.mean(dim=0) + kl,
            "neg_iwae": -(torch.logsumexp(log_lik + log_ratio, dim=0) - math.log(eps.shape[0])),
            "kl": kl}


def neg_elbo(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor | None,
             eps: torch.Tensor, recon_loss: str) -> torch.Tensor:
    """Monte Carlo negative ELBO (see likelihood_scores), (B,)."""
    return likelihood_scores(net, x, mu, log_var, eps, recon_loss)["neg_elbo"]


def neg_iwae(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor | None,
             eps: torch.Tensor, recon_loss: str) -> torch.Tensor:
    """Negative importance-weighted bound, (B,): -log mean_k p(x|z_k) p(z_k) / q(z_k|x).

    It is never above the negative ELBO estimated from the same draws (Jensen) and tightens towards
    -log p(x) as K grows (Burda et al., 2016)."""
    return likelihood_scores(net, x, mu, log_var, eps, recon_loss)["neg_iwae"]


def neg_elbo_sampled(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
                     eps: torch.Tensor, recon_loss: str) -> torch.Tensor:
    """Negative ELBO with the KL estimated from the same draws as neg_iwae (for comparing the two)."""
    log_lik, log_ratio = _sampled_log_weights(net, x, mu, log_var, eps, recon_loss)
    return -(log_lik + log_ratio).mean(dim=0)


def kl_score(mu: torch.Tensor, log_var: torch.Tensor | None) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) alone: how far the code of x lies from what the prior expects, (B,)."""
    return kl_divergence(mu, log_var) if log_var is not None else 0.5 * mu.pow(2).sum(dim=1)


def map_max(maps: torch.Tensor) -> torch.Tensor:
    """Largest value of each (smoothed) anomaly map: (B, H, W) -> (B,)."""
    return maps.flatten(1).amax(dim=1)


def map_topk(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the top `fraction` of each map's pixels: (B, H, W) -> (B,). Sensitive to small defects
    that an image mean dilutes, less noisy than the single largest pixel."""
    flat = maps.flatten(1)
    k = max(1, int(round(flat.shape[1] * fraction)))
    return flat.topk(k, dim=1).values.mean(dim=1)
