"""Command line: `python -m pipeline <command> [key=value overrides ...]`.

Each command composes the config from conf/ and hands it to one stage's entry point.
"""

from __future__ import annotations

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
  report  latent-space report of a detector (score.model=latest): latent map, manifold, walk GIF, KL per dim
  sweep   train and compare a grid, Hydra sweep syntax: sweep model.beta=0.5,1,2 model.latent_dim=2,10,20,64
  config  print the composed configuration

overrides are Hydra-style, e.g.  model.latent_dim=64 trainer.max_epochs=5 data.root=/path/to/mvtec/bottle
"""


def _data(cfg) -> dict:
    from pipeline.data.builtin import generate, generated_parent

    written = generate(cfg.data, cfg.seed)
    return {"generated": [str(p) for p in written], "folder": str(generated_parent(cfg.data.kind))}


def _train(cfg) -> dict:
    from pipeline.training.train import run_train

    return run_train(cfg)


def _score(cfg) -> dict:
    from pipeline.scoring.run import run_score

    return run_score(cfg)


def _evaluate(cfg) -> dict:
    from pipeline.scoring.run import run_evaluate

    return run_evaluate(cfg)


def _report(cfg) -> dict:
    from pipeline.report.run import run_report

    return run_report(cfg)


def _sweep(overrides: list[str]) -> dict:
    from pipeline.training.sweep import run_sweep

    return run_sweep(overrides)


def _config(cfg) -> dict:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(cfg))
    return {}


COMMANDS = {"data": _data, "train": _train, "score": _score, "evaluate": _evaluate, "config": _config,
            "report": _report, "sweep": _sweep}
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
    try:
        if command in RAW_OVERRIDE_COMMANDS:
            summary = COMMANDS[command](overrides)
        else:
            summary = COMMANDS[command](compose(overrides))
    except (ConfigError, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DatasetLayoutError, ImageReadError, FileNotFoundError, FileExistsError, LookupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary:
        print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
