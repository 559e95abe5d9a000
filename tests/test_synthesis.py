"""The training-time anomaly synthesizer: every kind changes the image exactly where its mask says, visibly,
deterministically under the seed, and never touches its input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import compose
from pipeline.data.synthesis import AnomalySynthesizer
from pipeline.data.synthesis.kinds import KINDS
from pipeline.data.synthesis.perlin import perlin_mask, perlin_noise
from pipeline.training.fit import head_synthesizers


def textures(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) normal-looking images: a smooth random texture around mid-grey."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.5, 0.08, (n, 1, size, size)).astype(np.float32)
    return torch.from_numpy(np.clip(base, 0, 1))


@pytest.fixture(scope="module")
def params():
    cfg = compose([])
    return {k: dict(v) for k, v in cfg.head.synthesis.params.items()}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_changes_the_image_only_inside_its_mask_and_visibly(kind, params):
    images = textures(24)
    synthesizer = AnomalySynthesizer((kind,), params, anomaly_share=1.0, visible_delta=0.03, min_pixels=6)
    before = images.clone()
    altered, masks, kinds = synthesizer(images, images, torch.Generator().manual_seed(1))
    assert torch.equal(images, before), "the input batch must not be modified"
    made = [i for i, k in enumerate(kinds) if k is not None]
    assert len(made) >= 20, f"{kind}: only {len(made)} of 24 draws made a visible anomaly"
    for i in range(len(images)):
        change = (altered[i] - images[i]).abs().amax(dim=0)  # (H, W)
        inside = masks[i, 0] > 0.5
        assert torch.all(change[~inside] == 0), f"{kind}: pixels changed outside the mask"
        if i in made:
            assert int((change > 0.03).sum()) >= 6, f"{kind}: anomaly {i} is not visible"
            assert inside.any()
        else:
            assert not inside.any() and torch.equal(altered[i], images[i])


def test_the_synthesizer_is_deterministic_under_the_seed(params):
    images = textures(16)
    synthesizer = AnomalySynthesizer(tuple(sorted(KINDS)), params)
    first = synthesizer(images, images, torch.Generator().manual_seed(7))
    second = synthesizer(images, images, torch.Generator().manual_seed(7))
    other = synthesizer(images, images, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    assert not torch.equal(first[0], other[0])


def test_about_the_configured_share_of_images_is_altered(params):
    images = textures(200, size=32)
    synthesizer = AnomalySynthesizer(("intensity",), params, anomaly_share=0.3)
    _, masks, kinds = synthesizer(images, images, torch.Generator().manual_seed(0))
    share = sum(k is not None for k in kinds) / len(kinds)
    assert 0.2 < share < 0.4
    assert all((masks[i].sum() > 0) == (k is not None) for i, k in enumerate(kinds))


def test_the_validation_kind_is_held_out_of_training():
    cfg = compose(["head.synthesis.validation_kind=line"])
    train, validation = head_synthesizers(cfg.head.synthesis)
    assert "line" not in train.kinds and validation.kinds == ("line",)


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown anomaly kinds"):
        AnomalySynthesizer(("scratch_from_the_builtin_data",))


def test_perlin_noise_is_smooth_and_masks_cover_a_fraction():
    noise = perlin_noise(64, 64, (4, 4), torch.Generator().manual_seed(0))
    assert noise.shape == (64, 64) and noise.abs().max() <= 1.5
    assert (noise[:, 1:] - noise[:, :-1]).abs().max() < 0.3  # gradient noise varies smoothly
    coverage = [float(perlin_mask(64, 64, torch.Generator().manual_seed(s)).float().mean()) for s in range(20)]
    assert 0.0 <= min(coverage) and max(coverage) < 0.6 and np.mean(coverage) > 0.02
