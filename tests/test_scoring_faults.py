"""A full disk while scoring: a clear error, nothing half-written, and a rerun succeeds."""

import errno
import json

import numpy as np
import pandas as pd

from pipeline.__main__ import main


def test_disk_full_while_writing_maps_then_rerun(trained, tmp_path, capsys, monkeypatch):
    overrides = trained.with_(f"score.output_dir={tmp_path / 'out'}", "tracking.enabled=false",
                              f"detector={trained.detector_dir}")

    real_save, calls = np.save, {"n": 0}

    def full_disk(handle, array, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # the sixth map does not fit any more
            raise OSError(errno.ENOSPC, "No space left on device", getattr(handle, "name", None))
        return real_save(handle, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", full_disk)
    assert main(["score", *overrides]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and ".npy.tmp" in err  # names the file it was writing
    out = tmp_path / "out"
    assert not list(out.rglob("*.tmp"))           # no partial file left behind
    assert not (out / "scores.csv").exists()       # no results table claiming a complete run
    assert len(list(out.rglob("*.npy"))) == 5      # the maps written before are whole files
    assert all(np.load(p).shape == (48, 48) for p in out.rglob("*.npy"))

    monkeypatch.setattr(np, "save", real_save)      # space is back
    assert main(["score", *overrides]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert len(pd.read_csv(out / "scores.csv")) == 12 == metrics["n_images"]
