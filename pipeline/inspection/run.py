"""`python -m pipeline inspect`: judge every new image in the inbox, in batches, exactly once.

One run: take the lock, finish whatever a killed run left half-committed, log pending batches to
MLflow (the outbox), then repeatedly take up to inspect.max_batch_images new files, judge them into
a staging folder, publish and commit the batch (see commit.py), and log it. Memory is bounded by
the batch size: the inbox is streamed, never listed whole.

Exit codes (for cron, systemd and monitoring):
    0  every new file was judged (or there was nothing new)
    2  configuration error (a mistyped key)
    3  the run finished but some files could not be judged (listed in the output and in errors.csv)
    4  the inspection could not run (no inbox, no model, a threshold that cannot fire, unwritable output, ...)
    5  another inspection is running (holds the lock): nothing was done
    6  the images were judged, but a batch drifted from the calibration images (camera, lighting, focus):
       its flags are not trustworthy until the process is fixed (the reason is in the output)
"""

from __future__ import annotations

import json
import logging
import shutil
from itertools import islice
from pathlib import Path

from omegaconf import DictConfig

from pipeline.detector.decision import UnableToFlag, check_and_decide
from pipeline.inspection.batch import InspectionModel, judge_batch, new_batch_id
from pipeline.inspection.commit import BATCHES, RESULTS, STAGING_PREFIX, commit, publish, recover
from pipeline.inspection.inbox import ScanCounts, new_files
from pipeline.inspection.ledger import Ledger
from pipeline.inspection.lock import InspectionLock
from pipeline.tracking.detection_run import detection_urls, find_run, log_detection_run
from pipeline.tracking.inspection_model import configure_client, resolve_inspection_model
from pipeline.tracking.store import open_store

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FILE_ERRORS, EXIT_CANNOT_RUN, EXIT_LOCKED, EXIT_DRIFT = 0, 3, 4, 5, 6
CONTROLS = ("alpha", "bh")  # inspect.control: per-image conformal threshold | Benjamini-Hochberg over the batch


class InspectionError(RuntimeError):
    """The inspection cannot run at all; the message says why."""


def _paths(cfg: DictConfig) -> tuple[Path, Path, Path]:
    inbox = Path(cfg.inspect.inbox).expanduser().resolve()
    out = Path(cfg.inspect.output_dir).expanduser().resolve()
    processed = Path(cfg.inspect.processed_dir).expanduser().resolve()
    if not inbox.is_dir():
        raise InspectionError(f"inspect.inbox={inbox} is not a folder")
    if out == inbox or inbox in out.parents:
        raise InspectionError(f"inspect.output_dir={out} is inside the inbox {inbox}: choose another folder")
    if cfg.inspect.control not in CONTROLS:  # a mistyped control must not silently fall back to alpha
        raise InspectionError(f"inspect.control must be one of {CONTROLS}, got {cfg.inspect.control!r}")
    if cfg.inspect.max_batch_images < 1:
        raise InspectionError(f"inspect.max_batch_images must be >= 1, got {cfg.inspect.max_batch_images}")
    return inbox, out, processed


def load_model(cfg: DictConfig, out: Path) -> InspectionModel:
    spec = str(cfg.get("detector") or "champion")
    if not cfg.tracking.enabled and spec.startswith(("champion", "latest", "models:/", "runs:/")):
        raise InspectionError(f"detector={spec} needs MLflow but tracking.enabled=false: set detector=<detector folder>")
    detector, version, provenance = resolve_inspection_model(cfg, out / "models")
    try:
        check_and_decide(detector, cfg, provenance)
    except UnableToFlag as err:
        raise InspectionError(str(err)) from err
    log.info("judging with %s (threshold %.6g for alpha=%g)", version, detector.threshold_, detector.spec.alpha)
    return InspectionModel(detector, version, provenance)


def log_batch(cfg: DictConfig, batch_dir: Path) -> str:
    """One MLflow run per committed batch (the same layout as a scoring run); idempotent per batch id."""
    summary = json.loads((batch_dir / "summary.json").read_text())
    run_id = find_run(open_store(cfg), cfg, summary["batch_id"])
    return run_id or log_detection_run(cfg, "inspect", batch_dir, summary, where=str(cfg.inspect.inbox))


