"""Review panels, sample ids, verdict parsing and summaries: pure functions on hand-made inputs."""

import numpy as np
import pandas as pd
import pytest

from pipeline.review.flagged import sample_ids
from pipeline.review.panels import PanelText, defect_area, outline, render_panel
from pipeline.review.verdicts import apply_verdicts, match_ids, parse_inline, parse_verdict, summarize
from pipeline.scoring.threshold import pixel_threshold


def test_pixel_threshold_is_the_quantile_of_all_normal_pixels():
    maps = [np.arange(100, dtype=float).reshape(10, 10), np.full((10, 10), 200.0)]
    assert pixel_threshold(maps, 0.5) == pytest.approx(np.quantile(np.r_[np.arange(100), [200] * 100], 0.5))
    with pytest.raises(ValueError, match="pixel_quantile"):
        pixel_threshold(maps, 1.0)


def test_defect_area_and_outline_of_a_square_region():
    anomaly_map = np.zeros((10, 10))
    anomaly_map[2:6, 3:7] = 1.0  # a 4x4 square: 16 of 100 pixels
    assert defect_area(anomaly_map, 0.5) == pytest.approx(0.16)
    assert defect_area(anomaly_map, None) is None
    edge = outline(anomaly_map > 0.5)
    assert edge.sum() == 12 and not edge[3:5, 4:6].any()  # the ring of the square, not its 2x2 inside


def test_panel_shows_three_tiles_and_the_outline_colour():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 24, 1), dtype=np.uint8)
    anomaly_map = np.zeros((20, 24), np.float32)
    anomaly_map[5:10, 5:10] = 1.0
    text = PanelText("scratch_001", 0.5, 0.25, 0.01, defect_area(anomaly_map, 0.5))
    panel = np.asarray(render_panel(image, image, anomaly_map, 1.0, 0.5, text, tile_size=64))
    assert panel.shape[1] == 3 * 64 + 16 and panel.shape[2] == 3
    assert (panel == (255, 0, 255)).all(axis=2).sum() > 20  # the magenta outline is drawn
    without = np.asarray(render_panel(image, image, anomaly_map, 1.0, None, text, tile_size=64))
    assert not (without == (255, 0, 255)).all(axis=2).any()
    assert "defect area 5.2 %" in text.lines()[1]  # 25 of 480 pixels
    with pytest.raises(ValueError, match="same height"):
        render_panel(image, image[:10], anomaly_map, 1.0, 0.5, text)


def test_sample_ids_are_unique_and_key_safe():
    assert sample_ids(["test/scratch/003.png", "test/good/a b.png", "test/scratch/003.jpg"]) == \
        ["test_scratch_003", "test_good_a_b", "test_scratch_003-2"]


def test_verdicts_parse_match_apply_and_summarize():
    assert parse_verdict("True-Defect") == "true_defect" and parse_verdict("f") == "false_alarm"
    with pytest.raises(ValueError, match="not a verdict"):
        parse_verdict("maybe")
    assert parse_inline(["a:d", "b:c:unsure"]) == {"a": "true_defect", "b:c": "unsure"}
    with pytest.raises(ValueError, match="review.set"):
        parse_inline(["nocolon"])
    flagged = pd.DataFrame({"sample_id": ["a", "b", "c"], "image_path": ["x/a.png", "x/b.png", "x/c.png"],
                            "review_status": ["pending"] * 3})
    matched = match_ids({"a": "true_defect", "x/b.png": "false_alarm"}, flagged)
    assert matched == {"a": "true_defect", "b": "false_alarm"}
    with pytest.raises(ValueError, match="zzz"):
        match_ids({"zzz": "unsure"}, flagged)
    table, records = apply_verdicts(flagged, matched, "qa")
    assert list(table["review_status"]) == ["true_defect", "false_alarm", "pending"]
    assert list(records["verdict"]) == ["true_defect", "false_alarm"] and set(records["reviewer"]) == {"qa"}
    summary = summarize(table["review_status"])
    assert summary["status"] == "partial" and summary["flag_precision"] == 0.5 and summary["n_pending"] == 1
    assert summarize(pd.Series([], dtype=str))["status"] == "nothing_flagged"
    assert summarize(pd.Series(["unsure"]))["flag_precision"] is None
