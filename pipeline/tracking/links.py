"""The MLflow UI links the product prints and writes. Every one opens MLflow's "Model training" view: MLflow 3.17
opens an experiment in its GenAI view (a traces dashboard) unless the link says `workflowType=machine_learning`
(or the browser remembers the user's last switch). The UI's routes live in the URL's fragment (`#/...`), so the
parameter goes after the route, inside the fragment.

Routes (`#/experiments/<id>/runs/<run id>?workflowType=machine_learning`) are what a run's Description uses:
relative to the page, they work whatever host serves the UI. URLs (`http://127.0.0.1:5000/#/...`) are what the
commands print and the review page carries: the UI's address is the tracking server's, or for the local store
where `make ui` serves it (tracking.local_ui_url), unless tracking.ui_url says otherwise.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from omegaconf import DictConfig

from pipeline.tracking.store import tracking_uri

WORKFLOW = "workflowType=machine_learning"  # the "Model training" view of an experiment


def route(path: str, *query: str) -> str:
    """'#/<path>?<query>&workflowType=machine_learning' (empty query parts left out)."""
    return f"#/{path.lstrip('/')}?" + "&".join([q for q in query if q] + [WORKFLOW])


def experiment_route(experiment_id: str) -> str:
    return route(f"experiments/{experiment_id}")


def run_route(experiment_id: str, run_id: str) -> str:
    return route(f"experiments/{experiment_id}/runs/{run_id}")


def runs_route(experiment_id: str, filter_string: str = "", view: str = "") -> str:
    """The run list of an experiment, filtered, in a saved view (descriptions.save_review_view)."""
    return route(f"experiments/{experiment_id}/runs", f"searchFilter={quote(filter_string)}" if filter_string else "",
                 f"viewStateShareKey={view}" if view else "")


def model_version_route(name: str, version: str) -> str:
    return route(f"models/{quote(name)}/versions/{version}")


def ui_base(cfg: DictConfig) -> str:
    """The MLflow UI's address: tracking.ui_url, else the tracking server's (without credentials), else where
    `make ui` serves the local store (tracking.local_ui_url)."""
    if cfg.tracking.get("ui_url"):
        return str(cfg.tracking.ui_url).rstrip("/")
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")
    return str(cfg.tracking.local_ui_url).rstrip("/")


def url(cfg: DictConfig, a_route: str) -> str:
    """The absolute URL of a route, e.g. url(cfg, experiment_route('2'))."""
    return f"{ui_base(cfg)}/{a_route}"
