import pytest
import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from pipeline.models.loss import kl_divergence, kl_weight, reconstruction_nll
from pipeline.models.factory import build_network
from pipeline.models.vae import ConvAutoencoder, ConvVAE


def test_closed_form_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, log_var = torch.randn(5, 7), torch.randn(5, 7)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * log_var)), Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(kl_divergence(mu, log_var), expected)


def test_kl_is_zero_at_the_prior():
    assert torch.allclose(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))


def test_reparameterization_passes_gradients_to_mu_and_log_var():
    mu = torch.tensor([[0.5, -1.0]], requires_grad=True)
    log_var = torch.tensor([[0.1, 0.3]], requires_grad=True)
    generator = torch.Generator().manual_seed(3)
    z = ConvVAE.reparameterize(mu, log_var, generator)
    z.sum().backward()
    eps = torch.randn(1, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mu.grad, torch.ones(1, 2))  # dz/dmu = 1
    torch.testing.assert_close(log_var.grad, 0.5 * eps * torch.exp(0.5 * log_var.detach()))  # dz/dlogvar


@pytest.mark.parametrize("kind", ["vae", "ae"])
@pytest.mark.parametrize("layout", ["dense", "spatial"])
@pytest.mark.parametrize("channels,size", [(1, 32), (3, 64)])
def test_network_reconstructs_input_shape(kind, layout, channels, size):
    net = build_network(kind, channels, size, latent_dim=6, hidden_channels=[8, 16, 32], latent_layout=layout)
    out = net(torch.rand(2, channels, size, size))
    assert out.logits.shape == (2, channels, size, size)
    side = size // 8
    assert net.latent_size == (6 if layout == "dense" else 6 * side * side)
    assert out.mu.shape == (2, net.latent_size)
    assert (out.log_var is None) == (kind == "ae")


def test_vae_samples_in_training_and_uses_the_mean_in_eval():
    net = ConvVAE(1, 32, 4, [8, 16])
    x = torch.rand(2, 1, 32, 32)
    net.train()
    assert not torch.equal(net(x).z, net(x).mu)
    net.eval()
    out = net(x)
    assert torch.equal(out.z, out.mu)


def test_image_size_must_fit_the_number_of_stages():
    with pytest.raises(ValueError, match="divisible"):
        ConvAutoencoder(1, 30, 4, [8, 16])
    with pytest.raises(ValueError, match="model.kind"):
        build_network("gan", 1, 32, 4, [8])


def test_reconstruction_nll_values():
    x = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    logits = torch.zeros_like(x)  # p = 0.5 everywhere
    torch.testing.assert_close(reconstruction_nll(logits, x, "bce"), torch.tensor([2 * 0.6931472]))
    gauss = reconstruction_nll(logits, x, "mse")  # 0.5 * 0.25 * 2 + log(2 pi)
    torch.testing.assert_close(gauss, torch.tensor([0.25 + 1.8378771]))
    with pytest.raises(ValueError):
        reconstruction_nll(logits, x, "l1")


def test_linear_kl_warmup():
    assert [kl_weight(e, 2.0, 4) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(0, 1.0, 0) == 1.0
