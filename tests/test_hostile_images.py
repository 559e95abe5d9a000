"""Property-based tests of the image reading path: whatever the bytes, the result is either a correct
tensor or a clear per-file ImageReadError; never another exception, never a hang."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.data.images import ImageReadError, ReadOptions, read_image, to_model_tensor

FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(path, options=ReadOptions(channels=1, strict_channels=False)):
    try:
        array = read_image(path, options)
    except ImageReadError as err:
        assert err.path == str(path) and err.reason
        return None
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == options.channels
    tensor = to_model_tensor(array, 16)
    assert tensor.shape == (options.channels, 16, 16)
    return array


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


@FAST
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(tmp_path, data):
    path = tmp_path / "random.png"
    path.write_bytes(data)
    _check(path)


@FAST
@given(st.integers(min_value=1, max_value=400), st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"]))
def test_truncated_files_are_clear_errors(tmp_path, cut, fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(cut).integers(0, 255, (40, 40), dtype=np.uint8)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(data[: max(1, len(data) - cut)])
    _check(path)


@FAST
@given(st.binary(min_size=10, max_size=600))
def test_valid_header_with_garbage_body(tmp_path, body):
    header = _png_bytes(np.zeros((8, 8), np.uint8))[:33]  # signature + IHDR
    path = tmp_path / "garbage.png"
    path.write_bytes(header + body)
    _check(path)


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries almost no data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(100_000, 100_000))
    with pytest.raises(ImageReadError, match="exceeds the limit|decompression bomb"):
        read_image(path, ReadOptions(max_pixels=50_000_000))


@pytest.mark.parametrize("mode,channels", [("I;16", 1), ("P", 3), ("CMYK", 3), ("RGBA", 3), ("LA", 1), ("1", 1)])
def test_unusual_modes_decode_to_the_requested_channels(tmp_path, mode, channels):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"m.{'tif' if mode == 'CMYK' else 'png'}"
    image.save(path)
    array = read_image(path, ReadOptions(channels=channels))
    assert array.shape == (20, 20, channels) and array.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 30), np.uint8)  # wide
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "o.jpg", exif=exif)
    assert read_image(tmp_path / "o.jpg").shape[:2] == (30, 10)  # tall after orientation


def test_non_image_with_image_suffix(tmp_path):
    path = tmp_path / "notes.tiff"
    path.write_text("quality report, not an image")
    with pytest.raises(ImageReadError, match="notes.tiff: not a readable image"):
        read_image(path)


@pytest.mark.parametrize("name", ["with space.png", "ünïcødé-部品.png", "semi;colon $(rm -rf x) `q`.png", "-dash.png"])
def test_awkward_file_names_work(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_png_bytes(np.full((12, 12), 7, np.uint8)))
    assert read_image(path)[0, 0, 0] == 7
