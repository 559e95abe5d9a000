"""The decision settings a command may change at score time, and the refusal to judge with a threshold
that cannot fire. Settings fixed at training are checked by config.check_fixed_overrides."""

from __future__ import annotations

import logging
import math

from omegaconf import DictConfig

from pipeline.config import check_fixed_overrides, override_key
from pipeline.detector import calibration as C
from pipeline.detector.spec import FIXED_GROUPS, FIXED_KEYS

log = logging.getLogger(__name__)

DECISION_KEYS = ("score.score", "score.alpha", "score.threshold_method", "score.manual_threshold")


class UnableToFlag(ValueError):
    """The detector's threshold is infinite at the requested alpha: nothing could ever be flagged."""


def given(cfg: DictConfig) -> set[str]:
    """The dotted keys set on the command line."""
    return {override_key(o) for o in cfg.get("command_line", [])}


def apply_decision(detector, cfg: DictConfig) -> None:
    """The decision settings given on the command line replace the stored ones (recalibrated from the
    stored calibration scores); the rest stay as the detector was trained."""
    keys = given(cfg)
    chosen = {key.split(".", 1)[1]: cfg.score[key.split(".", 1)[1]] for key in DECISION_KEYS if key in keys}
    if "threshold_method" not in chosen and "manual_threshold" in chosen:
        chosen["threshold_method"] = "manual"
    detector.set_decision(score=chosen.get("score"), alpha=chosen.get("alpha"), method=chosen.get("threshold_method"),
                          manual_threshold=chosen.get("manual_threshold"))


def unable_to_flag_message(detector) -> str:
    """'' when every threshold is finite; otherwise what is wrong and what to do."""
    if C.can_flag(detector.spec):
        return ""
    worst = min(C.guarantees(detector.spec).values(), key=lambda g: g["n_calibration"])
    return (f"the threshold cannot flag anything at alpha={detector.spec.alpha:g}: the detector has "
            f"{worst['n_calibration']} calibration images and that alpha needs "
            f"{math.ceil(1 / detector.spec.alpha - 1e-9) - 1}. The smallest alpha it can promise is "
            f"{worst['smallest_alpha']:.3g}: pass score.alpha={worst['smallest_alpha']:.3g} (or larger), retrain with more "
            "normal images, or pass score.allow_unable_to_flag=true to judge anyway (nothing will be flagged)")


def prepare_decision(detector, cfg: DictConfig, judges: bool = True) -> str:
    """Apply the command line's decision settings; refuse (UnableToFlag) a threshold that cannot fire when the
    command judges images, unless score.allow_unable_to_flag. Returns the problem ('' when none)."""
    apply_decision(detector, cfg)
    problem = unable_to_flag_message(detector)
    if problem and judges:
        if not cfg.score.allow_unable_to_flag:
            raise UnableToFlag(problem)
        log.error("score.allow_unable_to_flag=true: %s", problem)
    return problem


def check_and_decide(detector, cfg: DictConfig, provenance: dict, judges: bool = True) -> None:
    """Refuse overrides of settings fixed at training; apply the decision settings given; record whether the
    threshold can fire (provenance['unable_to_flag'])."""
    provenance["weights_sha256"] = detector.spec.weights_sha256
    provenance.setdefault("model_run_id", detector.spec.extra.get("run_id"))
    check_fixed_overrides(cfg, detector.spec.fixed_settings(), FIXED_GROUPS, FIXED_KEYS, provenance["model_source"])
    provenance["unable_to_flag"] = prepare_decision(detector, cfg, judges)
