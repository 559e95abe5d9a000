"""`python -m pipeline inspect`: judge every new image of the inbox (inspection/run.py), with the failures that
stop a whole run mapped to the exit codes a scheduler and its monitoring can act on (see inspection/run.py)."""

from __future__ import annotations

import sqlite3
import sys

from omegaconf import DictConfig

from pipeline.config import ConfigError
from pipeline.inspection.lock import InspectionLocked
from pipeline.inspection.run import EXIT_CANNOT_RUN, EXIT_LOCKED, InspectionError, run_inspection


def inspect_command(cfg: DictConfig) -> dict:
    """run_inspection with the failures that stop a whole run mapped to their exit codes."""
    try:
        return run_inspection(cfg)
    except ConfigError:  # a configuration error (e.g. a setting fixed at training given again) exits 2, as everywhere
        raise
    except InspectionLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return {"exit_code": EXIT_LOCKED, "error": str(err)}
    except (InspectionError, LookupError, OSError, ValueError, sqlite3.Error) as err:
        print(f"error: inspection could not run: {err}", file=sys.stderr)
        return {"exit_code": EXIT_CANNOT_RUN, "error": str(err)}
