"""Command line: `python -m pipeline <command> [key=value overrides ...]`.

Each command composes the config from conf/ and hands it to one stage's entry point.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys

from omegaconf.errors import OmegaConfBaseException

USAGE = """usage: python -m pipeline <command> [overrides ...]

commands:
  data    generate the built-in dataset (data=builtin, default) or the digits tasks (data=digits)
  train   train a detector on data.root, calibrate its threshold, log it to MLflow
  score   score the test split of data.root with a trained detector (score.model=latest by default)
  evaluate  recompute metrics and figures of a score output folder (score.output_dir) against the labels
  inspect judge every new image in inspect.inbox with the champion model (exit codes: see README)
  promote [version]   give a registered version (default: the newest) the alias `champion`
  review <run>        show a scoring run's flagged samples; record verdicts (review.set=[id:verdict,...],
                      review.verdicts=file.csv, or a prompt when stdin is a terminal)
  calibrate           add reviewed false alarms to the calibration set; logs a new model version
  export              write the detector as ONNX (export.model=latest) and check it against PyTorch
  report  latent-space report of a detector (score.model=latest): latent map, manifold, walk GIF, KL per dim
  sweep   train and compare a grid, Hydra sweep syntax: sweep model.beta=0.5,1,2 model.latent_dim=2,10,20,64
  config  print the composed configuration
  bench   measure speed, memory and detection quality; writes BENCHMARKS.md and BENCHMARKS.json

overrides are Hydra-style, e.g.  model.latent_dim=64 trainer.max_epochs=5 data.root=/path/to/mvtec/bottle
"""


def _data(cfg) -> dict:
    from pipeline.data.builtin import generate, generated_parent

    written = generate(cfg.data, cfg.seed)
    return {"generated": [str(p) for p in written], "folder": str(generated_parent(cfg.data.kind))}


def _promote(cfg) -> dict:
    from pipeline.tracking.registry import promote
    from pipeline.tracking.store import open_store

    return promote(open_store(cfg), cfg.tracking.registered_model, cfg.promote.version)


def _config(cfg) -> dict:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(cfg))
    return {}


# Each stage's entry point, imported only when its command runs (importing torch, Lightning and MLflow
# for `--help` or a config error would cost seconds).
ENTRY_POINTS = {
    "train": "pipeline.training.train:run_train",
    "score": "pipeline.scoring.run:run_score",
    "evaluate": "pipeline.scoring.run:run_evaluate",
    "inspect": "pipeline.inspection.run:inspect_command",
    "review": "pipeline.review.command:run_review",
    "calibrate": "pipeline.review.calibrate:run_calibrate",
    "export": "pipeline.export.onnx:run_export",
    "report": "pipeline.report.run:run_report",
    "sweep": "pipeline.training.sweep:run_sweep",
    "bench": "pipeline.bench.run:run_bench",
}


def _entry_point(command: str):
    module, function = ENTRY_POINTS[command].split(":")
    return getattr(importlib.import_module(module), function)


COMMANDS = {"data": _data, "config": _config, "promote": _promote,
            **{name: (lambda arg, name=name: _entry_point(name)(arg)) for name in ENTRY_POINTS}}
# Commands that take one positional argument: it becomes this override (quoted, so a run id stays a string).
POSITIONAL = {"promote": "promote.version", "review": "review.run"}
RAW_OVERRIDE_COMMANDS = ("sweep",)  # these take the override strings, not a composed config


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help", "help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from pipeline.config import ConfigError, compose
    from pipeline.data.images import ImageReadError
    from pipeline.data.layout import DatasetLayoutError

    command, overrides = argv[0], argv[1:]
    if command in POSITIONAL and overrides and "=" not in overrides[0]:
        overrides[0] = f"{POSITIONAL[command]}='{overrides[0]}'"
    try:
        if command in RAW_OVERRIDE_COMMANDS:
            summary = COMMANDS[command](overrides)
        else:
            summary = COMMANDS[command](compose(overrides))
    except (ConfigError, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DatasetLayoutError, ImageReadError, FileNotFoundError, FileExistsError, LookupError, ValueError,
            FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permissions, ...: say which file; partial outputs were never renamed into place
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    if summary:
        print(json.dumps(summary, indent=1, default=str))
    return int(summary.get("exit_code", 0)) if summary else 0  # commands with their own exit codes (inspect)


if __name__ == "__main__":
    sys.exit(main())
