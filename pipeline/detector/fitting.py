"""`AnomalyDetector.fit`, step by step, each step on its own share of the normal images (data/splits.py):

  1. training images    train the VAE's global level (early stopping on the selection images); where it draws a
                        blur of the selection images, train its local level to restore (choose_reconstruction);
                        then the learned map on synthetic anomalies; fit the per-pixel statistics of the
                        reconstruction maps; fit the linear level (the training images' principal subspace) and
                        the nearest-parts level (the training images' coarse copies), where the part is drawn
  2. selection images   choose the reconstruction and the fused components (the global level's detail; whether the
                        linear level helps on anomalies of a kind neither network trained on: label-free),
                        standardize the components; validate on those anomalies (leave-one-kind-out): the numbers
                        go to the run, nothing is tuned on the calibration images
  3. calibration images score them once, with every setting fixed: the calibration scores of every score,
                        the pixel threshold, the drift reference

A cross-conformal detector (small normal sets) runs these steps once per member, on the member's folds
(`fit_members`), except that step 2's choice of components is the members' together (ensemble.shared_gains: one
member's 16 selection images often cannot tell), then combines the members (detector/ensemble.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.data.synthesis.nuisance import NuisanceTransform
from pipeline.detector import ensemble as E
from pipeline.models.linear import LinearLevel
from pipeline.models.nearest import NearestLevel
from pipeline.scoring import maps as M
from pipeline.scoring import metrics as MET
from pipeline.scoring import scores as S
from pipeline.scoring.drift import image_statistics
from pipeline.scoring.fusion import draws_the_part, fit_standardization, fuse, keep_components, keep_if_it_helps
from pipeline.scoring.threshold import pixel_threshold
from pipeline.training.fit import (FitReport, fit_head, fit_local, fit_vae, global_detail_ratio, head_steps,
                                   head_synthesizers, nuisance_transform, validation_set)

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    vae: FitReport
    head: FitReport | None
    is_global_zero: bool
    local: FitReport | None = None  # the two-level VAE's local level, when the map compares with its restoration


def fit_networks(detector, datamodule, model_cfg: DictConfig, head_cfg: DictConfig, trainer_cfg: DictConfig,
                 checkpoint_dir: Path, seed: int, logger=None, callbacks=(), resume: Path | None = None) -> FitResult:
    """Step 1's training (every rank under DDP)."""
    restoring = head_synthesizers(head_cfg.synthesis)[0] if model_cfg.denoise.kind == "synthetic" else None
    vae_report = fit_vae(detector.vae, model_cfg, datamodule, trainer_cfg, checkpoint_dir, logger, list(callbacks), resume,
                         restoring, seed)
    local_report = choose_reconstruction(detector, datamodule, model_cfg, head_cfg, trainer_cfg, checkpoint_dir, seed,
                                         logger)
    head_report = None
    if detector.head is not None:
        detector.vae.eval()
        head_report = fit_head(detector.head, detector.vae, datamodule, head_cfg, trainer_cfg, seed, logger,
                               nuisance=normal_variation(detector, head_cfg, datamodule.train_images),
                               steps=head_steps(head_cfg, detector.spec.reconstruction))
    detector.eval()
    return FitResult(vae_report, head_report, vae_report.is_global_zero, local_report)


