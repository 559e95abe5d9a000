"""The model an inspection judges with: the registry's champion by default, cached on local disk.

`models:/<name>@<alias>` is resolved to a concrete version on every run (so a promotion takes effect
on the next batch) and the version's detector folder is cached under <output_dir>/models/<name>/v<N>/.
When MLflow cannot be reached, the version used last time for the same spec is taken from the cache,
with a warning, so a tracking-server outage never stops the line's inspection.

The cache is trusted no more than the registry: a cached copy loads only when its weights have the
SHA-256 the registry recorded for the version. A copy that does not is discarded and fetched again
(verified like any download); when MLflow is unreachable it cannot be, and the inspection is refused
with the file named, never run on a modified model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline.detector import AnomalyDetector, TamperedModelError, file_sha256
from pipeline.detector.spec import DETECTOR_FILE, WEIGHTS_FILE
from pipeline.tracking import registry
from pipeline.tracking.runs import resolve_detector
from pipeline.tracking.store import tracking_uri

log = logging.getLogger(__name__)

LAST_USED = "last_used.json"


def configure_client(cfg: DictConfig) -> None:
    """For a scheduled job, unless the environment says otherwise: short MLflow HTTP timeouts and
    retries (an outage sends batches to the outbox instead of stalling the line), and no run URLs
    printed to stdout (stdout carries the job's JSON summary)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(cfg.inspect.mlflow_request_timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.inspect.mlflow_request_retries))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def model_spec(cfg: DictConfig) -> str:
    """The `detector` key (default for inspection: champion, what was promoted), as a model URI where it names one."""
    spec = "champion" if cfg.get("detector") in (None, "") else str(cfg.detector)
    return f"models:/{cfg.tracking.registered_model}@champion" if spec == "champion" else spec


def _copy_detector(src: Path, dst: Path) -> None:
    """Copy the two files of a detector folder into `dst` atomically (rename of a complete folder)."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst.parent))
    for name in (DETECTOR_FILE, WEIGHTS_FILE):
        shutil.copy2(src / name, tmp / name)
    try:
        os.rename(tmp, dst)
    except OSError:  # already cached by an earlier run
        shutil.rmtree(tmp, ignore_errors=True)


def _remember(cache: Path, spec: str, entry: dict) -> None:
    path = cache / LAST_USED
    known = json.loads(path.read_text()) if path.exists() else {}
    known[spec] = entry
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    os.replace(tmp, path)


def _load_cached(target: Path, expected_sha256: str | None) -> AnomalyDetector | None:
    """The cached detector in `target` if it loads with the registry's checksum; else it is discarded (None)."""
    if not (target / DETECTOR_FILE).is_file():
        return None
    try:
        return AnomalyDetector.load(target, expected_sha256=expected_sha256)
    except (TamperedModelError, ValueError, OSError) as err:
        log.warning("refusing the cached model: %s; fetching the registered version again", err)
        discarded = Path(tempfile.mkdtemp(prefix=".discarded-", dir=target.parent))
        os.rename(target, discarded / target.name)
        shutil.rmtree(discarded, ignore_errors=True)
        return None


def _from_cache(cache: Path, spec: str, err: Exception) -> tuple[Path, str, dict]:
    path = cache / LAST_USED
    known = json.loads(path.read_text()) if path.exists() else {}
    if spec not in known:
        raise LookupError(f"cannot resolve detector={spec} (MLflow unreachable: {err}) and no earlier "
                          f"inspection cached it under {cache}") from err
    entry = known[spec]
    log.warning("MLflow unreachable (%s): judging with the cached %s, the model %s resolved to last time",
                str(err).splitlines()[0][:200], entry["version"], spec)
    return Path(entry["dir"]), entry["version"], {**entry["provenance"], "model_from_cache": True}


def resolve_inspection_model(cfg: DictConfig, cache: Path) -> tuple[AnomalyDetector, str, dict]:
    """(detector, version label for the ledger, provenance) for the `detector` key (default: champion)."""
    spec = model_spec(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    alias = re.fullmatch(r"models:/([^/@]+)@([^/@]+)", spec)
    pinned = re.fullmatch(r"models:/([^/@]+)/(\d+)", spec)
    if not (alias or pinned):  # a folder, run id or runs:/ URI: no registry version to cache by
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            folder, provenance = resolve_detector(cfg, spec, str(cfg.data.root), download_to=Path(tmp))
            sha = file_sha256(folder / WEIGHTS_FILE)
            detector = AnomalyDetector.load(folder)
        return detector, f"{provenance['model_source']}#{sha[:12]}", {**provenance, "weights_sha256": sha}
    try:
        client = MlflowClient(tracking_uri(cfg))
        if alias:
            name = alias.group(1)
            version = str(client.get_model_version_by_alias(name, alias.group(2)).version)
        else:
            name, version = pinned.group(1), pinned.group(2)
        described = registry.describe(client, f"models:/{name}/{version}")
        expected = described.get("registered_weights_sha256")
        target = cache / name / f"v{version}"
        detector = _load_cached(target, expected)
        if detector is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # the download is verified against the registry
                folder, _ = resolve_detector(cfg, f"models:/{name}/{version}", str(cfg.data.root), download_to=Path(tmp))
                _copy_detector(folder, target)
            detector = AnomalyDetector.load(target, expected_sha256=expected)
    except (LookupError, TamperedModelError):  # no such model, or a modified one: never fall back silently
        raise
    except Exception as err:  # noqa: BLE001 - any failure to reach the registry falls back to the cache
        if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":  # reachable, but no such model
            raise LookupError(f"detector={spec}: {str(err).splitlines()[0]} (train a model first, or set "
                              "detector=<model URI, run id or detector folder>)") from err
        folder, label, provenance = _from_cache(cache, spec, err)
        try:
            detector = AnomalyDetector.load(folder, expected_sha256=provenance.get("registered_weights_sha256"))
        except TamperedModelError as tampered:
            raise TamperedModelError(f"{tampered}; MLflow is unreachable, so the registered version cannot be "
                                     "fetched again: not inspecting with a modified model") from err
        return detector, label, provenance
    label = f"{name}/v{version}"
    provenance = {"model_source": f"models:/{name}/{version}", "model_spec": spec, **described,
                  "model_alias": alias.group(2) if alias else "", "weights_sha256": file_sha256(target / WEIGHTS_FILE)}
    _remember(cache, spec, {"dir": str(target), "version": label, "provenance": provenance})
    return detector, label, provenance