def flush_outbox(cfg: DictConfig, ledger: Ledger, logged: list[dict] | None = None) -> bool:
    """Log every committed batch MLflow has not seen, oldest first; False when MLflow is unreachable. Each batch
    logged is appended to `logged` with its links in the MLflow UI (tracking/links.py)."""
    for row in ledger.outbox():
        try:
            run_id = log_batch(cfg, Path(row["folder"]))
            urls = detection_urls(cfg, "inspect", run_id)
        except Exception as err:  # noqa: BLE001 - whatever MLflow raises, the batch stays in the outbox
            ledger.mark_log_failed(row["batch_id"], str(err))
            log.warning("MLflow logging of batch %s deferred (%s); it stays in the outbox and is logged by a "
                        "later run", row["batch_id"], str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
            return False
        ledger.mark_logged(row["batch_id"], run_id)
        log.info("batch %s logged to MLflow: %s", row["batch_id"], urls["mlflow_run"])
        if logged is not None:
            logged.append({"batch_id": row["batch_id"], "run_id": run_id, **urls})
    return True


def _move(path: Path, inbox: Path, processed: Path, sha256: str | None) -> None:
    """Move a judged file to processed/<same relative path>, never overwriting an earlier file."""
    target = processed / path.relative_to(inbox)
    if target.exists():
        target = target.with_name(f"{target.stem}.{(sha256 or 'x')[:12]}{target.suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)


def _result(inbox: Path, out: Path, batches: list[dict], recovered: list, counts: ScanCounts, errors: list[dict],
            pending: int | None, model_version, logged: list[dict]) -> dict:
    """What one `inspect` call did, with its exit code: drift first, then file errors."""
    result = {
        "inbox": str(inbox), "output_dir": str(out), "results": str(out / RESULTS),
        "batches": batches, "recovered_batches": recovered,
        "n_seen": sum(b["n_seen"] for b in batches), "n_scored": sum(b["n_scored"] for b in batches),
        "n_flagged": sum(b["n_flagged"] for b in batches), "n_errors": len(errors),
        "already_judged": counts.already_judged, "too_recent": counts.too_recent,
        "drift_batches": [{"batch_id": b["batch_id"], "reason": b["drift"]["reason"]}
                          for b in batches if b["drift"]["drifted"]],
        "errors": errors, "mlflow_pending_batches": pending,
        "mlflow_logged": [{k: b[k] for k in ("batch_id", "mlflow_run")} for b in logged],
    }
    if logged:  # the inspection experiment's runs, in the MLflow UI's "Model training" view
        result["mlflow_experiment"] = logged[-1]["mlflow_experiment"]
    if model_version is not None:
        result["model_version"] = model_version
    result["exit_code"] = EXIT_DRIFT if result["drift_batches"] else EXIT_FILE_ERRORS if errors else EXIT_OK
    return result


def run_inspection(cfg: DictConfig) -> dict:
    icfg = cfg.inspect
    inbox, out, processed = _paths(cfg)
    mlflow_state = "pending" if cfg.tracking.enabled else "disabled"
    if cfg.tracking.enabled:
        configure_client(cfg)
    (out / BATCHES).mkdir(parents=True, exist_ok=True)
    exclude = processed if inbox in processed.parents else None
    counts, batches, errors = ScanCounts(), [], []
    with InspectionLock(out / "inspect.lock"):
        ledger = Ledger(out / "ledger.sqlite")
        try:
            recovered = recover(out, ledger, mlflow_state)
            logged: list[dict] = []
            mlflow_up = flush_outbox(cfg, ledger, logged) if cfg.tracking.enabled else False

            def move_judged(path: Path, sha256: str | None) -> None:  # committed earlier, not yet moved (killed)
                if icfg.move_processed:
                    _move(path, inbox, processed, sha256)

            stream = new_files(inbox, ledger, counts, icfg.min_age_seconds, exclude, icfg.retry_errors,
                               on_judged=move_judged)
            model = None
            while not icfg.max_batches or len(batches) < icfg.max_batches:
                chunk = list(islice(stream, icfg.max_batch_images))  # (<= max_batch_images) files, streamed
                if not chunk:
                    break
                model = model or load_model(cfg, out)
                batch_id = new_batch_id()
                summary = judge_batch(chunk, model, cfg, out / BATCHES / f"{STAGING_PREFIX}{batch_id}", batch_id)
                publish(out / BATCHES / f"{STAGING_PREFIX}{batch_id}", out / BATCHES / batch_id)
                commit(out, ledger, out / BATCHES / batch_id, mlflow_state)
                log.info("batch %s committed: %d seen, %d scored, %d flagged, %d errors (%.1f images/s)", batch_id,
                         summary["n_seen"], summary["n_scored"], summary["n_flagged"], summary["n_errors"],
                         summary["images_per_second"] or 0.0)
                if icfg.move_processed:
                    failed = {e["image_path"] for e in summary["errors"]}
                    for f in chunk:
                        if f.rel_path not in failed:
                            _move(f.path, inbox, processed, f.sha256)
                errors += [{"path": str(inbox / e["image_path"]), "reason": e["reason"], "batch_id": batch_id}
                           for e in summary["errors"]]
                batches.append({k: summary[k] for k in ("batch_id", "n_seen", "n_scored", "n_flagged", "n_errors",
                                                        "images_per_second", "drift")})
                if mlflow_up:
                    mlflow_up = flush_outbox(cfg, ledger, logged)
            pending = len(ledger.outbox())
        finally:
            ledger.close()
    return _result(inbox, out, batches, recovered, counts, errors, pending if cfg.tracking.enabled else None,
                   model.version if model is not None else None, logged)
