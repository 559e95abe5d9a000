import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import ConfigError, compose, require


def test_defaults_compose_and_paths_are_absolute():
    cfg = compose([])
    assert cfg.data.root.endswith("data/builtin/fabric") and cfg.data.root.startswith("/")
    assert cfg.data.name == "fabric" and cfg.tracking.registered_model == "fabric-vae"


def test_override_and_data_root_names_the_dataset():
    cfg = compose(["model.latent_dim=64", "data.root=/somewhere/bottle"])
    assert cfg.model.latent_dim == 64 and cfg.data.name == "bottle"
    assert cfg.score.output_dir.endswith("score/bottle")


def test_mistyped_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="latnt_dim"):
        compose(["model.latnt_dim=3"])


def test_require_names_a_missing_key():
    cfg = compose([])
    with pytest.raises(ConfigError, match="'score.nothing'"):
        require(cfg, "score.nothing")


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    assert main(["train", "trainer.max_epoch=3"]) == 2
    assert "max_epoch" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_cli_reports_a_missing_data_root(tmp_path, capsys):
    assert main(["score", f"data.root={tmp_path / 'nope'}", f"tracking.store_dir={tmp_path / 'm'}"]) == 1
    assert f"data root {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_one_key_names_the_model_of_every_command_and_overrides_are_recorded():
    cfg = compose(["detector=3", "score.alpha=0.05"])
    assert cfg.detector == 3 and compose([]).detector is None  # null: each command's own default
    assert list(cfg.command_line) == ["detector=3", "score.alpha=0.05"]
    for gone in ("score.model", "export.model", "inspect.model", "review.calibrate_model", "promote.version",
                 "score.mc_samples", "data.val_fraction", "inspect.pause_before_commit"):
        with pytest.raises(ConfigError, match=gone.split(".")[-1]):
            compose([f"{gone}=1"])
    assert {"map", "mc_samples", "components"} <= set(compose([]).detect)  # fixed at training, in conf/detect
    assert {"widths", "steps", "synthesis"} <= set(compose([]).head)


def test_library_banners_are_dropped_even_when_lightning_was_imported_first():
    """A spawned bench worker imports Lightning (unpickling its job) before it sets up logging; Lightning then
    gives its loggers their own handler, which must drop the banners too and keep the warnings."""
    code = ("import logging, pytorch_lightning\n"
            "from pipeline.config import configure_logging\n"
            "configure_logging()\n"
            "logging.getLogger('pytorch_lightning.utilities.rank_zero').info('GPU available: False')\n"
            "logging.getLogger('pytorch_lightning.utilities.rank_zero').warning('a real warning')\n"
            "logging.getLogger('pipeline.bench').info('our own line')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "GPU available" not in done.stderr
    assert "a real warning" in done.stderr and "our own line" in done.stderr
