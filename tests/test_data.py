import os

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.datamodule import InspectionDataModule, SplitSettings
from pipeline.data.datasets import ImageDataset, load_images
from pipeline.data.images import ImageReadError, ReadOptions, read_image, read_mask, to_model_tensor
from pipeline.data.layout import DatasetLayoutError, scan_test, scan_train
from pipeline.data.splits import (TooFewNormalImages, min_calibration_images, smallest_alpha, split_indices,
                                  split_sizes)
from tests.conftest import write_png


def test_layout_labels_and_masks(tiny_dataset):
    train = scan_train(tiny_dataset)
    test = scan_test(tiny_dataset)
    assert len(train) == 24 and all(s.label == 0 for s in train)
    assert {s.defect_type for s in test} == {"good", "scratch"}
    scratch = [s for s in test if s.defect_type == "scratch"]
    assert all(s.label == 1 and s.mask_path is not None for s in scratch)
    assert all(s.mask_path is None for s in test if s.defect_type == "good")
    assert scratch[0].rel_path == "test/scratch/000.png"
    mask = read_mask(scratch[0].mask_path, (48, 48))
    assert mask.dtype == bool and mask.sum() == 2 * 32


def test_defect_without_mask_has_none(tiny_dataset):
    os.remove(tiny_dataset / "ground_truth" / "scratch" / "001_mask.png")
    by_name = {s.rel_path: s for s in scan_test(tiny_dataset)}
    assert by_name["test/scratch/001.png"].mask_path is None
    assert by_name["test/scratch/002.png"].mask_path is not None


def test_formats_png_jpeg_bmp_tiff_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    for suffix in ("png", "jpg", "bmp", "tif"):
        Image.fromarray(gray).save(tmp_path / f"g.{suffix}")
        array = read_image(tmp_path / f"g.{suffix}", ReadOptions(channels=1))
        assert array.shape == (20, 30, 1)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", ReadOptions(channels=3)).shape == (20, 30, 3)
    assert read_image(tmp_path / "c.png", ReadOptions(channels=1, strict_channels=False)).shape == (20, 30, 1)
    tensor = to_model_tensor(read_image(tmp_path / "c.png", ReadOptions(channels=3)), 16)
    assert tensor.shape == (3, 16, 16) and 0 <= tensor.min() and tensor.max() <= 1


def test_sixteen_bit_images_are_rescaled(tmp_path):
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(deep).save(tmp_path / "d.png")
    array = read_image(tmp_path / "d.png")
    assert array.max() == round(63000 / 65535 * 255)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not an image", "not a readable image"),
])
def test_bad_files_name_the_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert info.value.path == str(path)


def test_truncated_image_is_a_clear_error(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png: corrupt or truncated"):
        read_image(tmp_path / "t.png")


def test_wrong_channels_and_size_are_errors(tmp_path):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="has 3 channel.*data.channels=3"):
        read_image(tmp_path / "rgb.png", ReadOptions(channels=1))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="small.png: is 10x12"):
        read_image(tmp_path / "small.png", ReadOptions(expected_size=(48, 48)))


def test_pixel_limit_refuses_huge_images(tmp_path):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        read_image(tmp_path / "big.png", ReadOptions(max_pixels=5000))


def test_missing_root_and_empty_folders(tmp_path, tiny_dataset, caplog):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        scan_train(tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="train/good holds no images"):
        scan_train(tmp_path / "empty")
    (tiny_dataset / "test" / "crack").mkdir()
    samples = scan_test(tiny_dataset)
    assert "test/crack is an empty class folder" in caplog.text
    assert all(s.defect_type != "crack" for s in samples)


def test_bad_training_images_are_skipped_and_reported(tiny_dataset):
    (tiny_dataset / "train" / "good" / "zz_corrupt.png").write_bytes(b"\x89PNG garbage")
    write_png(tiny_dataset / "train" / "good" / "zz_small.png", np.zeros((20, 20), np.uint8))
    dm = InspectionDataModule(tiny_dataset, 32, ReadOptions(), SplitSettings(alpha=0.2, min_train=8, min_selection=4), 8)
    dm.setup("fit")
    parts = (dm.train_samples, dm.selection_samples, dm.calibration_samples)
    assert sum(len(p) for p in parts) == 24 and (len(dm.train_images), len(dm.selection_images),
                                                 len(dm.calibration_images)) == tuple(len(p) for p in parts)
    names = [s.rel_path for p in parts for s in p]
    assert len(set(names)) == 24 and not any("zz_" in n for n in names)  # disjoint, the bad files left out
    reasons = {os.path.basename(e.path): e.reason for e in dm.skipped}
    assert set(reasons) == {"zz_corrupt.png", "zz_small.png"}
    assert "20x20" in reasons["zz_small.png"]


