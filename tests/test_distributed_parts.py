"""The pieces of distributed runs that need no second process: ranks, precision, configs, the merge,
and system metrics on a real MLflow store."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import compose
from pipeline.data.datamodule import drop_last
from pipeline.data.layout import Sample
from pipeline.detector.distributed import fingerprint, merge_rank_rows
from pipeline.training.world import wants_distributed
from pipeline.training.distributed import build_strategy, global_rank_from_env, resolve_precision
from pipeline.training.fit import build_trainer


@pytest.mark.parametrize("env, devices, rank", [
    ({}, 2, 0),                                           # a plain single-process run
    ({"RANK": "5", "LOCAL_RANK": "1"}, 4, 5),             # torchrun
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 2, 1),        # Lightning's launcher, second process
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 4, 4),        # first process of the second machine
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, 2, 3),   # srun
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 1, 0),   # a one-task SLURM allocation
])
def test_global_rank_from_the_launchers_environment(env, devices, rank):
    assert global_rank_from_env(env, devices) == rank


def test_precision_auto_is_bf16_only_on_a_gpu_that_supports_it():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"  # explicit values pass through
    assert resolve_precision("auto", "cpu", bf16_supported=True) == "32-true"


def test_trainer_configs_compose_into_distributed_trainers(tiny_cfg):
    cfg = tiny_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2 and wants_distributed(cfg.trainer)
    trainer = build_trainer(cfg.trainer, [], None, max_epochs=1)
    assert trainer.world_size == 2 and type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.precision == "32-true"
    forced = build_strategy(compose(["trainer=ddp", "trainer.process_group_backend=gloo"]).trainer)
    assert forced.process_group_backend == "gloo"
    multinode = compose(["trainer=multinode", "trainer.devices=4"]).trainer
    assert multinode.num_nodes == 2 and multinode.strategy == "ddp" and wants_distributed(multinode)
    assert not wants_distributed(compose([]).trainer)  # the default stays on the single-process path


def _rows(indices):
    return pd.DataFrame({"index": indices, "image_path": [f"test/good/{i}.png" for i in indices],
                         "defect_type": "good", "label": 0, "recon_error": [float(i) for i in indices]})


def test_merge_orders_the_ranks_rows_and_unreadable_files_by_sample():
    errors = pd.DataFrame({"index": [2], "image_path": ["test/good/2.png"], "error": ["truncated"]})
    merged = merge_rank_rows([_rows([1, 3, 4]), _rows([0]), errors], n_samples=5)
    assert merged["index"].tolist() == [0, 1, 2, 3, 4]
    assert merged["recon_error"].tolist()[:2] == [0.0, 1.0] and merged.loc[2, "error"] == "truncated"


def test_ranks_agree_only_on_the_same_weights_and_image_list():
    samples = [Sample(f"/d/{n}.png", f"test/good/{n}.png", "good", None) for n in "abc"]
    assert fingerprint("w1", samples) == fingerprint("w1", list(samples))
    assert fingerprint("w2", samples) != fingerprint("w1", samples)
    assert fingerprint("w1", samples[::-1]) != fingerprint("w1", samples)  # the order is part of it


@pytest.mark.parametrize("parts, message", [
    ([[0, 1, 2], [2, 3]], r"duplicated \[2\]"),   # sampler padding must never reach the results
    ([[0, 1], [3]], r"missing \[2\]"),            # nor a lost shard
    ([[0, 1, 2, 3], [7]], r"unknown \[7\]"),
])
def test_merge_refuses_rows_that_do_not_cover_every_image_once(parts, message):
    with pytest.raises(RuntimeError, match=message):
        merge_rank_rows([_rows(p) for p in parts], n_samples=4)


def test_a_short_run_still_gets_system_metrics(tiny_cfg):
    from pipeline.tracking.runs import start_run
    from pipeline.tracking.system_metrics import start_monitor, stop_monitor

    cfg = tiny_cfg("tracking.system_metrics_interval=60")
    client, run_id = start_run(cfg, "vae-training", "short", {})
    monitor = start_monitor(cfg, run_id)
    stop_monitor(monitor)  # long before the first 60 s sample
    metrics = MlflowClient(client.tracking_uri).get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def test_a_small_shard_still_gets_a_training_batch():
    assert drop_last(13, 8, None) and drop_last(13, 8, SimpleNamespace(world_size=1))  # one full batch, rest dropped
    assert not drop_last(13, 8, SimpleNamespace(world_size=2))  # 6-7 images per rank: keep the partial batch
    assert drop_last(40, 8, SimpleNamespace(world_size=4))
