"""Logging a finished training or scoring run to MLflow, and finding the detector to score with."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from omegaconf import DictConfig

from pipeline.config import PACKAGE_DIR
from pipeline.detector import file_sha256, verify_weights
from pipeline.detector.spec import DETECTOR_FILE, WEIGHTS_FILE
from pipeline.tracking import registry
from pipeline.tracking.store import experiment_id, open_store, tracking_uri

MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH = 1000, 100  # MLflow's limits on one log_batch request

log = logging.getLogger(__name__)

CHAMPION = "champion"
PYFUNC_CODE = PACKAGE_DIR / "tracking" / "pyfunc_model.py"
# What the pyfunc model needs to load elsewhere; given explicitly so MLflow does not have to
# import and run the model to infer it.
MODEL_REQUIREMENTS = ["torch>=2.4", "mlflow>=3.5,<4", "numpy>=1.26", "pandas>=2.1", "pillow>=10.3", "omegaconf>=2.3",
                      "pytorch-lightning>=2.5,<2.7", "scikit-learn>=1.4", "scipy>=1.11"]
# The pyfunc's input, logged as its signature (MLflow cannot infer one from a DataFrame type hint): image paths,
# and each image's category for a conditional detector.
INPUT_SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "image_path"),
                                                ColSpec("string", "category", required=False)]))


@contextmanager
def fluent_store(uri: str):
    """Point MLflow's fluent API (log_model, register_model) at `uri` for the block, then restore the
    previous URI and MLFLOW_TRACKING_URI: set_tracking_uri also sets that variable, which would otherwise
    leak into every later command composed in the same process."""
    previous, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_detector_model(client: MlflowClient, run_id: str, detector_dir: Path, registered_model: str | None,
                       description: str = "") -> dict:
    """Log the detector folder as plain artifacts (`detector/`) and as a pyfunc model (`model`), and
    register a new model version with `description`; the very first version becomes the champion."""
    client.log_artifacts(run_id, str(detector_dir), artifact_path="detector")
    with fluent_store(client.tracking_uri), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # MLflow advises an input example beside a signature; ours would be an image path on this machine, which
        # means nothing where the model is loaded (and MLflow would score it at logging): the signature says it all.
        warnings.filterwarnings("ignore", message=".*An input example was not provided when logging the model")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), artifacts={"detector": str(detector_dir)},
            code_paths=[str(PACKAGE_DIR)], pip_requirements=MODEL_REQUIREMENTS, signature=INPUT_SIGNATURE)
    result = {"model_uri": info.model_uri, "model_id": info.model_id, "weights_sha256": file_sha256(detector_dir / WEIGHTS_FILE)}
    client.set_tag(run_id, "weights_sha256", result["weights_sha256"])
    if registered_model:
        with fluent_store(client.tracking_uri):
            version = mlflow.register_model(info.model_uri, registered_model)
        result["registered_model"], result["version"] = registered_model, version.version
        client.set_model_version_tag(registered_model, version.version, "weights_sha256", result["weights_sha256"])
        if description:
            client.update_model_version(registered_model, version.version, description=description)
        if str(version.version) == "1":
            client.set_registered_model_alias(registered_model, CHAMPION, version.version)
    return result


def find_latest_training_run(client: MlflowClient, cfg: DictConfig, data_root: str) -> str:
    """Run id of the newest finished training run on `data_root`."""
    exp = client.get_experiment_by_name(cfg.tracking.train_experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string="attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=500)
    for run in runs:
        if run.data.tags.get("data_root") == data_root and run.data.tags.get("has_detector") == "true":
            return run.info.run_id
    raise LookupError(f"no finished training run on {data_root} in experiment '{cfg.tracking.train_experiment}' "
                      f"of {tracking_uri(cfg)}: run `python -m pipeline train data.root={data_root}` first, "
                      "or set detector=<model URI, version, run id or detector folder>")


def resolve_detector(cfg: DictConfig, spec: str, data_root: str, download_to: Path | str) -> tuple[Path, dict]:
    """A local detector folder for `spec` plus provenance (model source, name, version, run id).

    spec: 'latest' (the newest registered version of tracking.registered_model; the newest training run
    on `data_root` when nothing is registered) | 'champion' or '@<alias>' | a version number |
    a 'models:/...' or 'runs:/...' URI | a training run id | a local detector or model folder.
    download_to: an existing folder (the caller's to remove) for a detector that has to be downloaded.
    """
    spec = str(spec)
    local = Path(spec).expanduser()
    if spec not in ("latest", registry.CHAMPION) and not spec.isdigit() and local.is_dir():
        found = _find_detector(local)
        return found, {"model_source": str(found.resolve())}
    client = open_store(cfg)
    download_to = Path(download_to)
    name = cfg.tracking.registered_model
    uri = registry.registry_uri(client, name, spec)
    if uri is not None:
        provenance = {"model_source": uri, **registry.describe(client, uri)}
        path = _download(cfg, artifact_uri=uri, dst_path=str(download_to), tracking_uri=tracking_uri(cfg))
        found = _find_detector(Path(path))
        # Whoever uses a registered version gets weights checked against the checksum the registry recorded
        # at training time: rewriting both weights.pt and detector.json in the artifact store is caught.
        recorded = json.loads((found / DETECTOR_FILE).read_text()).get("weights_sha256")
        verify_weights(found, recorded, provenance.get("registered_weights_sha256"))
        return found, provenance
    if spec == "latest" or registry.RUN_ID.fullmatch(spec):
        run_id = find_latest_training_run(client, cfg, data_root) if spec == "latest" else spec
        path = _download(cfg, run_id=run_id, artifact_path="detector", dst_path=str(download_to),
                         tracking_uri=tracking_uri(cfg))
        found = _find_detector(Path(path))
        return found, _registered_run(client, name, run_id, found, {"model_source": f"runs:/{run_id}/detector",
                                                                    "model_run_id": run_id})
    if spec.startswith("runs:/"):
        path = _download(cfg, artifact_uri=spec, dst_path=str(download_to), tracking_uri=tracking_uri(cfg))
        found, run_id = _find_detector(Path(path)), spec.removeprefix("runs:/").split("/")[0]
        return found, _registered_run(client, name, run_id, found, {"model_source": spec})
    raise ValueError(f"model={spec!r} is neither 'latest', 'champion', a version number, an existing folder, "
                     "a models:/ or runs:/ URI, nor a 32-character run id")


def _registered_run(client: MlflowClient, name: str, run_id: str, found: Path, provenance: dict) -> dict:
    """`provenance`, with the registered version of training run `run_id` when it has one; then its weights are
    held to the registry's checksum, exactly as when the version is named (a run id is no way around it)."""
    version = registry.version_of_run(client, name, run_id) if registry.RUN_ID.fullmatch(run_id) else None
    if version is None:
        return provenance
    provenance = {**provenance, **registry.describe(client, f"models:/{name}/{version}")}
    recorded = json.loads((found / DETECTOR_FILE).read_text()).get("weights_sha256")
    verify_weights(found, recorded, provenance.get("registered_weights_sha256"))
    return provenance


def _download(cfg: DictConfig, **kwargs) -> str:
    """download_artifacts on the configured store; models:/ URIs resolve through the fluent registry URI,
    which may point elsewhere when another command ran in this process (Lightning sets it)."""
    with fluent_store(tracking_uri(cfg)):
        return mlflow.artifacts.download_artifacts(**kwargs)


def _find_detector(folder: Path) -> Path:
    if (folder / DETECTOR_FILE).is_file():
        return folder
    found = sorted(p.parent for p in folder.rglob(DETECTOR_FILE))
    if not found:
        raise FileNotFoundError(f"no {DETECTOR_FILE} under {folder}: not a detector or model folder")
    return found[0]


def start_run(cfg: DictConfig, experiment: str, run_name: str, tags: dict[str, str]) -> tuple[MlflowClient, str]:
    """Create a run in `experiment` through the client (no fluent active run is left behind)."""
    client = open_store(cfg)
    run = client.create_run(experiment_id(client, cfg, experiment), run_name=run_name, tags=tags)
    return client, run.info.run_id


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float]) -> None:
    """Many metrics of one run at step 0 in as few requests as MLflow allows: one request per metric made a
    scoring run's dozens of per-defect-type numbers a noticeable share of `score`."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, 0) for key, value in values.items() if value is not None]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])


def log_params(client: MlflowClient, run_id: str, values: dict[str, str]) -> None:
    """Many parameters of one run in as few requests as MLflow allows."""
    params = [Param(key, value) for key, value in values.items()]
    for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
