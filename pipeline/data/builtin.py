"""Make sure the configured dataset exists: generate the built-in ones on first use, never touch a
user's folder."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.config import project_root
from pipeline.data.digits import TASKS as DIGIT_TASKS
from pipeline.data.digits import generate_digits
from pipeline.data.generators import generate_category
from pipeline.data.layout import DatasetLayoutError

log = logging.getLogger(__name__)


def generated_parent(kind: str) -> Path:
    """The folder the product generates dataset `kind` into."""
    return project_root() / "data" / kind


def generate_named(data_cfg: DictConfig, names: list[str], seed: int) -> list[Path]:
    """Generate the built-in categories or digits tasks in `names` that do not exist yet."""
    parent = generated_parent(data_cfg.kind)
    gen = data_cfg.generate
    if data_cfg.kind == "builtin":
        written = []
        for category in names:
            if not (parent / category).exists():
                log.info("generating built-in category %s into %s", category, parent)
                written.append(generate_category(
                    parent, category, seed=seed, image_size=gen.image_size, n_train=gen.n_train,
                    n_test_good=gen.n_test_good, n_test_defect_per_type=gen.n_test_defect_per_type))
        return written
    if data_cfg.kind == "digits":
        return generate_digits(parent, tasks=names, seed=seed, test_good_fraction=gen.test_good_fraction,
                               n_test_anomaly_per_digit=gen.n_test_anomaly_per_digit,
                               n_test_heldout=gen.n_test_heldout, progress=log.info)
    raise DatasetLayoutError(f"data.kind must be 'builtin' or 'digits' to generate data, got {data_cfg.kind!r}")


def generate(data_cfg: DictConfig, seed: int) -> list[Path]:
    """`python -m pipeline data`: the configured built-in categories (data.generate.categories), or every
    digits task of both protocols; those that exist are left as they are."""
    names = list(data_cfg.generate.categories) if data_cfg.kind == "builtin" else list(DIGIT_TASKS)
    return generate_named(data_cfg, names, seed)


def ensure_dataset(data_cfg: DictConfig, seed: int) -> Path:
    """The data root, generated first (that category or task only) when it is a missing built-in dataset;
    otherwise it must exist."""
    root = Path(data_cfg.root).expanduser().resolve()
    if root.is_dir():
        return root
    if root.parent == generated_parent(data_cfg.kind).resolve():
        generate_named(data_cfg, [root.name], seed)
        if root.is_dir():
            return root
    raise DatasetLayoutError(f"data root {root} does not exist (data.root={data_cfg.root})")


def category_roots(data_cfg: DictConfig, seed: int) -> list[tuple[str, Path]]:
    """[(category name, root)] from data.categories / data.roots; built-in roots are generated when missing."""
    names, roots = list(data_cfg.categories), list(data_cfg.get("roots") or [])
    if len(names) != len(roots) or not names:
        raise DatasetLayoutError(f"data.categories ({len(names)}) and data.roots ({len(roots)}) must list the same, "
                                 "non-zero number of entries")
    if len(set(names)) != len(names):
        raise DatasetLayoutError(f"data.categories has duplicates: {names}")
    return [(name, ensure_dataset(OmegaConf.merge(data_cfg, {"root": str(root)}), seed))
            for name, root in zip(names, roots)]
