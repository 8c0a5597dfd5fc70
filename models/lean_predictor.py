"""Serving without torch: bow's forward pass in numpy, the encoder through ONNX Runtime.

The lean serving image (infra/docker/Dockerfile.serve) has neither torch nor transformers, so this
module must never import them. bow is an embedding-bag mean and a linear layer, read straight from
`weights.safetensors`; linear is a TF-IDF and its weights, scored in numpy by models/linear.py; an encoder
model carries `model.onnx` (exported at publish, its outputs checked against torch's there, see
models/onnx_export.py) and the tokenizer's own `tokenizer.json`.

`load_predictor` picks the backend: this one where the model's files allow it, else the torch
`models.predictor.Predictor` (an encoder published without `model.onnx`), which needs the full image.
`TRAINKITE_SERVE_BACKEND=torch` forces torch (for comparisons); `lean` refuses the fallback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from trainkite.errors import IntegrityError, UserInputError

BACKEND_ENV = "TRAINKITE_SERVE_BACKEND"
ONNX_FILE, TOKENIZER_FILE = "model.onnx", "tokenizer.json"
# Texts per ONNX Runtime call; the same batching as the torch scorer (models.encoder.INFER_BATCH).
ENCODER_BATCH = 64


def as_predictions(probs: np.ndarray, labels: list[str], model_id: str) -> list[dict]:
    """One answer per text: the label, every class's probability, and the model ID (both predictors)."""
    out = []
    for row in probs:
        best = int(row.argmax())
        scores = {lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)}
        out.append({"label": labels[best], "scores": scores, "model_id": model_id})
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bag_means(table: np.ndarray, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """EmbeddingBag(mode="mean"): each text's mean row of `table`; an empty text gives zeros, as in torch."""
    n, dim = len(offsets), table.shape[1]
    lengths = np.diff(np.append(offsets, len(ids)))
    sums = np.zeros((n, dim), dtype=table.dtype)
    nonempty = lengths > 0
    if len(ids):
        # reduceat sums from each start to the next start; the empty bags in between have no ids, so
        # restricting to non-empty bags' starts gives exactly each bag's own ids.
        sums[nonempty] = np.add.reduceat(table[ids], offsets[nonempty], axis=0)
    return sums / np.maximum(lengths, 1)[:, None].astype(table.dtype)


class BowNumpy:
    """bow's scores: softmax(fc(mean of the texts' hashed n-gram embeddings))."""

    backend = "numpy"

    def __init__(self, folder: Path, cfg: dict, n_classes: int, model_id: str):
        from safetensors.numpy import load_file

        from params.model import PreprocessParams

        self.preprocess = PreprocessParams.model_validate(cfg["preprocess"])
        state = load_file(str(folder / "weights.safetensors"))
        try:
            self.table = state["embedding.weight"]
            self.w, self.b = state["fc.weight"], state["fc.bias"]
        except KeyError as err:
            raise IntegrityError(f"model {model_id}: weights.safetensors has no tensor {err.args[0]!r}") from None
        want = (self.preprocess.buckets, int(cfg["embedding_dim"]))
        if self.table.shape != want or self.w.shape != (n_classes, want[1]):
            raise IntegrityError(
                f"model {model_id}: weights.safetensors shapes {self.table.shape}, {self.w.shape} "
                f"do not match features.json ({want}, {n_classes} labels)"
            )
        self.w_t = np.ascontiguousarray(self.w.T)

    def __call__(self, texts: list[str]) -> np.ndarray:
        from models.features import encode

        ids, offsets = encode(texts, self.preprocess)
        return softmax(bag_means(self.table, ids, offsets) @ self.w_t + self.b)


def intra_op_threads() -> int:
    raw = os.environ.get("TRAINKITE_TORCH_THREADS", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


class OnnxEncoder:
    """An encoder model's probabilities from its exported `model.onnx` (inputs input_ids, attention_mask)."""

    backend = "onnxruntime"

    def __init__(
        self, onnx_path: Path, tokenizer_path: Path, max_length: int, n_classes: int, threads: int | None = None
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or intra_op_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.n_classes = n_classes

    def __call__(self, texts: list[str]) -> np.ndarray:
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        out = np.zeros((len(encoded), self.n_classes), dtype=np.float32)
        # Length-sorted batches (stable), as the torch scorer does: little compute spent on padding.
        order = np.argsort([len(e) for e in encoded], kind="stable")
        for start in range(0, len(order), ENCODER_BATCH):
            rows = order[start : start + ENCODER_BATCH]
            width = max(1, max(len(encoded[r]) for r in rows))
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                ids[i, : len(encoded[r])] = encoded[r]
                mask[i, : len(encoded[r])] = 1
            out[rows] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out


class LeanPredictor:
    """The serving predictor: same `predict` answers as models.predictor.Predictor, without torch."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self.model_id: str = manifest["model_id"]
        cfg = json.loads((folder / "features.json").read_text())
        self.model_type: str = cfg.get("model_type", "bow")
        self.labels: list[str] = cfg["labels"]
        if self.model_type in NUMPY_SCORERS:
            self._scorer = NUMPY_SCORERS[self.model_type](folder, cfg, len(self.labels), self.model_id)
        elif self.model_type == "encoder" and lean_encoder_files(manifest):
            self._scorer = OnnxEncoder(
                folder / ONNX_FILE, folder / TOKENIZER_FILE, int(cfg["encoder"]["max_length"]), len(self.labels)
            )
        else:
            raise IntegrityError(
                f"model {self.model_id}: a {self.model_type} model without {ONNX_FILE} in its "
                "manifest needs torch to serve"
            )
        self.backend = self._scorer.backend

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self._scorer(texts)

    def predict(self, texts: list[str]) -> list[dict]:
        return as_predictions(self.predict_proba(texts), self.labels, self.model_id)


def _linear_scorer(folder: Path, cfg: dict, n_classes: int, model_id: str):
    from models.linear import Scorer

    return Scorer(folder, cfg, model_id)


# The kinds scored in plain numpy, whatever their files: (folder, features.json, classes, model ID) -> scorer.
NUMPY_SCORERS = {"bow": BowNumpy, "linear": _linear_scorer}


def lean_encoder_files(manifest: dict) -> bool:
    files = manifest.get("files", {})
    return ONNX_FILE in files and TOKENIZER_FILE in files


def backend_from_env() -> str:
    backend = os.environ.get(BACKEND_ENV, "auto").strip() or "auto"
    if backend not in ("auto", "lean", "torch"):
        raise UserInputError(f"{BACKEND_ENV}={backend!r} must be one of auto, lean, torch")
    return backend


def load_predictor(folder: Path, manifest: dict, backend: str | None = None):
    """The predictor for a verified model folder: lean where its files allow, torch where they don't."""
    backend = backend or backend_from_env()
    if backend != "torch":
        cfg = json.loads((folder / "features.json").read_text())
        if cfg.get("model_type", "bow") in NUMPY_SCORERS or lean_encoder_files(manifest):
            return LeanPredictor(folder, manifest)
        if backend == "lean":
            raise IntegrityError(
                f"model {manifest.get('model_id')}: {BACKEND_ENV}=lean, but the model has no "
                f"{ONNX_FILE} (published before ONNX export, or without onnx installed)"
            )
    try:
        from models.predictor import Predictor
    except ImportError as err:
        raise IntegrityError(
            f"model {manifest.get('model_id')} needs torch to serve ({err.name} is not installed "
            "in this image): serve it with the train image, or republish it with ONNX"
        ) from None
    predictor = Predictor(folder, manifest)
    predictor.backend = "torch"
    return predictor
