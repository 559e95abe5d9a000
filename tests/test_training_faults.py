"""Training faults: a NaN loss stops with a clear message and keeps the last good checkpoint; a training killed
with SIGKILL in the middle of an epoch resumes from its last checkpoint and ends as one MLflow run."""

import json
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.config import compose
from pipeline.training.callbacks import NonFiniteLossError
from pipeline.commands.train import run_train
from tests import fault_runner
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


def test_a_training_killed_mid_epoch_resumes_from_its_last_checkpoint_into_the_same_run(tmp_path, tiny_dataset, capsys):
    # 13 training images in batches of 4: 3 or 4 steps an epoch, so the 6th step is in the middle of epoch 1.
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", "data.batch_size=4", "trainer.max_epochs=3",
                               "trainer.min_epochs=3")
    code = fault_runner.run_killed("pipeline.training.module:VAELightningModule.training_step", "before", 6,
                                   ["train", *overrides], tmp_path / "killed.log")
    assert code == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vae-training").experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "RUNNING"  # nobody ended it: the process died
    run_id = killed.info.run_id
    last = tmp_path / "outputs" / "train" / "tiny" / run_id / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # epoch 0 was the last one to finish
    assert len(client.get_metric_history(run_id, "val/loss")) == 1

    assert main(["train", *overrides, f"train.resume={last}"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["run_id"] == run_id and resumed["epochs"] == 3 and resumed["version"] == 1
    (run,) = client.search_runs([experiment])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val/loss")]
    assert len(steps) == 3 and steps == sorted(set(steps))  # epochs 0, 1, 2: each validated once, none twice
    assert client.get_model_version("tiny-vae", "1").run_id == run_id


def test_resume_from_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "data" / "fabric"  # not generated: the mistake is named before any data is made
    assert main(["train", *tiny_overrides(tmp_path), f"data.root={root}", f"train.resume={tmp_path / 'nope.ckpt'}"]) == 1
    assert "no such checkpoint file" in capsys.readouterr().err and not root.exists()