def fit_members(detector, datamodule, cfg: DictConfig, checkpoint_dir: Path, logger=None, callbacks=(),
                resume: Path | None = None) -> None:
    """Fit each member of a cross-conformal detector on its own folds (`datamodule.member(k)`), with its own seed;
    on rank 0, decide each member's fused components by the members' shared gains (ensemble.shared_gains),
    calibrate each on its own fold and combine them. `fit_result_` is member 1's reports, with every member's
    training seconds."""
    if resume is not None:
        raise ValueError("train.resume cannot continue a cross-conformal training (data.split.scheme=cross): its "
                         "members are not checkpointed apart; train again (the members of a small set train in minutes)")
    seconds = {"vae": 0.0, "local": 0.0, "head": 0.0}
    for k, member in enumerate(detector.members):
        log.info("cross-conformal member %d of %d", k + 1, len(detector.members))
        member_cfg = OmegaConf.merge(cfg, {"seed": int(member.spec.extra["seed"])})
        member.fit(datamodule.member(k), member_cfg, checkpoint_dir / f"member{k + 1}", logger, callbacks,
                   decide=False)
        for part in seconds:
            report = getattr(member.fit_result_, part)
            seconds[part] += report.seconds if report is not None else 0.0
    first = detector.members[0].fit_result_
    detector.fit_result_ = FitResult(
        replace(first.vae, seconds=seconds["vae"]), first.head and replace(first.head, seconds=seconds["head"]),
        first.is_global_zero, first.local and replace(first.local, seconds=seconds["local"]))
    if first.is_global_zero:
        members = detector.members
        own = [candidate_gains(member, member.prepared_["selection"], member.prepared_["draw"]) for member in members]
        shared = E.shared_gains(own)
        for name in sorted({n for gains in own for n in gains}):
            log.info("'%s' adds to the members' validation AUROC %s; each decides by the mean without the member that "
                     "selected on its calibration fold: %s", name,
                     " ".join(f"{gains.get(name, float('nan')):+.3f}" for gains in own),
                     " ".join(f"{gains.get(name, float('nan')):+.3f}" for gains in shared))
        for k, member in enumerate(members):
            finish_decision(member, datamodule.member(k), member.prepared_, int(cfg.data.batch_size),
                            int(member.spec.extra["seed"]), shared[k])
            del member.prepared_
        E.combine_fitted(detector.spec, [member.spec for member in detector.members])
        sizes = datamodule.sizes
        detector.spec.extra.update({"n_train": sizes.n_train, "n_selection": sizes.n_selection,
                                    "n_calibration": sizes.n_calibration, "n_members": sizes.n_members,
                                    "seed": int(cfg.seed)})


def choose_reconstruction(detector, datamodule, model_cfg: DictConfig, head_cfg: DictConfig, trainer_cfg: DictConfig,
                          checkpoint_dir: Path, seed: int, logger=None) -> FitReport | None:
    """Which reconstruction the map compares with (`spec.reconstruction`), by how much of the normal selection images'
    detail the global level draws (`model.global_detail_limit`): the global level's own where it draws the part
    (digits, a machined part), else the local level's restoration, trained here (textures, where the global level
    draws a blur). Every rank has the same weights and selection images, so every rank decides alike."""
    vae = detector.vae
    if getattr(vae, "conditional", False):
        return None
    ratio = global_detail_ratio(vae, datamodule.selection_images)
    detector.spec.validation = {"global_detail_error_ratio": round(ratio, 4)}
    limit = model_cfg.get("global_detail_limit")
    if getattr(vae, "local", None) is None:
        return None
    if limit is not None and ratio <= limit:
        detector.spec.reconstruction = "global"
        vae.local = None  # not needed: not trained, not saved
        log.info("the global level draws %.0f %% of the normal images' detail: the map compares with it",
                 100 * (1 - ratio))
        return None
    detector.spec.reconstruction = "local"
    synthesizer = head_synthesizers(head_cfg.synthesis)[0]
    return fit_local(vae, model_cfg, datamodule, trainer_cfg, checkpoint_dir / "local", synthesizer, seed,
                     normal_variation(detector, head_cfg, datamodule.train_images), logger)


def normal_variation(detector, head_cfg: DictConfig, train_images: torch.Tensor) -> NuisanceTransform | None:
    """The whole-image changes shown to the local level and the map as normal, only where the map compares with the
    local level's restoration: a convolutional code follows a shifted, turned or rescaled part everywhere, so the map
    sees what stays anomalous; the global level draws the part from one code and misses such a part at its outline,
    and a map taught that a misdrawn outline is normal lets a bent part pass (docs/defaults.md)."""
    if detector.spec.reconstruction != "local":
        return None
    return nuisance_transform(head_cfg.synthesis, train_images)


