"""Read one image file into a float tensor, or fail with an error that names the file and the reason.

Everything that can go wrong with a file from a camera or a shared folder (truncated, corrupt, not an
image, too many pixels, wrong channel count, wrong size) becomes an `ImageReadError`, so callers can
record it per file and keep going.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class ImageReadError(ValueError):
    """A file that cannot be used as an input image; `path` and `reason` say which and why."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ReadOptions:
    """How input images are decoded and checked (from the `data` config)."""

    channels: int = 1                 # 1 = grayscale, 3 = RGB
    max_pixels: int = 50_000_000      # refuse larger images (decompression bombs)
    strict_channels: bool = True      # an image whose own channel count differs is an error
    expected_size: tuple[int, int] | None = None  # (height, width) every image must have, or None

    @classmethod
    def from_config(cls, data) -> "ReadOptions":
        """From the `data` config: data.channels, data.max_image_pixels, data.strict_channels."""
        return cls(channels=data.channels, max_pixels=data.max_image_pixels, strict_channels=data.strict_channels)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def native_channels(image: Image.Image) -> int:
    """Colour channels the file really holds: alpha is not a channel, a palette is colour."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return 1
    return 3


def _to_uint8_array(image: Image.Image, channels: int) -> np.ndarray:
    """(H, W, C) uint8 in the requested channel count; 16-bit and float images are rescaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        max_value = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        array = np.clip(array / max_value * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("LA", "RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent regions on black rather than keeping undefined colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array  # (H, W, C)


def read_image(path: Path | str, options: ReadOptions = ReadOptions()) -> np.ndarray:
    """Decode `path` into a (H, W, C) uint8 array at its original resolution, or raise ImageReadError."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > options.max_pixels:
                    raise ImageReadError(
                        path, f"{width}x{height} pixels exceeds the limit of {options.max_pixels} "
                        "(data.max_image_pixels)")
                if options.strict_channels and native_channels(image) != options.channels:
                    raise ImageReadError(
                        path, f"has {native_channels(image)} channel(s) ({image.mode}) but the dataset uses "
                        f"{options.channels} (set data.channels={native_channels(image)}, or "
                        "data.strict_channels=false to convert)")
                image.load()  # decode now so truncation is reported here, per file
                image = ImageOps.exif_transpose(image)
                array = _to_uint8_array(image, options.channels)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(path, f"refused as a decompression bomb: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(path, f"corrupt or truncated image ({err})") from None
    if options.expected_size is not None and array.shape[:2] != tuple(options.expected_size):
        raise ImageReadError(
            path, f"is {array.shape[0]}x{array.shape[1]} (HxW) but the dataset's images are "
            f"{options.expected_size[0]}x{options.expected_size[1]} (set data.strict_size=false to allow mixed sizes)")
    return array


def to_model_tensor(array: np.ndarray, image_size: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, S, S) float32 in [0, 1], resized with antialiasing."""
    channels = array.shape[2]
    image = Image.fromarray(array[:, :, 0] if channels == 1 else array)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    resized = np.asarray(image, dtype=np.float32) / 255.0
    if resized.ndim == 2:
        resized = resized[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))  # (C, S, S)


def read_mask(path: Path | str, size_hw: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as a (H, W) bool array of the image's size; nonzero = defect."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"unreadable mask ({err})") from None
    if mask.shape != tuple(size_hw):
        raise ImageReadError(path, f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {size_hw[0]}x{size_hw[1]}")
    return mask
