"""Parse a dataset folder in the MVTec AD layout into a list of samples (no image is decoded here).

    <root>/train/good/*                       normal training images
    <root>/test/<good|defect_type>/*          test images, labelled by their folder
    <root>/ground_truth/<defect_type>/<stem>_mask.png   pixel masks of defective test images (optional)

Reads never leave the root: an image or a mask that leads outside it (a symlink of the file, or of a folder
on its way) is skipped with a warning that names it and where it leads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.fs import real_path, within
from pipeline.data.images import is_image_file

log = logging.getLogger(__name__)

GOOD = "good"


class DatasetLayoutError(ValueError):
    """The dataset folder is missing or not in the MVTec AD layout; the message names the path."""


@dataclass(frozen=True)
class Sample:
    path: Path               # absolute path of the image file
    rel_path: str            # path relative to the dataset root, with '/' separators
    defect_type: str         # 'good' or the defect folder name
    mask_path: Path | None   # ground-truth mask, when the dataset has one

    @property
    def label(self) -> int:
        """1 = anomaly, 0 = normal (PyOD's convention)."""
        return int(self.defect_type != GOOD)


def _images_in(folder: Path, root: Path | None = None) -> list[Path]:
    """Image files under `folder`, sorted (so splits and outputs do not depend on the file system's
    listing order). One that leads outside `root` is skipped with a warning."""
    root = (root or folder).resolve()
    return [p for p in sorted(folder.rglob("*"), key=lambda p: p.as_posix()) if is_image_file(p) and _contained(p, root)]


def _contained(path: Path, root: Path) -> bool:
    """Whether `path` really lies inside `root`; warns, naming both, when it does not."""
    real = real_path(path)
    if within(real, root):
        return True
    log.warning("skipping %s: it links outside %s (to %s)", path, root, real)
    return False


def _mask_for(root: Path, defect_type: str, image: Path, class_dir: Path) -> Path | None:
    rel = image.relative_to(class_dir)
    mask = root / "ground_truth" / defect_type / rel.parent / f"{rel.stem}_mask.png"
    return mask if mask.is_file() and _contained(mask, root) else None


def scan_train(root: Path | str) -> list[Sample]:
    """Normal training images under <root>/train/good; error when there are none."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetLayoutError(f"data root {root} does not exist (set data.root=...)")
    good = root / "train" / GOOD
    if not good.is_dir():
        raise DatasetLayoutError(f"{good} is missing: the MVTec AD layout needs <root>/train/good/ with normal images")
    images = _images_in(good, root)
    if not images:
        raise DatasetLayoutError(f"{good} holds no images (.png .jpg .jpeg .bmp .tif .tiff)")
    return [Sample(p, p.relative_to(root).as_posix(), GOOD, None) for p in images]


def scan_test(root: Path | str) -> list[Sample]:
    """Test images under <root>/test/<class>/, with masks for defect classes when present.

    Empty class folders are skipped with a warning that names them; no test images at all is an error.
    """
    root = Path(root).resolve()
    test = root / "test"
    if not test.is_dir():
        raise DatasetLayoutError(f"{test} is missing: the MVTec AD layout needs <root>/test/<good|defect_type>/")
    samples: list[Sample] = []
    for class_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        images = _images_in(class_dir, root)
        if not images:
            log.warning("%s is an empty class folder: no images to score there", class_dir)
            continue
        defect_type = class_dir.name
        for image in images:
            mask = None if defect_type == GOOD else _mask_for(root, defect_type, image, class_dir)
            samples.append(Sample(image, image.relative_to(root).as_posix(), defect_type, mask))
    if not samples:
        raise DatasetLayoutError(f"{test} holds no images in any class folder")
    return samples