@torch.no_grad()
def fit_map_statistics(detector, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> None:
    """Per-pixel mean and std of the smoothed plain reconstruction maps of the training images (for the
    '_z' and 'balanced' map kinds); the selection and calibration images stay untouched."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in M.PLAIN_RECONSTRUCTION_KINDS}
    extra = tuple(f"map.{k}" for k in M.PLAIN_RECONSTRUCTION_KINDS)
    saved, detector.spec.detect = detector.spec.detect, {**detector.spec.detect, "map": "residual"}
    try:
        out = detector.score(images, labels, batch_size, extra=extra, keep=())
    finally:
        detector.spec.detect = saved
    for kind in M.PLAIN_RECONSTRUCTION_KINDS:
        parts[kind].append(torch.from_numpy(out[f"map.{kind}"]))
    statistics = {kind: M.pixel_statistics(torch.cat(maps)) for kind, maps in parts.items()}
    detector.spec.map_statistics = {kind: {"mean": mean.tolist(), "std": std.tolist()}
                                    for kind, (mean, std) in statistics.items()}


def component_transforms(components: list[str], map_kind: str) -> dict[str, str]:
    """Each fused component and the scale it is standardized on: the learned map's values are
    probabilities (logit), every other score a positive error (log)."""
    probability = map_kind == "head"
    return {c: "logit" if probability and c in ("map_max", "map_topk") else "log" for c in components}


def wants_whole_part_level(detector, scores: tuple[str, ...]) -> bool:
    """Whether a level of the whole part (linear, nearest parts) is fitted: `detect.components` names its score, the
    detector is not conditional (one level over every category would mix them), and the global level draws the part."""
    spec = detector.spec
    return (bool(set(scores) & set(spec.detect["components"])) and not getattr(detector.vae, "conditional", False)
            and draws_the_part(spec.validation.get("global_detail_error_ratio"), spec.model.get("global_detail_limit")))


def fit_linear_level(detector, train_images: torch.Tensor, seed: int) -> None:
    """Step 1's last fit: the linear level (models/linear.py) on the training images, where `detect.components`
    names its score and the global level draws the part (draws_the_part); fit_components then keeps it only where
    it raises the validation by detect.component_min_gain."""
    spec = detector.spec
    if not wants_whole_part_level(detector, S.LINEAR_SCORES):
        return
    try:
        level = LinearLevel.fit(train_images, float(spec.detect["linear_variance"]), seed)
    except ValueError as error:
        log.warning("no linear level: %s", error)
        return
    detector.linear = level
    spec.linear = {"n_features": int(level.mean.numel()), "n_components": level.n_components,
                   "explained_variance": round(level.explained_variance_, 4)}


def fit_nearest_level(detector, train_images: torch.Tensor) -> None:
    """Step 1's other level: the nearest-parts level (models/nearest.py) on the training images, where
    `detect.components` names its score and the global level draws the part. It joins the fused score there like the
    ELBO, without the label-free validation's say: the validation's anomalies are local, and a wrong whole part is
    what neither they nor the map show (docs/defaults.md, *The nearest-parts level*)."""
    spec = detector.spec
    if not wants_whole_part_level(detector, S.NEAREST_SCORES):
        return
    try:
        level = NearestLevel.fit(train_images, int(spec.detect["nearest_k"]), int(spec.detect["nearest_side"]))
    except ValueError as error:
        log.warning("no nearest-parts level: %s", error)
        return
    detector.nearest = level
    spec.nearest = {"n_references": int(level.references.shape[0]), "n_features": int(level.references.shape[1]),
                    "k": level.k, "grid": level.grid}


def base_and_candidates(spec, selection: dict) -> tuple[list[str], list[str], dict[str, dict]]:
    """The fused components that stay (keep_components), the candidates that must earn their place (the linear
    level's score, where it was fitted), and every one's standardization on the selection images."""
    kept = keep_components(list(spec.detect["components"]), spec.validation.get("global_detail_error_ratio"),
                           spec.model.get("global_detail_limit"))
    computed = [c for c in kept if c in selection]  # a level's score only where its level was fitted
    base = [c for c in computed if c not in S.LINEAR_SCORES]
    candidates = [c for c in computed if c in S.LINEAR_SCORES]
    return base, candidates, fit_standardization(selection, component_transforms([*base, *candidates],
                                                                                   spec.detect["map"]))


def fit_components(detector, selection: dict, draw: dict | None, decided: dict[str, float] | None = None) -> None:
    """Standardize the fused components on the selection images, keeping the ELBO and the linear level only where the
    global level draws the part (scoring/fusion.py: keep_components), the linear level's score only where it raises
    the label-free validation `draw` by at least detect.component_min_gain (keep_if_it_helps; without a validation
    draw, only as the sole component; `decided`: the gains that decide instead, a cross-conformal member's
    ensemble.shared_gains). What was kept and each candidate's gain go to `spec.validation`; a linear level left out
    is neither kept nor saved."""
    spec = detector.spec
    base, candidates, standardization = base_and_candidates(spec, selection)
    if draw is not None:
        kept, gains = keep_if_it_helps(base, candidates, standardization, draw["out"], draw["truth"],
                                       float(spec.detect["component_min_gain"]), decided)
        spec.validation.update({f"gain.{name}": round(gain, 4) for name, gain in gains.items()})
        spec.validation.update({f"shared_gain.{name}": round(gain, 4) for name, gain in (decided or {}).items()
                                if name in candidates})
    else:
        kept = base or candidates
    if not set(kept) & set(S.LINEAR_SCORES) and detector.linear is not None:
        gain = spec.validation.get("shared_gain.linear_max", spec.validation.get("gain.linear_max"))
        log.info("the linear level does not raise the fused score's validation AUROC by %s (gain %s): left out",
                 spec.detect["component_min_gain"], "not measured" if gain is None else f"{gain:+.4f}")
        detector.linear, spec.linear = None, None
    spec.standardization = {name: standardization[name] for name in kept}
    spec.validation["fused_components"] = kept


def validation_draw(detector, datamodule, head_cfg: DictConfig, batch_size: int, seed: int) -> dict:
    """The selection images with anomalies of the held-out kind (the same draw as the learned map's validation),
    scored by every component: what chooses the fused components and what `validate` reports."""
    _, validation_synth = head_synthesizers(head_cfg.synthesis)
    images, masks = validation_set(validation_synth, datamodule.selection_images, datamodule.train_images, seed + 1)
    out = detector.score(images, getattr(datamodule, "selection_labels", None), batch_size,
                         keep=("map", "reconstruction"))
    return {"kind": str(head_cfg.synthesis.validation_kind), "images": images, "masks": masks, "out": out,
            "truth": masks.flatten(1).amax(dim=1).numpy().astype(int)}


def validate(detector, datamodule, draw: dict) -> dict:
    """Image AUROC of every kept component and of the fused score, and pixel AUROC of the map, on the validation
    draw; the restoration check."""
    out, truth, masks = draw["out"], draw["truth"], draw["masks"]
    standardization = detector.spec.standardization
    scores = {**{name: out[name] for name in standardization}, S.FUSED: fuse(out, standardization)}
    result = {"kind": draw["kind"], "n_images": int(len(truth)), "n_anomalous": int(truth.sum()),
              "pixel_auroc": MET.pixel_auroc(list(masks[:, 0].numpy() > 0.5), list(out["map"])),
              **{f"image_auroc.{name}": MET.image_auroc(truth, values) for name, values in scores.items()},
              **restoration_check(datamodule.selection_images.numpy(), draw["images"].numpy(), masks.numpy() > 0.5,
                                  out["reconstruction"])}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def restoration_check(clean: np.ndarray, altered: np.ndarray, masks: np.ndarray, reconstruction: np.ndarray) -> dict:
    """How well the reconstruction restores the part, on selection images (N, C, S, S) with anomalies of the held-out
    kind (masks (N, 1, S, S) bool): `restoration.anomaly_error_ratio` = mean |reconstruction - clean| / mean
    |input - clean| inside the masks (0: the anomaly is removed, 1: copied); `restoration.detail_error_ratio` = mean
    |reconstruction - image| / mean |image - its own mean| on the images left normal (a flat blur gives about 1)."""
    inside = np.broadcast_to(masks, clean.shape)
    normal = ~masks.reshape(len(masks), -1).any(axis=1)
    result = {}
    if inside.any():
        result["restoration.anomaly_error_ratio"] = float(np.abs(reconstruction - clean)[inside].mean()
                                                          / max(np.abs(altered - clean)[inside].mean(), 1e-12))
    if normal.any():
        image = altered[normal]
        spread = np.abs(image - image.mean(axis=(1, 2, 3), keepdims=True)).mean()
        result["restoration.detail_error_ratio"] = float(np.abs(reconstruction[normal] - image).mean() / max(spread, 1e-12))
    return result


def calibrate(detector, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> None:
    """Score the calibration images once, with every setting fixed: every score's calibration scores (so the
    decision score may change at score time), the pixel threshold and the drift reference."""
    spec = detector.spec
    out = detector.score(images, labels, batch_size, extra=(*S.MONTE_CARLO_SCORES, *S.STRUCTURE_SCORES))
    spec.calibration_scores = {name: [float(v) for v in out[name]] for name in S.SCORE_NAMES if name in out}
    spec.calibration_labels = None if labels is None else [int(v) for v in labels]
    spec.pixel_threshold = pixel_threshold(out["map"], float(spec.detect["pixel_quantile"]))
    spec.drift_reference = image_statistics(images).tolist()


def fit_decision(detector, datamodule, head_cfg: DictConfig, batch_size: int, seed: int) -> None:
    """Steps 1 (statistics), 2 and 3 on rank 0, after the networks are trained."""
    finish_decision(detector, datamodule, prepare_decision(detector, datamodule, head_cfg, batch_size, seed),
                    batch_size, seed)


def prepare_decision(detector, datamodule, head_cfg: DictConfig, batch_size: int, seed: int) -> dict:
    """Step 1's statistics and linear level, and the selection images scored (plain and with the validation's
    anomalies): what step 2 chooses from."""
    fit_map_statistics(detector, datamodule.train_images, getattr(datamodule, "train_labels", None), batch_size)
    fit_linear_level(detector, datamodule.train_images, seed)
    fit_nearest_level(detector, datamodule.train_images)
    selection = detector.score(datamodule.selection_images, getattr(datamodule, "selection_labels", None), batch_size,
                               keep=())
    draw = validation_draw(detector, datamodule, head_cfg, batch_size, seed) if detector.head is not None else None
    return {"selection": selection, "draw": draw}


def candidate_gains(detector, selection: dict, draw: dict | None) -> dict[str, float]:
    """What each candidate component (the linear level's score) adds to the fused score's validation AUROC, each
    measured against the base components alone (a bar of infinity keeps none of them)."""
    base, candidates, standardization = base_and_candidates(detector.spec, selection)
    if draw is None or not base or not candidates:
        return {}
    return keep_if_it_helps(base, candidates, standardization, draw["out"], draw["truth"], math.inf)[1]


def finish_decision(detector, datamodule, prepared: dict, batch_size: int, seed: int,
                    decided: dict[str, float] | None = None) -> None:
    """Step 2 (the fused components, by their own gains or by `decided`) and step 3 (calibration)."""
    draw = prepared["draw"]
    fit_components(detector, prepared["selection"], draw, decided)
    if draw is not None:
        detector.spec.validation.update(validate(detector, datamodule, draw))
    calibrate(detector, datamodule.calibration_images, getattr(datamodule, "calibration_labels", None), batch_size)
    sizes = datamodule.sizes
    detector.spec.extra.update({"n_train": sizes.n_train, "n_selection": sizes.n_selection,
                                "n_calibration": sizes.n_calibration, "seed": seed})

