"""Where runs go: the local SQLite store under mlruns/ by default, or MLFLOW_TRACKING_URI.

The local store is opened with an absolute URI, and experiments get an absolute `file://` artifact
location under mlruns/, so the store works the same from any working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

# MLflow prints "View run ... at: <tracking URI>/#/..." to stdout when a run ends on a server: that would
# write a URI's user:password to logs, and mix text into the JSON our commands print on stdout.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    store = Path(cfg.tracking.store_dir).resolve()
    return f"sqlite:///{store / 'mlflow.db'}"


def is_local_store(cfg: DictConfig) -> bool:
    return not cfg.tracking.uri


def redact_uri(uri: str) -> str:
    """The URI with any user:password removed, for logs and parameters."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return re.sub(r"(token|password|secret)=[^&]+", r"\1=***", uri, flags=re.IGNORECASE)


CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")  # user[:password]@ of a URI


def redact_text(text: str) -> str:
    """Free text (e.g. the command line, which may hold tracking.uri=...) with every URI's user:password
    replaced by ***."""
    return CREDENTIALS.sub(r"\g<scheme>***@", text)


def open_store(cfg: DictConfig) -> MlflowClient:
    """A client on the configured store. For the local store this creates mlruns/ and the SQLite
    schema once, here in one process, before any DDP rank or second client opens it."""
    if is_local_store(cfg):
        Path(cfg.tracking.store_dir).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    client.search_experiments(max_results=1)  # forces schema creation / a server round-trip now
    return client


def experiment_id(client: MlflowClient, cfg: DictConfig, name: str) -> str:
    """Id of experiment `name`, created on first use (with an absolute artifact location when local)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if is_local_store(cfg):
        location = (Path(cfg.tracking.store_dir).resolve() / "artifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
