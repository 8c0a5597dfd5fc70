"""Versioned training parameters (`*.toml`) and the one pydantic model that validates them."""

from params.model import (
    DEFAULT_PARAMS_FILE,
    PARAMS_DIR,
    Params,
    ParamsError,
    apply_overrides,
    load_params,
    parse_overrides,
    validate_params,
)

__all__ = [
    "DEFAULT_PARAMS_FILE",
    "PARAMS_DIR",
    "Params",
    "ParamsError",
    "apply_overrides",
    "load_params",
    "parse_overrides",
    "validate_params",
]
