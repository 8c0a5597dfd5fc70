"""Where trainkite keeps its local state, and the process environment it runs under."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    path = Path(os.environ.get("TRAINKITE_HOME", "~/.trainkite")).expanduser().resolve()
    if path.exists() and not path.is_dir():
        from trainkite.errors import UserInputError

        raise UserInputError(
            f"TRAINKITE_HOME={str(path)!r} is a file, not a folder; point it at a folder "
            "(it holds artifacts, runs, caches and the local Prefect server)"
        )
    return path


def default_artifact_root() -> str:
    return str(home() / "artifacts")


def runs_dir() -> Path:
    return home() / "runs"


def cache_dir() -> Path:
    return home() / "cache"


def configure_quiet_offline_env() -> None:
    """Defaults that keep a laptop run offline and quiet; anything the user set wins."""
    defaults = {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        # The step functions also run outside flows (verify, predict, benchmarks): no warning per log line.
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    configure_wandb_dirs()


def configure_wandb_dirs() -> None:
    """W&B writes under $TRAINKITE_HOME/wandb unless the user said otherwise. Without this W&B picks the
    working directory: a flow run started by a worker (cwd = the code folder) wrote into the repo."""
    w = home() / "wandb"
    for k, v in {
        "WANDB_DIR": w,
        "WANDB_CACHE_DIR": w / "cache",
        "WANDB_DATA_DIR": w / "data",
        "WANDB_CONFIG_DIR": w / "config",
    }.items():
        os.environ.setdefault(k, str(v))
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
