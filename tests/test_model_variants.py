"""Latent report, sweep, conditional VAE and the denoising switch, on tiny data with the real config,
real Lightning and a real MLflow store."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.__main__ import main
from pipeline.commands.sweep import expand_grid
from pipeline.detector import AnomalyDetector
from pipeline.models.cvae import ConditionalConvVAE
from pipeline.config import compose
from pipeline.models.corruption import corrupt
from pipeline.models.vae import ConvVAE
from pipeline.training.fit import head_synthesizers
from pipeline.training.module import VAELightningModule
from tests.conftest import tiny_overrides

REPORT_FIGURES = {"latent_map.png", "manifold.png", "latent_walk.gif", "kl_per_dim.png"}


def _client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def test_report_writes_every_figure_and_logs_them_to_the_training_run(tmp_path, tiny_dataset, capsys):
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", "model.latent_dim=2",
                               "model.latent_layout=dense", "report.enabled=true",
                               f"report.output_dir={tmp_path / 'report'}", "report.grid_size=3", "report.walk_steps=4")
    assert main(["train", *overrides]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert REPORT_FIGURES <= set(trained["report"]["figures"])  # written at the end of training
    assert trained["report"]["projection"] == "latent"  # latent size 2: the code itself, no PCA

    assert main(["report", *overrides]) == 0
    report = json.loads(capsys.readouterr().out)
    out = tmp_path / "report"
    assert REPORT_FIGURES <= {p.name for p in out.iterdir()}
    gif = Image.open(out / "latent_walk.gif")
    assert gif.n_frames == 2 * 4 - 2  # forth and back without repeating the ends
    summary = json.loads((out / "latent_summary.json").read_text())
    assert summary["n_test"] == 12 and summary["n_val"] == trained["sizes"]["n_selection"] == 4  # selection images
    assert len(summary["kl_per_dim"]) == 2 and summary["active_dims"] + summary["collapsed_dims"] == 2
    assert report["logged_to_run"] == trained["run_id"]
    logged = {a.path for a in _client(tmp_path).list_artifacts(trained["run_id"], "latent")}
    assert {f"latent/{name}" for name in REPORT_FIGURES} <= logged


def test_grid_expands_like_hydra_multirun():
    base, points = expand_grid(["model.hidden_channels=[8,16]", "--multirun", "model.beta=0.1,1"],
                               {"model.beta": "0.5,1,2", "model.latent_dim": "2,10"})
    assert expand_grid(["model.latent_dim=3"], {"model.beta": "0.5,1", "model.latent_dim": "2,10"})[1] == [
        ["model.beta=0.5", "model.latent_dim=3"], ["model.beta=1", "model.latent_dim=3"]]  # pinned
    assert base == ["model.hidden_channels=[8,16]"]  # a list value is not a sweep
    assert points == [["model.beta=0.1", "model.latent_dim=2"], ["model.beta=0.1", "model.latent_dim=10"],
                      ["model.beta=1", "model.latent_dim=2"], ["model.beta=1", "model.latent_dim=10"]]


def test_sweep_lands_in_one_experiment_with_a_comparison(tmp_path, tiny_dataset, capsys):
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", f"sweep.output_dir={tmp_path / 'sweep'}",
                               "sweep.scores=[recon_error,neg_elbo]", "score.score=recon_error")
    assert main(["sweep", *overrides, "model.beta=0.5,2", "model.latent_dim=3"]) == 0
    result = json.loads(capsys.readouterr().out)
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert sorted(table["beta"]) == [0.5, 2.0] and set(table["latent_dim"]) == {3}
    assert table["auroc.neg_elbo"].between(0, 1).all() and (table["auroc"] == table["auroc.recon_error"]).all()
    assert (tmp_path / "sweep" / "sweep_auroc.png").stat().st_size > 0

    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("vae-sweep")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["summary_run_id"]]
    assert len(runs) == 3 and len(children) == 2  # the summary run and one nested run per grid point
    assert {r.data.params["model.beta"] for r in children} == {"0.5", "2"}
    assert all("test_auroc.neg_elbo" in r.data.metrics for r in children)
    assert {a.path for a in client.list_artifacts(result["summary_run_id"])} >= {"sweep.csv", "sweep_auroc.png"}
    assert client.search_registered_models() == []  # sweep points are not registered
    assert client.get_experiment_by_name("vae-training") is None


def _second_category(tiny_dataset, target):
    """A second product: the tiny dataset's images inverted (same layout, masks copied)."""
    for path in tiny_dataset.rglob("*.png"):
        out = target / path.relative_to(tiny_dataset)
        out.parent.mkdir(parents=True, exist_ok=True)
        array = np.asarray(Image.open(path))
        Image.fromarray(array if "ground_truth" in path.parts else 255 - array).save(out)
    return target


