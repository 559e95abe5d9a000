"""`python -m pipeline links`: where to look in the MLflow UI. One line per experiment of the product (training,
scoring, inspection) that exists in the store, each link opening the "Model training" view (tracking/links.py);
`make ui` prints them before it starts the UI."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.tracking.links import experiment_route, ui_base, url
from pipeline.tracking.store import open_store


def run_links(cfg: DictConfig) -> dict:
    client = open_store(cfg)
    names = (cfg.tracking.train_experiment, cfg.tracking.score_experiment, cfg.inspect.experiment)
    found = {name: client.get_experiment_by_name(name) for name in names}
    links = {name: url(cfg, experiment_route(e.experiment_id)) for name, e in found.items() if e is not None}
    print(f"MLflow UI: {ui_base(cfg)}")
    for name, link in links.items():
        print(f"  {name:<16} {link}")
    if not links:
        print("  no runs yet: `make train` and `make score` log them")
    print('If an experiment opens on a "Traces" page, switch to "Model training" at the top of the left side bar.')
    return {}
