"""AnomalyDetector: the VAE and the learned anomaly map, with everything needed to judge images later.

scikit-learn / PyOD style: `fit` learns (training, selection and calibration, detector/fitting.py) and sets
the fitted state (names ending in '_'); `score` gives every requested per-image score and the anomaly maps,
`decision_function` the decision score, `predict` the label. Higher score = more anomalous; label 1 = anomaly
(PyOD's convention). A detector is saved and loaded whole, as one folder, atomically:

    detector.json   the DetectorSpec: preprocessing, settings fixed at training, fitted state, the decision
    weights.pt      the networks' state_dicts ('vae.*', 'head.*', and 'linear.*' / 'nearest.*' where the fit kept the
                    linear / nearest-parts level), loaded with torch.load(weights_only=True)

For small normal sets (data.split.scheme=cross) the detector holds K member detectors, one per calibration fold
(`members`; detector/ensemble.py): every score is their cross-conformal rank score; one detector.json keeps the
members' specs and one weights.pt their networks ('member<k>.vae.*', ...).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from omegaconf import DictConfig, OmegaConf

from pipeline.data.images import ReadOptions
from pipeline.detector import calibration as C
from pipeline.detector import ensemble as E
from pipeline.detector.compute import HEAD_MAP, MAP_KINDS, BatchComputer
from pipeline.detector.spec import DETECTOR_FILE, WEIGHTS_FILE, DetectorSpec
from pipeline.models.cvae import conditioned
from pipeline.models.factory import build_network
from pipeline.models.head import AnomalyHead
from pipeline.models.linear import LinearLevel
from pipeline.models.nearest import NearestLevel
from pipeline.scoring import maps as M
from pipeline.scoring import scores as S
from pipeline.scoring.fusion import fuse


def check_settings(spec: DetectorSpec) -> None:
    """ValueError naming the key when settings contradict each other or name what does not exist."""
    detect = spec.detect
    if detect["map"] not in MAP_KINDS:
        raise ValueError(f"detect.map must be one of {MAP_KINDS}, got {detect['map']!r}")
    if detect["map"] == HEAD_MAP and not spec.head:
        raise ValueError("detect.map=head needs the learned anomaly map: set head.enabled=true or another detect.map")
    unknown = [c for c in detect["components"] if c not in S.COMPONENTS]
    if unknown or not detect["components"]:
        raise ValueError(f"detect.components must be a non-empty list of {S.COMPONENTS}, got {list(detect['components'])}")
    if S.NEAREST_SCORES[0] in detect["components"] and min(detect.get("nearest_k", 0), detect.get("nearest_side", 0)) < 1:
        raise ValueError(f"detect.nearest_k and detect.nearest_side must be at least 1 for {S.NEAREST_SCORES[0]}, got "
                         f"{detect.get('nearest_k')} and {detect.get('nearest_side')}")
    if spec.score not in S.SCORE_NAMES:
        raise ValueError(f"score.score must be one of {S.SCORE_NAMES}, got {spec.score!r}")


class TamperedModelError(ValueError):
    """A model file whose checksum differs from the one recorded when it was trained."""


class AnomalyDetector:
    def __init__(self, spec: DetectorSpec, vae: torch.nn.Module | None = None, head: AnomalyHead | None = None):
        m = spec.model
        self.spec = spec
        self.members: list[AnomalyDetector] = []
        self._fold_tables = None
        if spec.scheme == "cross":
            self.members = [AnomalyDetector(DetectorSpec(**member)) for member in spec.members]
            # what shows one network (review panels' latent maps, export, reports) shows member 1's
            self.vae, self.head, self.linear, self.nearest = self.members[0].vae, self.members[0].head, None, None
            return
        self.vae = vae if vae is not None else build_network(
            m["kind"], spec.in_channels, spec.image_size, m["latent_dim"], m["hidden_channels"], m["latent_layout"],
            n_classes=len(spec.categories or []), local=m.get("local"), codebook_size=m.get("codebook_size", 128),
            commitment=m.get("commitment", 0.25))
        self.head = head if head is not None or not spec.head else AnomalyHead(
            spec.in_channels, spec.head["widths"], bool(spec.head.get("channels_last", False)))
        if spec.reconstruction == "global" and getattr(self.vae, "local", None) is not None:
            self.vae.local = None  # the fit chose the global level's reconstruction: the local level was not trained
        self.linear = LinearLevel(spec.linear["n_features"], spec.linear["n_components"]) if spec.linear else None
        self.nearest = NearestLevel(**{k: spec.nearest[k] for k in ("n_references", "n_features", "k", "grid")}
                                    ) if spec.nearest else None
        self.eval()

    @classmethod
    def from_config(cls, cfg: DictConfig, read_options: ReadOptions, categories: list[str] | None = None,
                    n_members: int = 1) -> "AnomalyDetector":
        """An unfitted detector with the networks and settings the config names (model, head, detect, score);
        `n_members` > 1: a cross-conformal detector of that many members (data.split.scheme)."""
        def plain(node) -> dict:
            return OmegaConf.to_container(node, resolve=True)

        spec = DetectorSpec(
            in_channels=cfg.data.channels, image_size=cfg.data.image_size, max_image_pixels=read_options.max_pixels,
            strict_channels=read_options.strict_channels,
            expected_size=list(read_options.expected_size) if read_options.expected_size else None,
            model=plain(cfg.model), head=plain(cfg.head) if cfg.head.enabled else None,
            categories=list(categories) if categories else None, detect=plain(cfg.detect), score=cfg.score.score,
            alpha=cfg.score.alpha, threshold_method=cfg.score.threshold_method,
            manual_threshold=cfg.score.manual_threshold, extra={"seed": int(cfg.seed)})
        check_settings(spec)  # before hours of training, not after
        if n_members > 1:
            if categories:
                raise ValueError("a conditional detector cannot be cross-conformal (data.split.scheme=cross)")
            spec.members, spec.scheme = E.member_specs(spec, n_members), "cross"
        return cls(spec)

    def fit(self, datamodule, cfg: DictConfig, checkpoint_dir: Path, logger=None, callbacks=(),
            resume: Path | None = None, decide: bool = True) -> "AnomalyDetector":
        """Train the networks on the training images, standardize and validate on the selection images,
        calibrate on the calibration images (detector/fitting.py). Under DDP every rank trains; only rank 0
        goes on (`fit_result_.is_global_zero`). The fit's reports are kept as `fit_result_`. `decide=False` (a
        cross-conformal member) stops before the choices, with what they need in `prepared_`."""
        from pipeline.detector import fitting  # here: training needs Lightning, scoring need not import it (seconds)

        if self.members:
            fitting.fit_members(self, datamodule, cfg, checkpoint_dir, logger, callbacks, resume)
            return self
        torch.manual_seed(int(cfg.seed))
        self.fit_result_ = fitting.fit_networks(self, datamodule, cfg.model, cfg.head, cfg.trainer, checkpoint_dir,
                                                int(cfg.seed), logger, callbacks, resume)
        if self.fit_result_.is_global_zero:
            self.to("cpu")  # selection and calibration run in this one process, in float32
            if decide:
                fitting.fit_decision(self, datamodule, cfg.head, int(cfg.data.batch_size), int(cfg.seed))
            else:
                self.prepared_ = fitting.prepare_decision(self, datamodule, cfg.head, int(cfg.data.batch_size),
                                                          int(cfg.seed))
        return self

    # ---- networks ------------------------------------------------------------------------------------------
    def networks(self) -> list[torch.nn.Module]:
        if self.members:
            return [net for member in self.members for net in member.networks()]
        return [net for net in (self.vae, *(level for _, level in self.fitted_levels())) if net is not None]

    def fitted_levels(self) -> list[tuple[str, torch.nn.Module | None]]:
        """The networks beside the VAE (None where the detector has none), by the prefix of their weights in
        weights.pt."""
        return [("head", self.head), ("linear", self.linear), ("nearest", self.nearest)]

    def eval(self) -> "AnomalyDetector":
        for net in self.networks():
            net.eval()
        return self

    def to(self, device: torch.device | str) -> "AnomalyDetector":
        for net in self.networks():
            net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def computer(self) -> BatchComputer | list[BatchComputer]:
        """The batch computation for the current weights and fitted statistics (one per member, cross)."""
        if self.members:
            return [member.computer() for member in self.members]
        eps = torch.randn(self.spec.detect["mc_samples"], self.vae.latent_size,
                          generator=torch.Generator().manual_seed(int(self.spec.extra.get("seed", 0))))
        return BatchComputer(self.vae, self.head, self.spec.detect, self.spec.model["recon_loss"],
                             M.statistics_tensors(self.spec.map_statistics), eps, self.linear, self.nearest)

    # ---- scoring ---------------------------------------------------------------------------------------------
    def score_batch(self, x: torch.Tensor, labels: torch.Tensor | None = None, extra: tuple[str, ...] = (),
                    computer: BatchComputer | None = None) -> dict[str, torch.Tensor]:
        """One batch x (B, C, S, S) in [0, 1]: reconstruction, mu, map (B, S, S), every base score (B,), the
        fused score when the detector is fitted, and the requested extras. `labels`: categories (conditional)."""
        if self.members:
            computers = computer or self.computer()
            outputs = [m.score_batch(x, labels, extra, c) for m, c in zip(self.members, computers)]
            return E.combine_outputs(outputs, self.fold_tables())
        x = x.to(self.device, non_blocking=True)
        with conditioned(self.vae, labels):
            out = (computer or self.computer())(x, extra)
        if self.spec.standardization:
            components = {name: out[name].cpu().numpy() for name in self.spec.standardization}
            out[S.FUSED] = torch.from_numpy(fuse(components, self.spec.standardization)).to(x.device)
        return out

    def fold_tables(self) -> dict:
        """Cross: each member's calibration scores per score name (detector/ensemble.py), built once."""
        if self._fold_tables is None:
            self._fold_tables = E.fold_tables([member.spec for member in self.members])
        return self._fold_tables

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 64,
              extra: tuple[str, ...] = (), keep: tuple[str, ...] = ("map",)) -> dict[str, np.ndarray]:
        """In-memory images (N, C, S, S) -> every score (N,) and the `keep` tensors ('map', 'reconstruction',
        'mu', 'map.<kind>') as arrays."""
        computer, parts = self.computer(), {}
        for start in range(0, len(images), batch_size):
            chunk = None if labels is None else labels[start:start + batch_size]
            out = self.score_batch(images[start:start + batch_size], chunk, extra, computer)
            for key, value in out.items():
                if value.dim() == 1 or key in keep or key.startswith("map.") and key in extra:
                    parts.setdefault(key, []).append(value.float().cpu())
        return {key: torch.cat(chunks).numpy() for key, chunks in parts.items()}

    def decision_function(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
        """The decision score (spec.score) of every image, (N,)."""
        extra = (self.spec.score,) if self.spec.score not in (*S.BASE_SCORES, S.FUSED) else ()
        return self.score(images, labels, extra=extra, keep=())[self.spec.score]

    def p_values(self, scores: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        return C.p_values(self.spec, scores, labels)

    def predict(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
        """1 = anomaly (score above the calibrated threshold), 0 = normal, (N,)."""
        numpy_labels = None if labels is None else labels.numpy()
        return C.decide(self.spec, self.decision_function(images, labels), numpy_labels)[0]

    # ---- the decision (sklearn style: fitted state ends in '_') ----------------------------------------------
    @property
    def thresholds_(self) -> dict[int | None, float]:
        """Threshold per category (conditional) or {None: threshold}; +inf where nothing can be flagged."""
        if not self.spec.calibration_scores:
            raise RuntimeError("the detector is not calibrated: fit it first")
        return C.thresholds(self.spec)

    @property
    def threshold_(self) -> float:
        """The threshold of a single-group detector (for a conditional one: the largest of its thresholds)."""
        return max(self.thresholds_.values())

    @property
    def calibration_scores_(self) -> np.ndarray:
        return C.calibration_scores(self.spec)

    def set_decision(self, score: str | None = None, alpha: float | None = None, method: str | None = None,
                     manual_threshold: float | None = None) -> "AnomalyDetector":
        """Choose the decision score, alpha or threshold method (score time); thresholds follow from the
        stored calibration scores of that score."""
        if score is not None:
            C.calibration_scores(self.spec, score)  # a clear error when the score was not calibrated
            self.spec.score = score
        if alpha is not None:
            if not 0.0 < alpha < 1.0:
                raise ValueError(f"score.alpha must be in (0, 1), got {alpha}")
            self.spec.alpha = float(alpha)
        if method is not None:
            if method not in C.THRESHOLD_METHODS:
                raise ValueError(f"score.threshold_method must be one of {C.THRESHOLD_METHODS}, got {method!r}")
            self.spec.threshold_method = method
        if manual_threshold is not None:
            self.spec.manual_threshold = float(manual_threshold)
        C.thresholds(self.spec)
        return self

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.members:
            return {f"member{k}.{key}": value for k, member in enumerate(self.members)
                    for key, value in member.state_dict().items()}
        state = {f"vae.{k}": v.detach().cpu() for k, v in self.vae.state_dict().items()}
        for name, net in self.fitted_levels():
            if net is not None:
                state.update({f"{name}.{k}": v.detach().cpu() for k, v in net.state_dict().items()})
        return state

    def save(self, folder: Path | str) -> Path:
        """Write the folder whole or not at all: into a temporary sibling, then renamed into place (an
        existing detector there is replaced only once the new one is complete)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            torch.save(self.state_dict(), tmp / WEIGHTS_FILE)
            self.spec.weights_sha256 = file_sha256(tmp / WEIGHTS_FILE)
            (tmp / DETECTOR_FILE).write_text(self.spec.to_json())
            for path in (tmp / WEIGHTS_FILE, tmp / DETECTOR_FILE):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(folder, old)
                os.rename(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: Path | str, map_location: str | torch.device = "cpu",
             expected_sha256: str | None = None) -> "AnomalyDetector":
        """Load a saved detector. The weights' checksum must match detector.json's and, when given,
        `expected_sha256` (recorded in the model registry at training time): a tampered or corrupted
        model file is refused before anything is deserialized."""
        folder = Path(folder)
        spec_file = folder / DETECTOR_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file} not found: not a detector folder")
        spec = DetectorSpec.from_json(spec_file.read_text(), str(spec_file))
        verify_weights(folder, spec.weights_sha256, expected_sha256)
        detector = cls(spec)
        detector.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True))
        return detector.eval()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.members:
            for k, member in enumerate(self.members):
                prefix = f"member{k}."
                member.load_state_dict({key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)})
            return
        self.vae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("vae.")})
        for name, net in self.fitted_levels():
            if net is not None:
                net.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.")})


def verify_weights(folder: Path | str, recorded_sha256: str | None, expected_sha256: str | None = None) -> None:
    """Refuse (TamperedModelError) weights whose checksum differs from the one recorded in detector.json
    or from `expected_sha256` (e.g. recorded in the model registry at training time)."""
    path = Path(folder) / WEIGHTS_FILE
    actual = file_sha256(path)
    for source, expected in (("detector.json", recorded_sha256), ("the registry", expected_sha256)):
        if expected is not None and expected != actual:
            raise TamperedModelError(f"{path}: checksum {actual[:12]}... does not match the one recorded in {source} "
                                     f"({expected[:12]}...): refusing to load a modified model")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
