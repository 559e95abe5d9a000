"""Review panels, the review set (which images are shown, in which order, under which key), sample ids,
verdict parsing and summaries: pure functions on hand-made inputs."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.detector.files import Kept
from pipeline.report.panels import PanelText, outline, render_panel, render_thumbnail
from pipeline.report.review_page import write_review_page
from pipeline.report.review_set import (AUDIT, FLAGGED, NOT_FLAGGED, RECORDS, audit_indices, build_review,
                                        sample_id, unique_ids, write_records)
from pipeline.review.loop import verdict_tags
from pipeline.review.verdicts import apply_verdicts, match_ids, parse_inline, parse_verdict, summarize
from pipeline.scoring.maps import defect_regions
from pipeline.scoring.threshold import pixel_threshold


def test_pixel_threshold_is_the_quantile_of_all_normal_pixels():
    maps = [np.arange(100, dtype=float).reshape(10, 10), np.full((10, 10), 200.0)]
    assert pixel_threshold(maps, 0.5) == pytest.approx(np.quantile(np.r_[np.arange(100), [200] * 100], 0.5))
    with pytest.raises(ValueError, match="pixel_quantile"):
        pixel_threshold(maps, 1.0)


def test_defect_area_and_outline_of_a_square_region():
    anomaly_map = np.zeros((10, 10))
    anomaly_map[2:6, 3:7] = 1.0  # a 4x4 square: 16 of 100 pixels
    assert defect_regions(anomaly_map, 0.5) == {"defect_area": pytest.approx(0.16), "defect_regions": 1}
    anomaly_map[8, 8] = 1.0  # a second, separate region
    assert defect_regions(anomaly_map, 0.5)["defect_regions"] == 2
    assert defect_regions(anomaly_map, None)["defect_regions"] == -1
    anomaly_map[8, 8] = 0.0
    edge = outline(anomaly_map > 0.5)
    assert edge.sum() == 12 and not edge[3:5, 4:6].any()  # the ring of the square, not its 2x2 inside


def test_panel_shows_three_tiles_and_the_outline_colour():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 24, 1), dtype=np.uint8)
    anomaly_map = np.zeros((20, 24), np.float32)
    anomaly_map[5:10, 5:10] = 1.0
    text = PanelText(3, "scratch_001", FLAGGED, 0.5, 0.25, 0.01, defect_regions(anomaly_map, 0.5)["defect_area"])
    panel = np.asarray(render_panel(image, image, anomaly_map, 1.0, 0.5, text, tile_size=64))
    assert panel.shape[1] == 3 * 64 + 16 and panel.shape[2] == 3
    assert (panel == (255, 0, 255)).all(axis=2).sum() > 20  # the magenta outline is drawn
    without = np.asarray(render_panel(image, image, anomaly_map, 1.0, None, text, tile_size=64))
    assert not (without == (255, 0, 255)).all(axis=2).any()
    assert text.lines() == ["#003 scratch_001   FLAGGED",
                            "score 0.5 > threshold 0.25   p = 0.01   defect area 5.2 %"]  # 25 of 480 pixels
    with pytest.raises(ValueError, match="same height"):
        render_panel(image, image[:10], anomaly_map, 1.0, 0.5, text)
    by_map = PanelText(3, "scratch_001", FLAGGED, 0.5, 0.25, 0.01, None, decided_by="linear_max")
    assert by_map.lines()[1].startswith("score 0.5 by the linear residual > threshold 0.25")
    cannot = PanelText(1, "a", NOT_FLAGGED, 0.5, float("inf"), 1.0, None)
    assert "<= threshold inf (cannot flag)" in cannot.lines()[1] and "no pixel threshold" in cannot.lines()[1]
    thumbnail = render_thumbnail(image, anomaly_map, 1.0, 0.5, text, width=240)
    assert thumbnail.size[0] == 240 and thumbnail.size[1] < 240  # fits a gallery card whole


def test_sample_ids_are_unique_and_key_safe():
    assert unique_ids(["test/scratch/003.png", "test/good/a b.png", "test/scratch/003.jpg"]) == \
        ["test_scratch_003", "test_good_a_b", "test_scratch_003-2"]
    assert sample_id("cam1/part 01.png") == "cam1_part_01"  # no extension left in the id


def _scored(n: int, flagged: set[int], tmp_path=None) -> tuple[pd.DataFrame, dict]:
    """A hand-made scored frame (score = 10 * index, shuffled rows) and panel material for every image."""
    order = np.random.default_rng(0).permutation(n)
    frame = pd.DataFrame({"index": order, "image_path": [f"cam/{i:02d}.png" for i in order],
                          "score": [10.0 * i for i in order], "threshold": 10.0 * (n - len(flagged)) - 5,
                          "p_value": 0.5, "q_value": np.nan, "is_anomaly": [int(i in flagged) for i in order],
                          "defect_area": 0.01, "label": 0, "defect_type": "unknown"})
    kept = {i: Kept(np.full((1, 8, 8), 0.5, np.float16), np.full((1, 8, 8), 0.4, np.float16),
                    np.full((8, 8), float(i), np.float32)) for i in range(n)}
    return frame, kept


def test_review_set_shows_flagged_first_by_rank_then_the_audit_sample(tmp_path):
    frame, kept = _scored(12, flagged={9, 10, 11})
    audit = {0, 10, 4}  # 10 is also flagged: shown once, as flagged, marked audit
    records = build_review(frame, kept, audit, tmp_path, pixel_threshold=5.0, max_panels=2, top_when_none=5,
                           tile_size=32, thumbnail_width=120)
    assert [(r.sample_id, r.status, r.rank, r.audit) for r in records] == [
        ("cam_11", FLAGGED, 1, False), ("cam_10", FLAGGED, 2, True),  # at most max_panels flagged, by score
        ("cam_04", AUDIT, 8, True), ("cam_00", AUDIT, 12, True)]      # then the rest of the audit sample
    keys = [r.key for r in records]
    assert keys == ["001_cam_11", "002_cam_10", "008_cam_04", "012_cam_00"] and keys == sorted(keys)
    for r in records:  # one panel and one thumbnail each, named by key, never 'x.png.png'
        assert r.panel_file == f"review/panels/{r.key}.png" and (tmp_path / r.panel_file).is_file()
        assert r.thumbnail_file == f"review/thumbnails/{r.key}.png" and (tmp_path / r.thumbnail_file).is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name.count(".png") > 1]
    assert sorted(p.stem for p in (tmp_path / "review" / "panels").iterdir()) == keys
    write_records(tmp_path, records)
    stored = json.loads((tmp_path / RECORDS).read_text())
    assert [r["key"] for r in stored] == keys and {r["review_status"] for r in stored} == {"pending"}
    page = write_review_page(tmp_path, records, {"n_flagged": 3, "n_images": 12}, "inspect", run_id="abc")
    html = page.read_text()
    assert html.index("001_cam_11") < html.index("002_cam_10") < html.index("012_cam_00")  # by rank
    assert "python -m pipeline review abc review.set=[cam_11:true_defect]" in html and "data:image/png;base64" in html


def test_review_set_shows_the_top_not_flagged_images_when_nothing_is_flagged(tmp_path):
    frame, kept = _scored(12, flagged=set())
    records = build_review(frame, kept, {11, 2}, tmp_path, 5.0, max_panels=10, top_when_none=3, tile_size=32,
                           thumbnail_width=120)
    assert [(r.key, r.status) for r in records] == [("001_cam_11", NOT_FLAGGED), ("002_cam_10", NOT_FLAGGED),
                                                    ("003_cam_09", NOT_FLAGGED), ("010_cam_02", AUDIT)]
    assert [r.audit for r in records] == [True, False, False, True]


def test_audit_sample_is_seeded_and_bounded():
    assert audit_indices(100, 10, seed=1) == audit_indices(100, 10, seed=1) != audit_indices(100, 10, seed=2)
    assert len(audit_indices(100, 10, 1)) == 10 and audit_indices(3, 10, 1) == {0, 1, 2}
    assert audit_indices(0, 10, 1) == set() and audit_indices(5, 0, 1) == set()


def test_verdict_tags_are_read_and_a_mistyped_one_is_ignored_with_a_warning(caplog):
    tags = {"verdict.cam_01": "true_defect", "verdict.cam_02": "F", "verdict.cam_03": "maybe", "review.status": "x"}
    assert verdict_tags(tags) == {"cam_01": "true_defect", "cam_02": "false_alarm"}
    assert "verdict.cam_03" in caplog.text and "'maybe' is not a verdict" in caplog.text


def test_verdicts_parse_match_apply_and_summarize():
    assert parse_verdict("True-Defect") == "true_defect" and parse_verdict("f") == "false_alarm"
    with pytest.raises(ValueError, match="not a verdict"):
        parse_verdict("maybe")
    assert parse_inline(["a:d", "b:c:unsure"]) == {"a": "true_defect", "b:c": "unsure"}
    with pytest.raises(ValueError, match="review.set"):
        parse_inline(["nocolon"])
    flagged = pd.DataFrame({"sample_id": ["a", "b", "c"], "image_path": ["x/a.png", "x/b.png", "x/c.png"],
                            "status": [FLAGGED, FLAGGED, AUDIT], "review_status": ["pending"] * 3})
    matched = match_ids({"a": "true_defect", "x/b.png": "false_alarm"}, flagged)
    assert matched == {"a": "true_defect", "b": "false_alarm"}
    with pytest.raises(ValueError, match="zzz"):
        match_ids({"zzz": "unsure"}, flagged)
    table, records = apply_verdicts(flagged, matched, "qa")
    assert list(table["review_status"]) == ["true_defect", "false_alarm", "pending"]
    assert list(records["verdict"]) == ["true_defect", "false_alarm"] and set(records["reviewer"]) == {"qa"}
    summary = summarize(table)
    assert summary["status"] == "partial" and summary["flag_precision"] == 0.5 and summary["n_pending"] == 1
    assert (summary["n_shown"], summary["n_flagged"], summary["n_reviewed"]) == (3, 2, 2)
    audit_only = summarize(apply_verdicts(flagged, {"c": "false_alarm"}, "qa")[0])
    assert audit_only["n_false_alarm"] == 1 and audit_only["flag_precision"] is None  # not a flag: no precision
    assert summarize(flagged.iloc[:0])["status"] == "nothing_to_review"
    assert summarize(flagged.assign(review_status="unsure"))["flag_precision"] is None
