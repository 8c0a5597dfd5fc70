"""The registry of model kinds: `params.model.type` → the module that featurizes, trains, scores and serves it.

A kind's module provides `features_key`, `featurize`, `train`, `split_scorer`, `feature_config` and
`load_scorer`; the pipeline steps, evaluation, `trainkite verify`, publish and the predictor ask this module and
nothing else, so adding a kind is its module plus one line in `KINDS`. A kind's module is imported on first use:
the encoder's needs the optional `encoder` extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from models.features import FeaturesRef
from models.trained import TrainedModel
from params.model import Params
from trainkite.errors import IntegrityError
from trainkite.manifest import ModelRef
from trainkite.snapshot import DatasetRef
from trainkite.store import ArtifactStore

KINDS: dict[str, str] = {
    "linear": "models.linear",
    "bow": "models.bow",
    "encoder": "models.encoder_train",
}


def kind(name: str) -> ModuleType:
    if name not in KINDS:
        raise IntegrityError(f"model type {name!r} is not supported here (known: {', '.join(KINDS)})")
    return importlib.import_module(KINDS[name])


def _of(params: Params) -> ModuleType:
    return kind(params.model.type)


def features_key(fingerprint: str, params: Params) -> str:
    return _of(params).features_key(fingerprint, params)


def featurize(
    dataset: DatasetRef, params: Params, store: ArtifactStore, workdir: Path, feature_schema: int | None = None
) -> FeaturesRef:
    """The features of every split, in the store's cache; `feature_schema` rebuilds an older model's."""
    return _of(params).featurize(dataset, params, store, workdir, feature_schema)


def train(features: FeaturesRef, params: Params, store: ArtifactStore, ref: ModelRef, workdir: Path) -> TrainedModel:
    return _of(params).train(features, params, store, ref, workdir)


def split_scorer(
    trained: TrainedModel, params: Params, arrays: dict[str, np.ndarray], n_classes: int, store: ArtifactStore
) -> Callable[[str], np.ndarray]:
    """`probs(split)` for the trained model over its cached features."""
    return _of(params).split_scorer(trained, params, arrays, n_classes, store)


def feature_config(params: Params, labels: list[str]) -> dict:
    """`features.json` of a published model: what its scorer needs to encode a text as training did."""
    return _of(params).feature_config(params, labels)


def load_scorer(folder: Path, cfg: dict, model_id: str) -> Callable[[list[str]], np.ndarray]:
    """Class probabilities for raw texts, from a published model's folder and its `features.json`."""
    try:
        module = kind(cfg.get("model_type", "bow"))
    except IntegrityError as err:
        raise IntegrityError(f"model {model_id}: {err}") from None
    return module.load_scorer(folder, cfg, model_id)
