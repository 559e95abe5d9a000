"""What one batch of images costs the detector: the network calls its decision needs, and nothing more.

Always: encode, decode the posterior mean (the reconstruction), the configured anomaly map (the learned
map: one call of the head; or a reconstruction map), and the scores that follow from these for free
(BASE_SCORES); where the detector kept a linear level, its projection's residual maximum (LINEAR_SCORES), and where
it kept the nearest-parts level, the distance to the nearest normal training images (NEAREST_SCORES).
Only when asked for: the K Monte Carlo decodes of neg_elbo / neg_iwae, the MSGMS structure score, and other
map kinds ('map.<kind>', for comparisons).
"""

from __future__ import annotations

import torch

from pipeline.data.filters import gaussian_blur
from pipeline.models.head import AnomalyHead
from pipeline.models.linear import LinearLevel
from pipeline.models.nearest import NearestLevel
from pipeline.models.two_level import restore
from pipeline.models.vae import ConvAutoencoder
from pipeline.scoring import maps as M
from pipeline.scoring import scores as S

HEAD_MAP = "head"  # the learned anomaly map's kind; the reconstruction kinds are maps.RECONSTRUCTION_MAP_KINDS
GRADIENT_MAP_KINDS = ("elbo_grad", "projection")
MAP_KINDS = (HEAD_MAP, *M.RECONSTRUCTION_MAP_KINDS, *GRADIENT_MAP_KINDS)


def linear_max(x: torch.Tensor, level: LinearLevel, sigma: float) -> torch.Tensor:
    """(B, C, S, S) -> (B,): the largest sigma-smoothed squared residual of each image's projection by `level`."""
    return S.map_max(gaussian_blur(M.residual_map(x, level(x)), sigma))


class BatchComputer:
    """Computes a batch's reconstruction, map and scores for fixed networks and settings (`detect`)."""

    def __init__(self, vae: ConvAutoencoder, head: AnomalyHead | None, detect: dict, recon_loss: str,
                 map_statistics: dict[str, tuple[torch.Tensor, torch.Tensor]], eps: torch.Tensor,
                 linear: LinearLevel | None = None, nearest: NearestLevel | None = None):
        if detect["map"] not in MAP_KINDS:
            raise ValueError(f"detect.map must be one of {MAP_KINDS}, got {detect['map']!r}")
        if detect["map"] == HEAD_MAP and head is None:
            raise ValueError("detect.map=head needs the learned anomaly map (head.enabled=true)")
        self.vae, self.head, self.detect, self.recon_loss = vae, head, detect, recon_loss
        self.map_statistics, self.eps = map_statistics, eps  # eps: (K, L) shared Monte Carlo draws
        self.linear, self.nearest = linear, nearest

    def head_map(self, x: torch.Tensor, x_hat: torch.Tensor, computed: dict[str, torch.Tensor]) -> torch.Tensor:
        """Smoothed probability that each pixel is anomalous, (B, S, S); the unsmoothed one is kept in `computed`."""
        computed[HEAD_MAP] = torch.sigmoid(self.head(x, x_hat))[:, 0]
        return gaussian_blur(computed[HEAD_MAP], self.detect["map_sigma"])

    def score_map(self, smoothed: torch.Tensor, computed: dict[str, torch.Tensor]) -> torch.Tensor:
        """The map the image scores take their maximum of, (B, S, S): the learned map smoothed by
        `detect.score_sigma` (0 = as the network drew it, so a 1-2 pixel crack counts as much as a blob);
        any other map as displayed. Detectors trained before score_sigma existed keep the displayed map."""
        sigma = self.detect.get("score_sigma")
        if self.detect["map"] != HEAD_MAP or sigma is None or sigma == self.detect["map_sigma"]:
            return smoothed
        return gaussian_blur(computed[HEAD_MAP], sigma) if sigma > 0 else computed[HEAD_MAP]

    def map_of(self, kind: str, x: torch.Tensor, x_hat: torch.Tensor, computed: dict[str, torch.Tensor]) -> torch.Tensor:
        """Smoothed (B, S, S) map of any kind in MAP_KINDS; `computed` caches plain maps already made."""
        d = self.detect
        if kind == HEAD_MAP:
            return self.head_map(x, x_hat, computed)
        if kind in M.RECONSTRUCTION_MAP_KINDS:
            return M.reconstruction_map(x, x_hat, kind, d["map_sigma"], self.map_statistics, d["map_std_floor"],
                                        computed, d["balanced_powers"])
        if kind == "elbo_grad":
            raw = M.elbo_gradient_map(self.vae, x, self.recon_loss)
        else:
            raw = M.projection_map(self.vae, x, self.recon_loss, **d["projection"])
        return gaussian_blur(raw, d["map_sigma"])

    @torch.no_grad()  # not inference_mode: the gradient maps re-enable autograd locally
    def __call__(self, x: torch.Tensor, extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """x (B, C, S, S) in [0, 1] -> 'reconstruction' (B, C, S, S), 'mu' (B, L), 'map' (B, S, S), every
        BASE_SCORES score (B,), 'linear_max' (B,) with a linear level, 'nearest_distance' (B,) with a nearest-parts
        level, and each requested extra: a score name or 'map.<kind>'."""
        logits, mu, log_var = S.posterior_mean(self.vae, x)
        x_hat = restore(self.vae, x, mu, logits)  # the two-level VAE's restoration, else sigmoid(logits)
        computed: dict[str, torch.Tensor] = {}
        out = {"reconstruction": x_hat, "mu": mu, "recon_error": S.recon_error(x, x_hat),
               "l1_error": S.l1_error(x, x_hat), "kl": S.kl_score(mu, log_var),
               "neg_elbo_mean": S.neg_elbo_at_mean(logits, x, mu, log_var, self.recon_loss)}
        out["map"] = self.map_of(self.detect["map"], x, x_hat, computed)
        scored = self.score_map(out["map"], computed)
        out["map_max"] = S.map_max(scored)
        out["map_topk"] = S.map_topk(scored, self.detect["topk_fraction"])
        if self.linear is not None:
            out["linear_max"] = linear_max(x, self.linear, self.detect["map_sigma"])
        if self.nearest is not None:
            out["nearest_distance"] = self.nearest(x)
        if any(name in S.MONTE_CARLO_SCORES for name in extra):
            out.update({k: v for k, v in S.likelihood_scores(self.vae, x, mu, log_var, self.eps.to(x.device),
                                                             self.recon_loss).items() if k != "kl"})
        if "msgms_error" in extra:
            computed.setdefault("msgms", M.msgms_map(x, x_hat))
            out["msgms_error"] = computed["msgms"].flatten(1).mean(dim=1)
        for name in extra:
            if name.startswith("map."):
                out[name] = self.map_of(name.removeprefix("map."), x, x_hat, computed)
            elif name not in out and name != S.FUSED:
                raise ValueError(f"unknown score {name!r}: choose from {S.SCORE_NAMES} or map.<kind> ({MAP_KINDS})")
        return out
