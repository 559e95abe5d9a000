"""Command line: `python -m pipeline <command> [key=value overrides ...]`.

Each command composes the config from conf/ and hands it to one entry point in pipeline/commands/.
"""

from __future__ import annotations

import importlib
import json
import sys

USAGE = """usage: python -m pipeline <command> [overrides ...]

commands:
  data      generate the built-in datasets (data=builtin, default) or the digits tasks (data=digits)
  train     train a detector on data.root: the VAE, the learned anomaly map, selection, calibration; log it to MLflow
  score     score the test split of data.root with a trained detector (detector=latest by default)
  evaluate  recompute metrics and figures of a score output folder (score.output_dir) against the labels
  inspect   judge every new image in inspect.inbox with the champion model (exit codes: see README)
  promote [version]   give a registered version (default: the newest) the alias `champion`
  review [run]        show the images of a scoring run or an inspection batch (default: the newest batch with
                      flags) and record verdicts (review.set=[id:verdict,...], review.verdicts=file.csv, a prompt)
  calibrate           add reviewed normal images of the audit sample to the calibration set; a new model version
  export    write the detector as ONNX and check it against PyTorch
  report    latent-space report of a detector: latent map, manifold, walk GIF, KL per dimension
  sweep     train and compare a grid, Hydra sweep syntax: sweep model.beta=0.5,1,2 model.latent_dim=2,10,20,64
  config    print the composed configuration
  bench     measure speed, memory and detection quality; writes BENCHMARKS.md and BENCHMARKS.json
  links     the MLflow UI links of the training, scoring and inspection experiments (`make ui` prints them)

overrides are Hydra-style, e.g.  model.latent_dim=64 trainer.max_epochs=5 data.root=/path/to/mvtec/bottle
"""

# Each command's entry point, imported only when it runs (importing torch, Lightning and MLflow for
# `--help` or a config error would cost seconds).
ENTRY_POINTS = {
    "data": "pipeline.commands.data:run_data",
    "config": "pipeline.commands.data:run_config",
    "train": "pipeline.commands.train:run_train",
    "score": "pipeline.commands.score:run_score",
    "evaluate": "pipeline.commands.score:run_evaluate",
    "inspect": "pipeline.commands.inspect:inspect_command",
    "promote": "pipeline.commands.registry:run_promote",
    "review": "pipeline.commands.review:run_review",
    "calibrate": "pipeline.commands.calibrate:run_calibrate",
    "export": "pipeline.commands.export:run_export",
    "report": "pipeline.commands.report:run_report",
    "sweep": "pipeline.commands.sweep:run_sweep",
    "bench": "pipeline.bench.run:run_bench",
    "links": "pipeline.commands.links:run_links",
}
# Commands that take one positional argument: it becomes this override (quoted, so a run id stays a string).
POSITIONAL = {"promote": "detector", "review": "review.run"}
RAW_OVERRIDE_COMMANDS = ("sweep",)  # these take the override strings, not a composed config


def _entry_point(command: str):
    module, function = ENTRY_POINTS[command].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in ENTRY_POINTS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help", "help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import ConfigError, compose, configure_logging

    configure_logging()
    from pipeline.data.images import ImageReadError
    from pipeline.data.layout import DatasetLayoutError

    command, overrides = argv[0], argv[1:]
    if command in POSITIONAL and overrides and "=" not in overrides[0]:
        overrides[0] = f"{POSITIONAL[command]}='{overrides[0]}'"
    try:
        entry = _entry_point(command)
        summary = entry(overrides) if command in RAW_OVERRIDE_COMMANDS else entry(compose(overrides))
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
    if "torch" in sys.modules:  # a multi-process command (strategy=ddp) leaves its process group in every rank
        from pipeline.training.distributed import leave_process_group

        leave_process_group()
    if summary:
        print(json.dumps(summary, indent=1, default=str))
    return int(summary.get("exit_code", 0)) if summary else 0  # commands with their own exit codes (inspect)


if __name__ == "__main__":
    sys.exit(main())
