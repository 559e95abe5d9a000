"""A cross-conformal detector's members combined (data.split.scheme=cross, scoring/cross_conformal.py).

K member detectors, each fitted on its own folds (data/splits.py: cross_fold_indices): the combined detector's every
score is the rank score of the members' scores against their own calibration folds, its map and reconstruction
the members' mean. Pure functions over member specs and member outputs: the detector (detector.py) calls them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.detector.spec import DetectorSpec
from pipeline.scoring import cross_conformal as X

MEAN_KEYS = ("map", "reconstruction")  # averaged over members; other tensors (mu, ...) are member 1's


def member_seed(seed: int, k: int) -> int:
    """Member k's seed (weights, synthetic anomalies): members differ in more than their folds."""
    return int(seed) + 1000 * k


def member_specs(spec: DetectorSpec, n_members: int) -> list[dict]:
    """The unfitted members' specs: the combined spec's settings, each with its own seed."""
    base = dataclasses.replace(spec, scheme="split", members=[])
    seed = base.extra.get("seed", 0)
    return [dataclasses.asdict(dataclasses.replace(base, extra={**base.extra, "seed": member_seed(seed, k)}))
            for k in range(n_members)]


def stored_member_spec(spec: DetectorSpec) -> dict:
    """A fitted member's spec as the combined detector.json keeps it (its weights are in the combined file)."""
    return dataclasses.asdict(dataclasses.replace(spec, weights_sha256=None))


def fold_tables(members: list[DetectorSpec]) -> dict[str, list[X.FoldTable]]:
    """Per score name every member calibrated: each member's calibration scores as a fold table."""
    names = set.intersection(*(set(m.calibration_scores) for m in members)) if members else set()
    return {name: [X.FoldTable(np.asarray(m.calibration_scores[name])) for m in members] for name in sorted(names)}


def deciding_members(k: int, n_members: int) -> list[int]:
    """The members whose validation decides member k's components: all but member k - 1, whose selection images
    lie in member k's calibration fold (data/splits.py: cross_fold_indices selects on the next fold)."""
    left_out = (k - 1) % n_members
    return [j for j in range(n_members) if j != left_out or j == k]  # one member alone decides for itself


def shared_gains(member_gains: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per member k, the gain that decides whether a candidate component joins its fused score: the mean of the
    members' measured gains, leaving out member k - 1, whose selection images lie in member k's calibration fold
    (data/splits.py: cross_fold_indices). One member's validation holds a tenth of a small set (16 images, a
    handful anomalous) and often cannot tell; the members then fuse different components, disagree on which parts
    look odd, and their cross-conformal rank loses what each of them sees."""
    n, decided = len(member_gains), []
    for k in range(n):
        others = [member_gains[j] for j in deciding_members(k, n)]
        names = {name for gains in others for name in gains}
        decided.append({name: float(np.mean([g[name] for g in others if name in g])) for name in sorted(names)})
    return decided


def combine_outputs(outputs: list[dict[str, torch.Tensor]], tables: dict[str, list[X.FoldTable]]
                    ) -> dict[str, torch.Tensor]:
    """The members' outputs of one batch as one: a calibrated score as its rank score, maps and reconstructions
    averaged, any other score averaged (no calibration to rank it against), other tensors from member 1. A score only
    some members compute (linear_max, where only their fits kept the linear level) is left out."""
    first, combined = outputs[0], {}
    for key, value in first.items():
        if any(key not in out for out in outputs[1:]):
            continue
        parts = [out[key] for out in outputs]
        if key in tables:
            rank = X.rank_scores([p.detach().double().cpu().numpy() for p in parts], tables[key])
            combined[key] = torch.from_numpy(rank).to(value.device)
        elif key in MEAN_KEYS or key.startswith("map.") or value.dim() == 1:
            combined[key] = torch.stack([p.float() for p in parts]).mean(dim=0)
        else:
            combined[key] = value
    return combined


def combine_fitted(spec: DetectorSpec, members: list[DetectorSpec]) -> None:
    """The combined spec's fitted state from its fitted members: calibration scores on the rank scale (each image
    within its own fold: what the histogram shows), the members' mean pixel threshold, every member's calibration
    images as the drift reference, the validation numbers averaged over members."""
    tables = fold_tables(members)
    spec.calibration_scores = {
        name: [float(v) for v in X.own_fold_rank_scores(folds, [np.asarray(m.calibration_scores[name]) for m in members])]
        for name, folds in tables.items()}
    spec.calibration_labels = None
    spec.pixel_threshold = float(np.mean([m.pixel_threshold for m in members]))
    spec.drift_reference = [row for m in members for row in m.drift_reference]
    spec.standardization, spec.map_statistics = members[0].standardization, {}
    kinds = {m.reconstruction for m in members}
    spec.reconstruction = kinds.pop() if len(kinds) == 1 else "mixed"
    numeric = set.intersection(*({k for k, v in m.validation.items() if isinstance(v, (int, float))} for m in members))
    spec.validation = {**{k: v for k, v in members[0].validation.items() if k not in numeric},
                       **{k: round(float(np.mean([m.validation[k] for m in members])), 4) for k in sorted(numeric)},
                       "cross_members": len(members)}
    spec.members = [stored_member_spec(m) for m in members]