def test_conditional_vae_trains_on_two_categories_and_scores_each_with_its_label(tmp_path, tiny_dataset, capsys):
    parent = tmp_path / "products"
    disc = tiny_dataset.rename(parent / "disc") if parent.mkdir() is None else None
    _second_category(disc, parent / "inverted")
    overrides = tiny_overrides(tmp_path, "data=builtin_all", "model=cvae", f"data.root={parent}",
                               "data.categories=[disc,inverted]", f"data.roots=[{disc},{parent / 'inverted'}]",
                               "model.denoise.kind=mask", "model.denoise.level=0.3",
                               f"score.output_dir={tmp_path / 'scored'}", f"report.output_dir={tmp_path / 'report'}",
                               "report.enabled=true")
    assert main(["train", *overrides]) == 0
    trained = json.loads(capsys.readouterr().out)
    detector = AnomalyDetector.load(trained["detector_dir"])
    assert detector.spec.categories == ["disc", "inverted"] and detector.spec.model["kind"] == "cvae"
    assert trained["sizes"]["n_train"] == 2 * 13  # both categories' training splits (24 images each)
    # one threshold per category, each from that category's own 7 calibration images
    assert sorted(detector.thresholds_) == [0, 1] and detector.spec.calibration_labels.count(1) == 7
    assert trained["guarantee"]["n_calibration"] == 7
    assert {"manifold_disc.png", "manifold_inverted.png", "latent_walk_inverted.gif"} <= set(trained["report"]["figures"])
    params = _client(tmp_path).get_run(trained["run_id"]).data.params
    assert params["model.denoise.kind"] == "mask" and params["model.kind"] == "cvae"

    assert main(["score", *overrides]) == 0
    metrics = json.loads(capsys.readouterr().out)
    scores = pd.read_csv(tmp_path / "scored" / "scores.csv")
    assert len(scores) == 24 and scores.groupby("category").size().to_dict() == {"disc": 12, "inverted": 12}
    assert scores["image_path"].is_unique and all(p.startswith(("disc/test/", "inverted/test/"))
                                                  for p in scores["image_path"])
    for category, label in (("disc", 0), ("inverted", 1)):  # each image against its own category's threshold
        assert set(scores.loc[scores["category"] == category, "threshold"]) == {detector.thresholds_[label]}
    assert 0 <= metrics["disc.image_auroc"] <= 1 and 0 <= metrics["inverted.image_auroc"] <= 1
    assert metrics["mean_image_auroc"] == pytest.approx((metrics["disc.image_auroc"] + metrics["inverted.image_auroc"]) / 2)
    assert metrics["model_run_id"] == trained["run_id"]

    # Scoring a category under its own label differs from scoring it under the other one.
    x = torch.rand(2, 1, 32, 32)
    own = detector.score(x, torch.tensor([0, 0]), keep=())["recon_error"]
    other = detector.score(x, torch.tensor([1, 1]), keep=())["recon_error"]
    assert not np.allclose(own, other)
    with pytest.raises(RuntimeError, match="needs the category"):
        detector.vae.encode(x)
    with pytest.raises(RuntimeError, match="needs the category"):
        detector.predict(x)  # never scored under a category it was not given

    bad = [o for o in overrides if not o.startswith("data.categories")] + ["data.categories=[disc,unknown]"]
    assert main(["score", *bad]) == 1
    assert "'unknown'" in capsys.readouterr().err


