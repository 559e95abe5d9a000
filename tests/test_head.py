"""The learned anomaly map: trained a few hundred steps on synthetic anomalies of tiny normal images, it finds
anomalies of a kind it never trained on (leave-one-kind-out), at the pixel level."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from pipeline.config import compose
from pipeline.data.synthesis import AnomalySynthesizer
from pipeline.models.factory import build_network
from pipeline.models.head import AnomalyHead, focal_loss
from pipeline.training.fit import fit_head, head_steps, head_synthesizers
from pipeline.training.head_module import reconstruct
from tests.conftest import _part, cli, tiny_overrides


def tiny_images(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 1, size, size): the conftest part (a bright disc with jitter and noise) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([_part(rng, size) for _ in range(n)])[:, None].astype(np.float32) / 255.0)


def test_focal_loss_prefers_the_right_pixels():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, 0] = 1
    right, wrong = target * 8 - 4, -(target * 8 - 4)
    assert focal_loss(right, target) < 0.01 < focal_loss(wrong, target)


def test_head_output_has_one_logit_per_pixel():
    head = AnomalyHead(3, (4, 8, 16))
    x = torch.rand(2, 3, 32, 32)
    assert head(x, x).shape == (2, 1, 32, 32)


def test_channels_last_head_computes_the_same_map_and_gradients():
    # the memory layout is a speed choice (PERFORMANCE.md): same weights, same logits and gradients up to rounding
    torch.manual_seed(0)
    plain, fast = AnomalyHead(1, (4, 8, 16)), AnomalyHead(1, (4, 8, 16), channels_last=True)
    fast.load_state_dict(plain.state_dict())
    assert fast.out.weight.is_contiguous(memory_format=torch.channels_last)
    x, r = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    out_plain, out_fast = plain(x, r), fast(x, r)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-4, atol=1e-5)
    out_plain.square().mean().backward()
    out_fast.square().mean().backward()
    torch.testing.assert_close(fast.down[0][0].weight.grad, plain.down[0][0].weight.grad, rtol=1e-3, atol=1e-5)


def test_head_accepts_widths_from_the_config():
    # a ListConfig: OmegaConf 2.3 slices [4, 8][-2::-1] as [8, 4], not [4]
    widths = compose(["head.widths=[4,8]"]).head.widths
    head = AnomalyHead(1, widths)
    assert [block[0].in_channels for block in head.up] == [12]
    assert head(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def briefly_trained_autoencoder(images: torch.Tensor, steps: int = 300) -> torch.nn.Module:
    """A small dense-bottleneck autoencoder fitted for a few hundred steps to the normal images: it redraws a
    normal part, not an anomaly, so its reconstruction is the comparison the head is built to use."""
    network = build_network("ae", 1, images.shape[-1], 8, [8, 16], "dense")
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = images[torch.randint(len(images), (16,), generator=generator)]
        mu, _ = network.encode(batch)
        loss = F.binary_cross_entropy_with_logits(network.decode(mu), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


def test_the_head_finds_a_kind_of_anomaly_it_was_never_trained_on():
    """Leave-one-kind-out: perlin_noise (a ragged region filled with noise, blotches or a flat level) is the
    validation kind, so the head trains on every other kind only (patch, perlin_image, blur, line, intensity)."""
    torch.manual_seed(0)
    held_out_kind = "perlin_noise"
    cfg = compose(["head.steps=200", "head.validate_every=100", "head.batch_size=16", "head.widths=[8,16,32]",
                   f"head.synthesis.validation_kind={held_out_kind}", "trainer.accelerator=cpu",
                   "trainer.enable_progress_bar=false"])
    train, selection = tiny_images(96, 32, 0), tiny_images(48, 32, 1)
    train_synth, _ = head_synthesizers(cfg.head.synthesis)
    assert held_out_kind not in train_synth.kinds  # never trained on
    vae = briefly_trained_autoencoder(train)
    with torch.no_grad():
        assert float(((reconstruct(vae, selection) - selection) ** 2).mean()) < 0.01  # it learned the normal part
    head = AnomalyHead(1, tuple(cfg.head.widths))
    report = fit_head(head, vae, SimpleNamespace(train_images=train, selection_images=selection), cfg.head,
                      cfg.trainer, seed=0)
    # Both validations and both blocks of training steps reach the loss-curve figure, each under its own block (the
    # training loss is logged after the callbacks' epoch end).
    for name in ("head/train_loss", "head/anomalous_pixels", "head/val_loss", "head/val_pixel_auroc"):
        assert [epoch for epoch, _ in report.history[name]] == [0, 1], name
    for name in ("head/train_loss", "head/val_pixel_auroc"):  # each block its own value, not the one before it
        assert report.history[name][0][1] != report.history[name][1][1], name
    params = {k: dict(v) for k, v in cfg.head.synthesis.params.items()}
    held_out = AnomalySynthesizer((held_out_kind,), params, anomaly_share=1.0)
    images, masks, _ = held_out(tiny_images(32, 32, 2), train, torch.Generator().manual_seed(3))
    with torch.no_grad():
        probabilities = torch.sigmoid(head.eval()(images, reconstruct(vae, images)))
    pixel_auroc = roc_auc_score(masks.flatten().numpy() > 0.5, probabilities.flatten().numpy())
    assert pixel_auroc >= 0.8, f"pixel AUROC {pixel_auroc:.3f} on the held-out kind"


def test_a_shortened_schedule_applies_only_where_the_global_level_draws_the_part():
    """head.global_steps_share (1.0 by default) applies where the map compares with the global level's own
    reconstruction; a texture's map (the local level's restoration) and a VAE without a local level keep head.steps;
    a shortened schedule keeps at least 20 steps and never more than head.steps."""
    assert head_steps(compose([]).head, "global") == 1500  # the default: the full schedule everywhere
    head = compose(["head.global_steps_share=0.5"]).head
    assert head.steps == 1500 and head_steps(head, "global") == 750
    assert head_steps(head, "local") == head_steps(head, None) == 1500
    short = compose(["head.steps=30", "head.global_steps_share=0.5"]).head
    assert head_steps(short, "global") == 20
    assert head_steps(compose(["head.steps=4", "head.global_steps_share=0.5"]).head, "global") == 4


def test_a_training_where_the_global_level_draws_the_part_takes_the_shortened_schedule(tmp_path, tiny_dataset):
    """Through `train` at head.global_steps_share=0.5: the global level chosen (any detail ratio passes a limit of
    100), the learned map trains 20 of head.steps=40, and the run records the steps it took."""
    summary = cli("train", *tiny_overrides(tmp_path, f"data.root={tiny_dataset}", "head.steps=40",
                                           "head.validate_every=20", "model.global_detail_limit=100",
                                           "head.global_steps_share=0.5"))
    assert summary["reconstruction"] == "global" and summary["head_steps"] == 20
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert client.get_run(summary["run_id"]).data.metrics["head_steps"] == 20
