"""The one place that maps `params.model.type` to its featurizer, trainer and scorer.

The steps (flows/steps.py), evaluation and `trainkite verify` call these, so a model type is
added here and nowhere else in the pipeline. The encoder modules are imported only when an
encoder is used: they need the optional `encoder` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from params.model import Params
from models import features as pp, fit as tn
from models.bow import predict_proba
from trainkite.snapshot import DatasetRef
from models.features import FeaturesRef
from trainkite.manifest import ModelRef
from trainkite.store import ArtifactStore


def features_key(fingerprint: str, params: Params) -> str:
    if params.model.type == "encoder":
        from models.encoder_features import cache_key

        return cache_key(fingerprint, params)
    return pp.cache_key(fingerprint, params.preprocess)


def featurize(dataset: DatasetRef, params: Params, store: ArtifactStore, workdir: Path) -> FeaturesRef:
    params.require_resolved()
    if params.model.type == "encoder":
        from models import encoder

        encoder.require()
        from models.encoder_features import featurize as encoder_featurize

        return encoder_featurize(dataset, params, store, workdir)
    return pp.preprocess(dataset, params.preprocess, store, workdir)


def train(features: FeaturesRef, params: Params, store: ArtifactStore, ref: ModelRef,
          workdir: Path) -> tn.TrainedModel:
    if params.model.type == "encoder":
        from models.encoder_train import train_encoder

        return train_encoder(features, params, store, ref, workdir)
    return tn.train_model(features, params, store, ref, workdir)


def split_scorer(trained: tn.TrainedModel, params: Params, arrays: dict[str, np.ndarray], n_classes: int,
                 store: ArtifactStore) -> Callable[[str], np.ndarray]:
    """`probs(split)` for the trained model over its cached features."""
    if params.model.type == "encoder":
        from models.encoder_train import is_frozen, load_trained, split_probs

        device = tn.pick_device(params.train.device)
        model = load_trained(trained, params, arrays, n_classes, store).to(device)
        return lambda split: split_probs(model, arrays, split, is_frozen(params), device)
    model = tn.load_weights(tn.local_weights(trained, store), params.preprocess.buckets, params.model.embedding_dim,
                            n_classes)
    return lambda split: predict_proba(model, arrays[f"{split}_ids"], arrays[f"{split}_offsets"])
