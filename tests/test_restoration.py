"""The two-level VAE's local level, the VQ-VAE, the normal-variation transform and the restoration check."""

import numpy as np
import pytest
import torch

from pipeline.data.synthesis.nuisance import NuisanceTransform, fit_lighting
from pipeline.detector.fitting import restoration_check
from pipeline.models.factory import build_network
from pipeline.models.two_level import global_context, local_logits, restore
from pipeline.models.vqvae import VQVAE
from pipeline.training.local_module import LocalLevelModule

LOCAL = {"enabled": True, "hidden_channels": [8, 16], "latent_dim": 4, "beta": 0.01}


def two_level(size: int = 32, channels: int = 1):
    return build_network("vae", channels, size, 6, [8, 16, 32], "dense", local=LOCAL)


@pytest.mark.parametrize("channels,size", [(1, 32), (3, 64)])
def test_the_local_level_restores_at_the_input_size_from_a_code_at_a_quarter_of_the_side(channels, size):
    net = two_level(size, channels).eval().requires_grad_(False)
    x = torch.rand(2, channels, size, size)
    mu, log_var = net.encode(x)
    assert mu.shape == (2, 6) and log_var.shape == (2, 6)  # encode/decode stay the global level's
    moments = []
    logits = local_logits(net, x, mu, moments=moments)
    assert logits.shape == (2, channels, size, size)
    assert moments[0].shape == (2, 4 * (size // 4) ** 2)  # 4 numbers per cell at 1/4 of the side
    restored = restore(net, x, mu, net.decode(mu))
    assert restored.shape == x.shape and float(restored.min()) >= 0 and float(restored.max()) <= 1
    torch.testing.assert_close(restored, torch.sigmoid(logits))
    # Without the global logits (the learned map's training): the same restoration, and no global decode at all.
    calls = []
    hook = net.decoder[-1].register_forward_hook(lambda *args: calls.append(1))
    torch.testing.assert_close(restore(net, x, mu), restored, rtol=0, atol=0)
    hook.remove()
    assert not calls


def test_without_a_local_level_the_reconstruction_is_the_global_posterior_mean():
    net = build_network("vae", 1, 32, 6, [8, 16, 32]).eval()
    x = torch.rand(2, 1, 32, 32)
    mu, _ = net.encode(x)
    torch.testing.assert_close(restore(net, x, mu, net.decode(mu)), torch.sigmoid(net.decode(mu)))
    torch.testing.assert_close(restore(net, x, mu), torch.sigmoid(net.decode(mu)))  # decoded where not given


def test_the_global_context_is_the_global_decoders_features_at_the_local_side():
    net = two_level().eval()
    z = torch.randn(3, 6)
    context = global_context(net, z, 8)
    assert context.shape == (3, 16, 8, 8)  # the stage of the global decoder at side 8 has 16 channels
    with pytest.raises(ValueError, match="side 5"):
        global_context(net, z, 5)


def test_the_local_level_must_sit_above_the_global_code():
    with pytest.raises(ValueError, match="fewer stages"):
        build_network("vae", 1, 32, 6, [8, 16], "dense", local={**LOCAL, "hidden_channels": [8, 16]})
    with pytest.raises(ValueError, match="cvae"):
        build_network("cvae", 1, 32, 6, [8, 16, 32], "dense", n_classes=2, local=LOCAL)


def test_restoration_training_learns_from_the_clean_image_and_leaves_the_global_level_to_its_elbo():
    """One step of the local level's loss: gradients reach the local level only (the global features enter
    detached, the global code is computed without gradients)."""
    torch.manual_seed(0)
    net = two_level()
    module = LocalLevelModule(net, synthesizer=None, beta=0.01)
    clean = torch.rand(4, 1, 32, 32)
    altered = clean.clone()
    altered[:, :, 8:16, 8:16] = 1.0
    nll, kl = module.losses(altered, clean)
    (nll + kl).backward()
    assert all(p.grad is not None for p in net.local.parameters())
    assert all(p.grad is None for name, p in net.named_parameters() if not name.startswith("local."))
    assert [id(p) for g in module.configure_optimizers().param_groups for p in g["params"]] == \
        [id(p) for p in net.local.parameters()]


def test_the_restoration_check_tells_a_restoring_reconstruction_from_a_copy_and_from_a_blur():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, (4, 1, 16, 16))
    masks = np.zeros((4, 1, 16, 16), bool)
    masks[:2, :, 4:8, 4:8] = True  # two images carry an anomaly, two stay normal
    altered = np.where(masks, 1.0, clean)
    restoring = restoration_check(clean, altered, masks, clean)
    assert restoring["restoration.anomaly_error_ratio"] == pytest.approx(0.0)
    assert restoring["restoration.detail_error_ratio"] == pytest.approx(0.0)
    copying = restoration_check(clean, altered, masks, altered)
    assert copying["restoration.anomaly_error_ratio"] == pytest.approx(1.0)
    blur = np.broadcast_to(altered.mean(axis=(1, 2, 3), keepdims=True), altered.shape)
    assert restoration_check(clean, altered, masks, blur)["restoration.detail_error_ratio"] == pytest.approx(1.0)


def test_vq_vae_snaps_every_cell_to_a_codebook_entry_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    net = VQVAE(1, 32, 4, [8, 16, 32], codebook_size=5)
    x = torch.rand(2, 1, 32, 32)
    z, log_var = net.encode(x)
    assert log_var is None and z.shape == (2, 4 * 4 * 4)
    quantized = net.quantize(z)
    cells = quantized.view(2, 4, 16).transpose(1, 2).reshape(-1, 4)
    gaps = (cells[:, None, :] - net.codebook.weight[None]).abs().amax(dim=2)  # (cells, K)
    assert float(gaps.min(dim=1).values.max()) < 1e-5  # every cell is one of the entries
    nearest = torch.cdist(net._cells(z), net.codebook.weight).argmin(dim=1)
    assert torch.equal(net.code_indices(z).flatten(), nearest)
    z = z.detach().requires_grad_(True)
    net.quantize(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through
    loss = net.quantization_loss(z.detach().requires_grad_(True))
    loss.backward()
    assert net.codebook.weight.grad is not None and float(loss) > 0
    with pytest.raises(ValueError, match="spatial"):
        VQVAE(1, 32, 4, [8, 16, 32], latent_layout="dense")


def test_the_normal_variation_keeps_the_image_when_its_share_is_zero_and_stays_in_range():
    x = torch.rand(8, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(NuisanceTransform(share=0.0)(x, generator), x)
    changed = NuisanceTransform(share=1.0, gain_spread=0.3, offset_spread=0.1)(x, generator)
    assert changed.shape == x.shape and float(changed.min()) >= 0 and float(changed.max()) <= 1
    assert not torch.equal(changed, x)
    # with every bound at zero the warp is the identity: nothing but the drawn change touches the image
    stripes = (torch.arange(32) % 4 < 2).float().expand(1, 1, 32, 32).contiguous()
    unchanged = NuisanceTransform(share=1.0, shift=0.0, rotation_degrees=0.0, scale=0.0)(stripes, generator)
    torch.testing.assert_close(unchanged, stripes)


def test_lighting_bounds_are_the_spread_among_the_training_images():
    flat = torch.full((10, 1, 4, 4), 0.5)
    gain, offset = fit_lighting(flat)
    assert gain == pytest.approx(0.0, abs=1e-6) and offset == pytest.approx(0.0, abs=1e-6)
    levels = torch.linspace(0.2, 0.8, 10)[:, None, None, None] * torch.ones(10, 1, 4, 4)
    assert fit_lighting(levels)[1] == pytest.approx(float(levels.flatten(1).mean(1).std()), rel=1e-5)
