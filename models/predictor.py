"""Inference shared by `trainkite predict`, the serving app and evaluation: every prediction carries the model ID."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models import registry
from models.lean_predictor import as_predictions
from trainkite.manifest import fetch_model, load_dir_manifest
from trainkite.store import ArtifactStore


class Predictor:
    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = manifest
        self.model_id: str = manifest["model_id"]
        cfg = json.loads((folder / "features.json").read_text())
        self.model_type: str = cfg.get("model_type", "bow")
        self.labels: list[str] = cfg["labels"]
        self._score = registry.load_scorer(folder, cfg, self.model_id)

    @classmethod
    def from_dir(cls, folder: str | Path) -> Predictor:
        """A model folder outside the store (SageMaker's /opt/ml/model): hashes verified first."""
        folder = Path(folder)
        return cls(folder, load_dir_manifest(folder))

    @classmethod
    def from_store(cls, store: ArtifactStore, model_id: str) -> Predictor:
        folder, manifest = fetch_model(store, model_id)
        return cls(folder, manifest)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self._score(texts)

    def predict(self, texts: list[str]) -> list[dict]:
        return as_predictions(self.predict_proba(texts), self.labels, self.model_id)
