"""Inference shared by `trainkite predict`, the serving app and evaluation: every prediction carries the model ID."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from params.model import PreprocessParams
from models.bow import predict_proba
from models.features import encoder_for
from models.fit import load_weights
from trainkite.errors import IntegrityError
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
        if self.model_type == "encoder":
            from models.encoder import EncoderScorer

            self._encoder = EncoderScorer(folder / "weights.safetensors", cfg, len(self.labels), self.model_id)
        elif self.model_type == "bow":
            self.preprocess = PreprocessParams.model_validate(cfg["preprocess"])
            # A model is asked in the features it was trained on (features.json; older models: schema 1).
            self._encode = encoder_for(cfg.get("feature_schema"))
            self.model = load_weights(folder / "weights.safetensors", self.preprocess.buckets, cfg["embedding_dim"],
                                      len(self.labels))
        else:
            raise IntegrityError(f"model {self.model_id}: model type {self.model_type!r} is not supported here")
        self._lock = threading.Lock()

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
        if self.model_type == "encoder":
            with self._lock:
                return self._encoder(texts)
        ids, offsets = self._encode(texts, self.preprocess)
        with self._lock, torch.inference_mode():
            return predict_proba(self.model, ids, offsets)

    def predict(self, texts: list[str]) -> list[dict]:
        probs = self.predict_proba(texts)
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append({
                "label": self.labels[best],
                "scores": {lab: round(float(p), 6) for lab, p in zip(self.labels, row, strict=True)},
                "model_id": self.model_id,
            })
        return out
