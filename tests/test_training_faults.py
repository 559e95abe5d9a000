"""Training faults: a NaN loss stops with a clear message and keeps the last good checkpoint; a killed
run resumes from its checkpoint and ends as one MLflow run."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.config import compose
from pipeline.training.callbacks import NonFiniteLossError
from pipeline.commands.train import run_train
from tests.conftest import tiny_overrides


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    from pipeline.training import module

    calls = {"n": 0}
    original = module.VAELightningModule._losses

    def poisoned(self, x, *args, **kwargs):
        recon, kl = original(self, x, *args, **kwargs)
        calls["n"] += 1
        # Training batches 1-3 (epoch 0) are fine; from epoch 1 on the loss is NaN.
        return (recon * float("nan"), kl) if self.current_epoch >= 1 and self.training else (recon, kl)

    monkeypatch.setattr(module.VAELightningModule, "_losses", poisoned)
    cfg = compose(tiny_overrides(tmp_path, f"data.root={tiny_dataset}", "trainer.max_epochs=3"))
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1") as info:
        run_train(cfg)
    checkpoints = list((tmp_path / "outputs" / "train" / "tiny").rglob("*.ckpt"))
    assert checkpoints and "last good checkpoints are kept" in str(info.value)
    state = torch.load(checkpoints[0], weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_experiment_by_name("vae-training").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_resume_from_checkpoint_continues_the_same_run(tmp_path, tiny_dataset, capsys):
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", "trainer.max_epochs=1")
    assert main(["train", *overrides]) == 0
    first = json.loads(capsys.readouterr().out)
    last = next((tmp_path / "outputs" / "train" / "tiny" / first["run_id"] / "checkpoints").glob("last*.ckpt"))
    assert main(["train", *overrides[:-1], "trainer.max_epochs=3", "trainer.min_epochs=3", f"train.resume={last}"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["run_id"] == first["run_id"] and resumed["epochs"] == 3
    assert resumed["version"] == 2  # the resumed run's detector is a new version, logged into the same run
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vae-training").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    epochs = [m.step for m in client.get_metric_history(first["run_id"], "val/loss")]
    assert len(epochs) == 3  # one validation per epoch, across both processes
    assert client.get_run(first["run_id"]).data.tags["resumed_with.trainer.max_epochs"] == "3"


def test_resume_from_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", *tiny_overrides(tmp_path), f"train.resume={tmp_path / 'nope.ckpt'}"]) == 1
    assert "no such checkpoint file" in capsys.readouterr().err