def test_cvae_rejects_labels_out_of_range():
    net = ConditionalConvVAE(2, 1, 16, 3, [4, 8])
    with pytest.raises(ValueError, match="out of range"):
        net.encode(torch.rand(2, 1, 16, 16), torch.tensor([0, 2]))


def test_corruption_kinds():
    x = torch.full((4, 1, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    assert corrupt(x, "none", 0.3) is x
    noisy = corrupt(x, "gaussian", 0.2, g)
    assert 0.15 < float((noisy - x).std()) < 0.25 and noisy.min() >= 0 and noisy.max() <= 1
    masked = corrupt(x, "mask", 0.3, g)
    assert 0.25 < float((masked == 0).float().mean()) < 0.35 and torch.equal(x, torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="model.denoise.kind"):
        corrupt(x, "blur", 0.3)


def test_denoising_corrupts_training_inputs_only_and_targets_the_clean_image():
    torch.manual_seed(0)
    net = ConditionalConvVAE(1, 1, 16, 3, [4, 8]).eval()  # eval: BatchNorm uses fixed statistics
    x = torch.rand(8, 1, 16, 16)
    batch = (x, torch.arange(8), torch.zeros(8, dtype=torch.long))
    losses = {}
    for kind in ("none", "mask"):
        module = VAELightningModule(net, denoise_kind=kind, denoise_level=0.9, kl_warmup_epochs=0)
        torch.manual_seed(1)
        losses[kind] = float(module.training_step(batch, 0).detach())
        torch.manual_seed(1)
        recon, _ = module._losses(x, c=batch[2])
        losses[f"{kind}.val"] = float(recon)
    assert losses["mask"] != losses["none"]  # the switch reaches the training step
    assert losses["mask.val"] == losses["none.val"]  # validation sees clean inputs either way


def test_synthetic_denoising_encodes_the_synthesizers_anomalies_and_targets_the_clean_image(monkeypatch):
    import pipeline.training.module as module_file

    torch.manual_seed(0)
    net = ConvVAE(1, 16, 4, [4, 8]).eval()
    x = torch.rand(8, 1, 16, 16)
    synthesizer = head_synthesizers(compose([]).head.synthesis)[0]  # what fitting.fit_networks gives the VAE
    seen, targets = [], []
    encode = net.encode
    monkeypatch.setattr(net, "encode", lambda inp, *c: seen.append(inp.clone()) or encode(inp, *c))
    nll = module_file.reconstruction_nll
    monkeypatch.setattr(module_file, "reconstruction_nll", lambda logits, target, kind: targets.append(target) or
                        nll(logits, target, kind))
    module = VAELightningModule(net, denoise_kind="synthetic", synthesizer=synthesizer, seed=3, kl_warmup_epochs=0)
    module.training_step((x, torch.arange(8)), 0)
    expected, masks, _ = synthesizer(x, x, torch.Generator().manual_seed(3))  # the module's draw, seed 3
    assert masks.sum() > 0 and torch.equal(seen[-1], expected) and not torch.equal(seen[-1], x)
    assert targets[-1] is x  # scored on the clean image
    with pytest.raises(ValueError, match="synthetic"):
        VAELightningModule(net, denoise_kind="synthetic")
    with pytest.raises(ValueError, match="synthetic"):
        VAELightningModule(net, denoise_kind="none", synthesizer=synthesizer)
    with pytest.raises(ValueError, match=r"model.denoise.kind must be one of .*'synthetic'.*'synthtic'"):
        VAELightningModule(net, denoise_kind="synthtic")  # a mistyped kind fails before any training
