"""The registry of built-in categories and their writer in the MVTec AD folder layout::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect_type>/000.png ...
    <root>/<category>/ground_truth/<defect_type>/000_mask.png   (0 / 255)

Every image is rendered from its own random stream seeded from (seed, category, split, index), so any
single image is reproducible without rendering the others. A family whose good parts drift along the
production run is also told where each image was cut (`draw.Place`, from the split, the index and the
split's size): train/good spans the start of the run in index order, every test split the stretch after
it. Generation writes into `<root>/<category>.partial` and renames it at the end, so an interrupted run is
detectable and never mistaken for a complete category; an existing category is never overwritten.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image

from pipeline.data.generators import bracket, draw, fabric, film, mesh, sand

# category -> its module: `render(rng, n, defect or None) -> (uint8 image, bool mask or None)` and `DEFECTS`
_FAMILIES = {"fabric": fabric, "bracket": bracket, "sand": sand, "mesh": mesh, "film": film}

# families whose good parts drift along the production run: their `render` also takes `place=draw.Place(...)`
_DRIFTING: tuple[str, ...] = ("film",)

CATEGORIES: tuple[str, ...] = tuple(_FAMILIES)
DEFECT_TYPES: dict[str, tuple[str, ...]] = {name: tuple(module.DEFECTS) for name, module in _FAMILIES.items()}


def _check_category(category: str) -> None:
    if category not in _FAMILIES:
        raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")


def place(split: str, index: int, count: int) -> draw.Place:
    """Where image `index` of a split of `count` images was cut: train/good first, then the test splits."""
    if not 0 <= index < count:
        raise ValueError(f"index {index} is outside a split of {count} images")
    return draw.Place(test=not split.startswith("train/"), position=index / max(count - 1, 1))


def render_sample(
    category: str, split: str, index: int, *, seed: int = 0, image_size: int = 128, count: Optional[int] = None
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Render one image in memory (uint8 HxW) and its bool mask (None for good).

    `split` is "train/good", "test/good" or "test/<defect_type>"; `count` is the number of images in that
    split as written, required by a family that drifts along the run (ignored by the others).
    """
    _check_category(category)
    kind = split.split("/")[-1]
    defect = None if kind == "good" else kind
    if defect is not None and defect not in DEFECT_TYPES[category]:
        raise ValueError(f"unknown defect type {defect!r} for {category!r}")
    rng = draw.image_rng(seed, category, split, index)
    if category not in _DRIFTING:
        return _FAMILIES[category].render(rng, int(image_size), defect)
    if count is None:
        raise ValueError(f"{category!r} drifts along the run: give count=, the number of images in {split!r}")
    return _FAMILIES[category].render(rng, int(image_size), defect, place=place(split, index, int(count)))


def _save_png(arr: np.ndarray, path: pathlib.Path) -> None:
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path, format="PNG")  # 2-D uint8 -> "L"


def _write_split(partial: pathlib.Path, category: str, split: str, count: int, seed: int, image_size: int) -> None:
    out_dir = partial / split
    out_dir.mkdir(parents=True, exist_ok=True)
    defect = split.split("/")[-1]
    gt_dir = None
    if defect != "good":
        gt_dir = partial / "ground_truth" / defect
        gt_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(max(count - 1, 0))))
    for i in range(count):
        img, mask = render_sample(category, split, i, seed=seed, image_size=image_size, count=count)
        _save_png(img, out_dir / f"{i:0{width}d}.png")
        if gt_dir is not None:
            _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{i:0{width}d}_mask.png")


def generate_category(
    root,
    category: str,
    *,
    seed: int = 0,
    image_size: int = 128,
    n_train: int = 400,
    n_test_good: int = 200,
    n_test_defect_per_type: int = 30,
) -> pathlib.Path:
    """Write one category in MVTec AD layout under `root` and return `root/category`.

    Raises FileExistsError if `root/category` already exists (never overwrites).
    A leftover `root/category.partial` from an interrupted run is discarded.
    """
    _check_category(category)
    root = pathlib.Path(root)
    final = root / category
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite")
    partial = root / f"{category}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # only ever our own incomplete output
    root.mkdir(parents=True, exist_ok=True)
    jobs = [("train/good", n_train), ("test/good", n_test_good)]
    jobs += [(f"test/{d}", n_test_defect_per_type) for d in DEFECT_TYPES[category]]
    for split, count in jobs:
        _write_split(partial, category, split, count, seed, image_size)
    if final.exists():  # created concurrently while we were rendering
        raise FileExistsError(f"{final} already exists; refusing to overwrite")
    os.rename(partial, final)
    return final


def generate_builtin(
    root,
    *,
    categories: Iterable[str] = CATEGORIES,
    seed: int = 0,
    image_size: int = 128,
    n_train: int = 400,
    n_test_good: int = 200,
    n_test_defect_per_type: int = 30,
    progress: Optional[Callable[[str], None]] = None,
) -> list[pathlib.Path]:
    """Generate every requested category under `root`; returns the category dirs."""
    paths = []
    for cat in categories:
        t0 = time.perf_counter()
        p = generate_category(root, cat, seed=seed, image_size=image_size, n_train=n_train,
                              n_test_good=n_test_good, n_test_defect_per_type=n_test_defect_per_type)
        paths.append(p)
        if progress is not None:
            n_def = n_test_defect_per_type * len(DEFECT_TYPES[cat])
            progress(
                f"built-in {cat}: {n_train} train, {n_test_good} test good, "
                f"{n_def} defective ({len(DEFECT_TYPES[cat])} types) -> {p} "
                f"[{time.perf_counter() - t0:.1f}s]"
            )
    return paths