def test_streaming_dataset_returns_errors_instead_of_raising(tiny_dataset):
    samples = scan_test(tiny_dataset)
    (samples[0].path).write_bytes(b"")
    item = ImageDataset(samples, 32, ReadOptions())[0]
    assert item["error"] == "empty file (0 bytes)" and item["image"].shape == (1, 32, 32)
    ok = ImageDataset(samples, 32, ReadOptions())[1]
    assert ok["error"] == "" and ok["orig_hw"].tolist() == [48, 48]


def test_three_way_split_is_deterministic_disjoint_and_sized_to_alpha():
    sizes = split_sizes(100, alpha=0.05, calibration_fraction=0.3, selection_fraction=0.1, min_selection=16,
                        min_train=32, max_calibration_share=0.5)
    # calibration 30 % (>= the 19 that alpha=0.05 needs), selection max(16, 10 %), training the rest
    assert (sizes.n_train, sizes.n_selection, sizes.n_calibration) == (54, 16, 30) and sizes.supports_alpha
    a, b = split_indices(100, sizes, seed=3), split_indices(100, sizes, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [len(p) for p in a] == [54, 16, 30] and sorted(torch.cat(a).tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, sizes, seed=4)[2], a[2])  # the seed chooses the images


def test_calibration_share_grows_to_what_alpha_needs_or_says_what_is_missing():
    assert min_calibration_images(0.01) == 99 and min_calibration_images(0.2) == 4
    grown = split_sizes(300, 0.01, 0.3, 0.1, 16, 32, 0.5)
    assert grown.n_calibration == 99 and grown.supports_alpha and grown.shortfall() == ""  # 30 % would be 90
    short = split_sizes(100, 0.01, 0.3, 0.1, 16, 32, 0.5)  # 99 would exceed half of the images
    assert short.n_calibration == 30 and not short.supports_alpha
    message = short.shortfall()
    assert "alpha=0.01" in message and f"{smallest_alpha(30):.3g}" in message and "needs 99 calibration" in message
    with pytest.raises(TooFewNormalImages, match="training needs at least 32"):
        split_sizes(40, 0.2, 0.3, 0.1, 16, 32, 0.5)
    with pytest.raises(ValueError, match="data.split.calibration_fraction"):
        split_sizes(100, 0.2, 1.5, 0.1, 16, 32, 0.5)


def test_load_images_with_no_readable_image_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    from pipeline.data.layout import Sample
    with pytest.raises(ImageReadError, match="no readable image"):
        load_images([Sample(tmp_path / "a.png", "a.png", "good", None)], 16, ReadOptions())


