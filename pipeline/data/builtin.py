"""Make sure the configured dataset exists: generate the built-in ones on first use, never touch a
user's folder."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import project_root
from pipeline.data.digits import generate_digits
from pipeline.data.layout import DatasetLayoutError
from pipeline.data.synthetic import CATEGORIES, generate_category

log = logging.getLogger(__name__)


def generated_parent(kind: str) -> Path:
    """The folder the product generates dataset `kind` into."""
    return project_root() / "data" / kind


def generate(data_cfg: DictConfig, seed: int) -> list[Path]:
    """Generate every category/task of the configured kind that does not exist yet."""
    parent = generated_parent(data_cfg.kind)
    if data_cfg.kind == "builtin":
        missing = [c for c in CATEGORIES if not (parent / c).exists()]
        gen = data_cfg.generate
        for category in missing:
            log.info("generating built-in category %s into %s", category, parent)
            generate_category(parent, category, seed=seed, image_size=gen.image_size, n_train=gen.n_train,
                              n_test_good=gen.n_test_good, n_test_defect_per_type=gen.n_test_defect_per_type)
        return [parent / c for c in missing]
    if data_cfg.kind == "digits":
        if all((parent / f"digit_{d}").exists() for d in range(10)):
            return []
        return generate_digits(parent, seed=seed, test_good_fraction=data_cfg.generate.test_good_fraction,
                               n_test_anomaly_per_digit=data_cfg.generate.n_test_anomaly_per_digit,
                               progress=log.info)
    raise DatasetLayoutError(f"data.kind must be 'builtin' or 'digits' to generate data, got {data_cfg.kind!r}")


def ensure_dataset(data_cfg: DictConfig, seed: int) -> Path:
    """The data root, generated first when it is a missing built-in dataset; otherwise it must exist."""
    root = Path(data_cfg.root).expanduser().resolve()
    if root.is_dir():
        return root
    if root.parent == generated_parent(data_cfg.kind).resolve():
        generate(data_cfg, seed)
        if root.is_dir():
            return root
    raise DatasetLayoutError(f"data root {root} does not exist (data.root={data_cfg.root})")
