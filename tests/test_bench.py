"""The benchmark harness: baselines on hand-made arrays, and one tiny real bench run end to end."""

import json

import numpy as np

from pipeline.__main__ import main
from pipeline.bench.baselines import PCAReconstruction, PixelIsolationForest
from pipeline.detector.compute import MAP_KINDS
from pipeline.scoring.scores import SCORE_NAMES
from tests.conftest import TINY


def _images(rng, n, defect=False):
    x = np.full((n, 1, 16, 16), 0.3, np.float32) + rng.normal(0, 0.02, (n, 1, 16, 16)).astype(np.float32)
    if defect:
        x[:, :, 4:8, 4:8] = 1.0  # a bright square where normal images are flat
    return x


def test_baselines_rank_a_defect_above_normal_and_pca_maps_find_it():
    rng = np.random.default_rng(0)
    train, normal, defect = _images(rng, 64), _images(rng, 8), _images(rng, 8, defect=True)
    pca = PCAReconstruction(variance=0.9, map_sigma=1.0).fit(train)
    assert pca.score_samples(defect).min() > pca.score_samples(normal).max()
    maps = pca.anomaly_maps(defect)  # (N, S, S), smoothed residual
    assert maps.shape == (8, 16, 16)
    assert maps[:, 4:8, 4:8].mean() > 10 * maps[:, 12:, 12:].mean()
    by_map = PCAReconstruction(variance=0.9, map_sigma=1.0, image_score="map_max").fit(train)
    np.testing.assert_allclose(by_map.score_samples(defect), maps.reshape(8, -1).max(axis=1), rtol=1e-6)
    forest = PixelIsolationForest(n_estimators=50).fit(train)
    assert forest.score_samples(defect).mean() > forest.score_samples(normal).mean()  # higher = more anomalous


def test_bench_command_writes_every_section(tmp_path, tiny_dataset, capsys):
    product = [*TINY, f"data.root={tiny_dataset}"]
    md, js = tmp_path / "B.md", tmp_path / "B.json"
    overrides = ["bench.quick=true", f"bench.overrides=[{','.join(repr(o) for o in product)}]",
                 "bench.sizes.quick.digits=[]", "bench.categories=[tiny]", "bench.report_categories=[extra]", "bench.sizes.quick.train_epochs=2",
                 "bench.sizes.quick.memory_n=3", "bench.sizes.quick.score_images=0", "bench.sizes.quick.pyod_vae_epochs=2",
                 "bench.sizes.quick.extra_seeds=[1]",
                 "bench.iforest_trees=20", "bench.speed_tracking=false", f"bench.markdown={md}", f"bench.json={js}",
                 f"bench.work_dir={tmp_path / 'work'}"]
    assert main(["bench", *overrides]) == 0
    data = json.loads(js.read_text())
    speed = data["speed"]
    assert speed["training"]["efficiency"] > 0 and speed["scoring"]["ratio_same_work"] > 0
    assert set(speed["scoring"]["stages"]) == {"decode", "forward", "maps", "write"}
    assert [m["n_images"] for m in speed["memory"]] == [3, 30] and all(m["n_errors"] == 0 for m in speed["memory"])
    tiny = data["quality"]["tiny"]  # every data override points at the tiny set
    assert set(tiny["product"]["scores"]) == set(SCORE_NAMES) and set(tiny["product"]["maps"]) == set(MAP_KINDS)
    assert 0 <= tiny["product"]["pixel_auroc"] <= 1 and 0 <= tiny["baselines"]["pca"]["aupro"] <= 1
    assert tiny["baselines"]["iforest"]["pixel_auroc"] is None  # a forest has no map
    assert set(tiny["product"]["false_alarm"]) == set(SCORE_NAMES)
    for model in ("product", "ae"):  # the VAE and the AE trained again at the extra seed, default scoring only
        assert [e["seed"] for e in tiny["seeds"][model]] == [0, 1]
        assert tiny["seeds"][model][0]["image_auroc"] == tiny[model]["image_auroc"]
        assert 0 <= tiny["seeds"][model][1]["aupro"] <= 1
    assert data["quality"]["extra"]["report_only"] and not tiny["report_only"]  # a report-only family
    text = md.read_text()
    assert "### `extra` — report-only family" in text
    for heading in ("## 1. Training", "## 2. Scoring", "## 3. Peak memory", "## 4. Detection quality", "## 5. Wall",
                    "### Product VAE vs plain autoencoder, per training seed"):
        assert heading in text
    assert "Quick run" in text

    # Re-measure one section alone: the others are kept from the file, with where they came from.
    before = json.loads(js.read_text())
    assert main(["bench", *overrides, "bench.sections=[wall_time]"]) == 0
    after = json.loads(js.read_text())
    assert after["speed"] == before["speed"] and after["quality"] == before["quality"]
    assert after["context"]["sections_from"]["speed"]["date"] == before["context"]["date"]
    assert "Sections kept from earlier runs" in md.read_text()
    assert main(["bench", *overrides, "bench.sections=[]"]) == 1  # nothing to measure: a clear error