def test_symlinks_out_of_the_dataset_are_not_followed(tiny_dataset, tmp_path, caplog):
    outside = write_png(tmp_path / "secret" / "outside.png", np.zeros((48, 48), np.uint8))
    (tiny_dataset / "train" / "good" / "link.png").symlink_to(outside)
    (tiny_dataset / "train" / "good" / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (tiny_dataset / "test" / "good" / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (tiny_dataset / "test" / "elsewhere").symlink_to(outside.parent, target_is_directory=True)  # a class folder
    inside = tiny_dataset / "train" / "good" / "000.png"
    (tiny_dataset / "train" / "good" / "alias.png").symlink_to(inside)  # stays inside: allowed
    names = {s.rel_path for s in scan_train(tiny_dataset)}
    assert "train/good/link.png" not in names and "train/good/alias.png" in names and len(names) == 25
    test_names = {s.rel_path for s in scan_test(tiny_dataset)}
    assert len(test_names) == 12 and not [n for n in test_names if "dirlink" in n or "elsewhere" in n]
    assert f"train/good/link.png: it links outside {tiny_dataset} (to {outside})" in caplog.text
    assert f"test/elsewhere/outside.png: it links outside {tiny_dataset} (to {outside})" in caplog.text


def test_masks_that_link_out_of_the_dataset_are_not_read(tiny_dataset, tmp_path, caplog):
    secret = write_png(tmp_path / "secret" / "000_mask.png", np.full((48, 48), 255, np.uint8))
    gt = tiny_dataset / "ground_truth" / "scratch"
    (gt / "000_mask.png").unlink()
    (gt / "000_mask.png").symlink_to(secret)                    # a mask file linking out
    (gt / "001_mask.png").unlink()
    (gt / "001_mask.png").symlink_to(gt / "002_mask.png")       # a mask linking inside: allowed
    write_png(tiny_dataset / "test" / "dent" / "000.png", np.zeros((48, 48), np.uint8))
    (tiny_dataset / "ground_truth" / "dent").symlink_to(secret.parent, target_is_directory=True)  # a folder out
    by_name = {s.rel_path: s for s in scan_test(tiny_dataset)}
    assert by_name["test/scratch/000.png"].mask_path is None and by_name["test/dent/000.png"].mask_path is None
    assert by_name["test/scratch/001.png"].mask_path == gt / "001_mask.png"
    assert by_name["test/dent/000.png"].label == 1  # the image is still scored, without its mask
    assert f"scratch/000_mask.png: it links outside {tiny_dataset} (to {secret})" in caplog.text
    assert f"dent/000_mask.png: it links outside {tiny_dataset} (to {secret})" in caplog.text


def _indices(folder) -> set[int]:
    return {int(p.stem) for p in folder.glob("*.png")}


def test_digits_both_protocols_share_one_cut_and_never_train_on_their_test_images(tmp_path):
    from sklearn.datasets import load_digits

    from pipeline.data.digits import generate_digits

    target = load_digits().target
    written = generate_digits(tmp_path, tasks=["digit_3", "digit_5", "loco_3"], seed=4)
    assert [p.name for p in written] == ["digit_3", "digit_5", "loco_3"]
    loco = tmp_path / "loco_3"
    assert sorted(p.name for p in (loco / "test").iterdir()) == ["digit_3", "good"]
    train, good, held_out = (_indices(loco / "train" / "good"), _indices(loco / "test" / "good"),
                             _indices(loco / "test" / "digit_3"))
    assert set(target[list(train)]) == set(target[list(good)]) == set(range(10)) - {3}  # the nine others
    assert set(np.flatnonzero(target == 3)) == held_out  # all of the held-out digit
    assert not train & good and not train & held_out
    # one cut of every digit into test and training shares, the same in both protocols
    assert _indices(tmp_path / "digit_3" / "test" / "good") == held_out - _indices(tmp_path / "digit_3" / "train" / "good")
    fives_test = _indices(tmp_path / "digit_5" / "test" / "good")
    assert fives_test == {i for i in good if target[i] == 5} and not fives_test & train
    assert len(good) == sum(round((target == d).sum() * 0.3) for d in range(10) if d != 3)
    again = generate_digits(tmp_path / "again", tasks=["loco_3"], seed=4, n_test_heldout=10)
    assert _indices(again[0] / "train" / "good") == train and len(_indices(again[0] / "test" / "digit_3")) == 10
    assert generate_digits(tmp_path, tasks=["loco_3"], seed=4) == []  # exists: left as it is
    with pytest.raises(ValueError, match="unknown digits tasks"):
        generate_digits(tmp_path, tasks=["loco_x"])


def test_digits_config_picks_the_task_of_the_protocol_and_first_use_writes_only_it(tmp_path, monkeypatch):
    from pipeline.config import compose
    from pipeline.data import builtin

    monkeypatch.setattr(builtin, "generated_parent", lambda kind: tmp_path / kind)
    assert compose(["data=digits", "data.normal_digit=2"]).data.root.endswith("data/digits/digit_2")
    cfg = compose(["data=digits", "data.protocol=leave_one_out", "data.anomaly_digit=7",
                   f"data.root={tmp_path / 'digits' / 'loco_7'}"])
    assert cfg.data.category == "loco_7" and cfg.data.name == "loco_7"
    root = builtin.ensure_dataset(cfg.data, cfg.seed)
    assert [p.name for p in root.parent.iterdir()] == ["loco_7"]
    assert {s.defect_type for s in scan_test(root)} == {"good", "digit_7"}
    asked = []
    monkeypatch.setattr(builtin, "generate_digits", lambda root, tasks, **kw: asked.extend(tasks) or [])
    builtin.generate(cfg.data, cfg.seed)  # `python -m pipeline data data=digits`: every task of both protocols
    assert sorted(asked) == sorted([f"digit_{d}" for d in range(10)] + [f"loco_{d}" for d in range(10)])
