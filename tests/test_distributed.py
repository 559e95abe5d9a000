"""Real multi-process DDP on CPU (gloo): training and scoring launched from the CLI in a subprocess, since
`strategy=ddp` re-runs the command line for the second rank (inside pytest it would re-run pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.config import compose
from pipeline.data.conditional import build_datamodule
from pipeline.detector import AnomalyDetector
from pipeline.models.factory import build_network
from pipeline.scoring.scores import SCORE_NAMES
from pipeline.scoring.threshold import conformal_threshold
from pipeline.training.distributed import leave_process_group
from pipeline.training.fit import load_best_weights
from tests.conftest import _part, tiny_overrides, write_png

ROOT = Path(__file__).resolve().parents[1]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


# Bit-for-bit comparisons need the same float reduction order on both sides: the same thread count (one, for
# every rank and for the one-process reference) and the same batches. The fused score divides by the tiny
# detector's spread on 4 selection images, which turns a last-bit difference in neg_elbo_mean into 1e-4.
ONE_THREAD = 1


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(ONE_THREAD)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(*args: str) -> dict:
    """`python -m pipeline ...` in a fresh process from the project root; its JSON summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    env["OMP_NUM_THREADS"] = str(ONE_THREAD)  # Lightning keeps a set value for every rank
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_a_command_leaves_the_process_group_it_joined(tmp_path):
    """A gloo group alive at interpreter exit aborts the rank about half the time: `main` calls this after every command."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert torch.distributed.is_initialized()
        leave_process_group()
        assert not torch.distributed.is_initialized()
        leave_process_group()  # no group: nothing to do
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory):
    """A tiny dataset with one unreadable test file, and a detector trained on it by 2 gloo processes."""
    tmp = tmp_path_factory.mktemp("ddp")
    root, rng = tmp / "tiny", np.random.default_rng(1)
    # 23 training images: 12 training, 4 selection, 7 calibration; 2 ranks shard 12 training images into
    # batches of 8 unevenly, and the sampler pads the odd shards.
    for i in range(23):
        write_png(root / "train" / "good" / f"{i:03d}.png", _part(rng, 48))
    for i in range(6):
        write_png(root / "test" / "good" / f"{i:03d}.png", _part(rng, 48))
        scratched = _part(rng, 48)
        scratched[10 + 4 * i:12 + 4 * i, 8:40] = 255
        write_png(root / "test" / "scratch" / f"{i:03d}.png", scratched)
    (root / "test" / "good" / "broken.png").write_bytes(b"not a png")  # 13 test files: uneven shards
    overrides = tiny_overrides(tmp, f"data.root={root}", "tracking.system_metrics_interval=1")
    summary = run_cli("train", *overrides, *DDP)
    return tmp, overrides, summary


def test_ddp_training_makes_one_run_one_version_and_the_single_process_threshold(ddp_job):
    tmp, overrides, summary = ddp_job
    client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vae-training")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # rank 1 created no run of its own
    run = runs[0]
    assert run.info.status == "FINISHED" and summary["world_size"] == 2
    params = run.data.params
    assert params["distributed.world_size"] == "2" and params["distributed.devices_per_node"] == "2"
    assert params["distributed.strategy"] == "DDPStrategy" and params["distributed.process_group_backend"] == "gloo"
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)
    assert any(k.startswith("system/system_memory") for k in run.data.metrics)
    assert run.data.metrics["perf/train_images_per_second"] > 0
    assert [str(v.version) for v in client.search_model_versions("name='tiny-vae'")] == ["1"]
    assert len(list((tmp / "outputs" / "train" / "tiny").iterdir())) == 1  # one output folder, rank 0's

    # The best checkpoint loads and holds the global level's weights the detector was saved with (the local
    # level, when the fit chose it, has a best checkpoint of its own).
    cfg = compose(overrides)
    net = build_network(cfg.model.kind, cfg.data.channels, cfg.data.image_size, cfg.model.latent_dim,
                        cfg.model.hidden_channels, cfg.model.latent_layout, local=cfg.model.local)
    checkpoints = Path(summary["detector_dir"]).parent / "checkpoints"
    load_best_weights(net, str(checkpoints / "best.ckpt"))
    saved = AnomalyDetector.load(summary["detector_dir"])
    for name, tensor in saved.vae.state_dict().items():
        if not name.startswith("local."):
            assert torch.equal(tensor, net.state_dict()[name]), name
    if saved.spec.reconstruction == "local":
        load_best_weights(net, str(checkpoints / "local" / "best.ckpt"))
        for name, tensor in saved.vae.local.state_dict().items():
            assert torch.equal(tensor, net.local.state_dict()[name]), name

    # Here, in one process: the same calibration images (same seed, same split), each once, score exactly as
    # the DDP job stored them, so the threshold is the one a single process computes (no sampler padding).
    datamodule = build_datamodule(cfg, Path(cfg.data.root))
    datamodule.setup("fit")
    assert summary["sizes"] == {"n_train": 12, "n_selection": 4, "n_calibration": 7, "scheme": "split",
                                "n_members": 1}
    assert {k: summary["sizes"][k] for k in ("n_train", "n_selection", "n_calibration")} == {
        "n_train": len(datamodule.train_images), "n_selection": len(datamodule.selection_images),
        "n_calibration": len(datamodule.calibration_images)}
    with one_thread():
        scores = saved.score(datamodule.calibration_images, batch_size=cfg.data.batch_size,
                             extra=("neg_elbo", "neg_iwae", "msgms_error"))
    calibrated = [name for name in SCORE_NAMES if name in scores]  # linear_max only where the fit kept the level
    assert sorted(saved.spec.calibration_scores) == sorted(calibrated)
    for name in calibrated:
        np.testing.assert_allclose(saved.spec.calibration_scores[name], scores[name], rtol=1e-5, err_msg=name)
    expected = conformal_threshold(scores[cfg.score.score], cfg.score.alpha)
    assert summary["threshold"] == pytest.approx(expected, rel=1e-5)
    assert run.data.metrics["threshold"] == pytest.approx(expected, rel=1e-5)
    assert len(saved.spec.calibration_scores[cfg.score.score]) == 7  # every calibration image once


def test_distributed_scoring_scores_every_image_once_like_one_process(ddp_job, capsys):
    tmp, overrides, _ = ddp_job
    overrides = [*overrides, "data.batch_size=1"]  # the ranks' shards batch differently: one image per batch
    single_dir, ddp_dir = tmp / "scored-1", tmp / "scored-2"
    with one_thread():
        assert main(["score", *overrides, f"score.output_dir={single_dir}", "score.extra=[neg_elbo]"]) == 0
    single_metrics = json.loads(capsys.readouterr().out)
    ddp_metrics = run_cli("score", *overrides, f"score.output_dir={ddp_dir}", "score.extra=[neg_elbo]", *DDP)

    single, ddp = pd.read_csv(single_dir / "scores.csv"), pd.read_csv(ddp_dir / "scores.csv")
    assert len(ddp) == 12 and ddp["image_path"].is_unique  # one row per readable image
    assert list(ddp["image_path"]) == list(single["image_path"])
    for column in ("score", "fused", "map_max", "recon_error", "neg_elbo", "p_value", "defect_area"):
        np.testing.assert_allclose(ddp[column], single[column], rtol=1e-5, atol=1e-7)
    assert (ddp["is_anomaly"] == single["is_anomaly"]).all()
    errors = pd.read_csv(ddp_dir / "errors.csv")
    assert list(errors["image_path"]) == ["test/good/broken.png"]
    for rel in ddp["image_path"]:
        np.testing.assert_allclose(np.load(ddp_dir / "maps" / f"{rel}.npy").astype(np.float32),
                                   np.load(single_dir / "maps" / f"{rel}.npy").astype(np.float32), rtol=2e-3, atol=1e-3)  # float16 maps
    assert not (ddp_dir / ".ranks").exists()  # per-rank scratch files merged and removed
    assert ddp_metrics["image_auroc"] == pytest.approx(single_metrics["image_auroc"])
    # the same review set: flagged images first by rank, the same audit sample
    single_records = json.loads((single_dir / "review" / "records.json").read_text())
    ddp_records = json.loads((ddp_dir / "review" / "records.json").read_text())
    assert [(r["key"], r["status"], r["audit"]) for r in ddp_records] == \
        [(r["key"], r["status"], r["audit"]) for r in single_records]

    client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    scoring = client.search_runs([client.get_experiment_by_name("vae-scoring").experiment_id])
    assert sorted(r.info.run_id for r in scoring) == sorted([single_metrics["run_id"], ddp_metrics["run_id"]])


def test_ddp_trains_a_cross_conformal_detector_whose_members_each_calibrate_their_own_fold(ddp_job, capsys):
    tmp, overrides, _ = ddp_job
    cross = [*overrides, "data.split.scheme=cross", "data.split.members=3", "tracking.enabled=false",
             f"output_root={tmp / 'cross'}"]
    summary = run_cli("train", *cross, *DDP)
    assert summary["guarantee"]["n_members"] == 3 and summary["guarantee"]["n_calibration"] == 23
    detector = AnomalyDetector.load(summary["detector_dir"])
    assert sorted(len(m.spec.calibration_scores["fused"]) for m in detector.members) == [7, 8, 8]
    single_dir, ddp_dir = tmp / "cross-scored-1", tmp / "cross-scored-2"
    scoring = [*cross, f"detector={summary['detector_dir']}", "data.batch_size=1"]
    with one_thread():
        assert main(["score", *scoring, f"score.output_dir={single_dir}"]) == 0
    capsys.readouterr()
    run_cli("score", *scoring, f"score.output_dir={ddp_dir}", *DDP)
    single, ddp = pd.read_csv(single_dir / "scores.csv"), pd.read_csv(ddp_dir / "scores.csv")
    assert list(ddp["image_path"]) == list(single["image_path"]) and len(ddp) == 12
    np.testing.assert_allclose(ddp["score"], single["score"], rtol=1e-5, atol=1e-7)
    assert (ddp["is_anomaly"] == single["is_anomaly"]).all() and (ddp["p_value"] == single["p_value"]).all()
