"""Compose the run configuration from `conf/` with Hydra's compose API.

We use compose (not `@hydra.main`) so that `python -m pipeline <command> [overrides]` keeps the
working directory and writes no `outputs/<date>` folders; every tunable still lives in `conf/`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A missing, mistyped or invalid configuration key; the message names the key."""


def project_root() -> Path:
    """The checkout this package lives in (editable install), else the current directory."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "conf").is_dir():
        return candidate
    return Path.cwd()


def conf_dir() -> Path:
    return Path(os.environ.get("PIPELINE_CONF_DIR", project_root() / "conf")).resolve()


def _register_resolvers() -> None:
    # Relative paths in conf/ mean "inside the project", wherever the command is run from.
    if not OmegaConf.has_resolver("project"):
        OmegaConf.register_new_resolver("project", lambda rel="": str(project_root() / rel))
    if not OmegaConf.has_resolver("basename"):
        OmegaConf.register_new_resolver("basename", lambda p: Path(str(p)).name)


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose conf/<config_name>.yaml with command-line style overrides, resolved and read-only.

    Raises ConfigError naming the key when an override targets a key that does not exist, or when
    a required value (`???`) is missing.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"configuration error: {err}") from err
    # The overrides as given: commands need them to tell a setting the user asked for from a default
    # (a setting fixed at training and given again at score time is an error, see check_fixed_overrides).
    with open_dict(cfg):
        cfg.command_line = list(overrides or [])
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def override_key(override: str) -> str:
    """'+model.beta=1' -> 'model.beta'; 'model=ae' -> 'model'."""
    return override.split("=", 1)[0].lstrip("+~")


def check_fixed_overrides(cfg: DictConfig, stored: dict[str, object], fixed_groups: tuple[str, ...],
                          fixed_keys: tuple[str, ...], model_source: str) -> None:
    """ConfigError when the command line sets a key fixed at training (a key of `fixed_groups`, or one of
    `fixed_keys`, or a whole group such as model=ae) to a value other than the stored model's: it would
    silently not apply. `stored`: the model's fixed settings, flat ({'model.beta': 0.01, ...})."""
    for override in cfg.get("command_line", []):
        key = override_key(override)
        group = key.split(".", 1)[0]
        if key not in fixed_keys and group not in fixed_groups:
            continue
        keys = [k for k in stored if k == key or k.startswith(f"{key}.")] or [key]
        changed = [k for k in keys if OmegaConf.select(cfg, k, default=None) != stored.get(k)]
        if changed:
            k = changed[0]
            raise ConfigError(f"{override}: {k} is fixed when the model is trained ({model_source} was trained with "
                              f"{k}={stored.get(k)!r}); it cannot change at score time. Retrain with "
                              f"`python -m pipeline train {k}=...` to use another value.")


def require(cfg: DictConfig, dotted_key: str):
    """cfg value at `dotted_key`, or a ConfigError naming the key when it is absent or null."""
    value = OmegaConf.select(cfg, dotted_key, default=None, throw_on_missing=False)
    if value is None:
        raise ConfigError(f"missing configuration key '{dotted_key}' (set it in conf/ or as {dotted_key}=...)")
    return value


def to_flat_dict(cfg: DictConfig) -> dict[str, object]:
    """`{"model.latent_dim": 32, ...}`: the resolved config as flat key/value pairs for MLflow params."""
    flat: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


QUIET_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")


class _LibraryNoise(logging.Filter):
    """Drops the libraries' informational lines (Lightning's banners and tips); their warnings stay. A filter
    on our handler, because Lightning resets its loggers' levels when it is imported, after main starts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(QUIET_LOGGERS)


def configure_logging() -> None:
    """Our own progress bars and log lines only, in every process we start (commands, bench workers):
    Lightning's banners and MLflow's per-artifact download bars (about 90 carriage-return bars per model load)
    would drown them."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow configures its own handler: a filter misses it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # Lightning gives its loggers a handler of their own when it is imported before any logging is set up
    # (a spawned bench worker unpickling its job): those handlers get the filter too.
    handlers = [*logging.getLogger().handlers, *(h for n in QUIET_LOGGERS for h in logging.getLogger(n).handlers)]
    for handler in handlers:
        if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
            handler.addFilter(_LibraryNoise())
    warnings.filterwarnings("ignore", module=r"pytorch_lightning\.utilities\._pytree")  # a deprecation inside Lightning
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")  # data are cached in memory
