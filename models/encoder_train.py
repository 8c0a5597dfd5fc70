"""Train the `encoder` model: the head alone on cached embeddings (frozen) or the whole encoder (finetune).

Trained by the shared fit loop (models/fit.py), like bow: seeded, deterministic on CPU, early stopping on
the primary metric, a checkpoint in the artifact store every epoch so a re-run resumes. The
checkpoint also holds AdamW's moments, without which a resumed run would drift from one that
never stopped. Fine-tuning is meant for a GPU (bf16 autocast with train.amp); dropout makes it
tolerance-equal rather than bit-identical across runs there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from params.model import Params
from models import encoder as enc
from models.metrics import score
from models.features import FeaturesRef
from models.fit import fit, pick_device
from models.trained import TrainedModel, local_weights
from trainkite.manifest import ModelRef
from trainkite.snapshot import DatasetRef
from trainkite.store import ArtifactStore


def is_frozen(params: Params) -> bool:
    return params.model.encoder_mode == "frozen"


def build_model(
    params: Params, n_classes: int, dim: int, generator: torch.Generator, train_x: np.ndarray | None = None
) -> nn.Module:
    if is_frozen(params):
        model: nn.Module = enc.Head(dim, n_classes, enc.POOLING["frozen"])
        if train_x is not None:
            model.standardize_on(train_x)
        head = model.head
    else:
        _, backbone = enc.load_backbone()
        model = enc.EncoderClassifier(backbone, n_classes)
        head = model.head
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    return model


def _inputs(arrays: dict[str, np.ndarray], split: str, rows: np.ndarray, frozen: bool, device: str):
    if frozen:
        return (torch.from_numpy(arrays[f"{split}_x"][rows]).to(device),)
    ids, mask = enc.pad_batch(arrays[f"{split}_ids"], arrays[f"{split}_offsets"], rows)
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def split_probs(model: nn.Module, arrays: dict[str, np.ndarray], split: str, frozen: bool, device: str) -> np.ndarray:
    model.eval()
    if frozen:
        x = torch.from_numpy(arrays[f"{split}_x"]).to(device)
        return torch.softmax(model(x).float(), dim=-1).cpu().numpy()
    n_classes = model.head.out_features
    return enc.run_batches(
        lambda x, m: torch.softmax(model(x, m).float(), dim=-1),
        arrays[f"{split}_ids"],
        arrays[f"{split}_offsets"],
        n_classes,
        device,
    )


class EncoderTrainer:
    """The encoder's part of the fit loop: AdamW on the per-example mean cross-entropy (its moments are
    checkpointed with the weights)."""

    def __init__(
        self, params: Params, arrays: dict[str, np.ndarray], labels: list[str], device: str, generator: torch.Generator
    ):
        tp = params.train
        self.arrays, self.labels, self.device = arrays, labels, device
        self.n_classes = len(labels)
        self.frozen = is_frozen(params)
        dim = arrays["train_x"].shape[1] if self.frozen else 0
        self.model = build_model(params, self.n_classes, dim, generator, arrays["train_x"] if self.frozen else None).to(
            device
        )
        self.n_train = len(arrays["train_y"])
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=tp.learning_rate, weight_decay=tp.weight_decay
        )
        self.use_amp = device == "cuda" and tp.amp

    def step(self, rows: np.ndarray, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            logits = self.model(*_inputs(self.arrays, "train", rows, self.frozen, self.device))
        target = torch.from_numpy(self.arrays["train_y"][rows]).to(self.device)
        # The per-example mean, as bow's: the step does not grow with the batch size.
        loss = nn.functional.cross_entropy(logits.float(), target, reduction="mean")
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()) * len(rows)

    def validate(self) -> dict:
        probs = split_probs(self.model, self.arrays, "validation", self.frozen, self.device)
        return score(self.arrays["validation_y"], probs, self.labels)


def train_encoder(
    features: FeaturesRef, params: Params, store: ArtifactStore, ref: ModelRef, workdir: Path
) -> TrainedModel:
    return fit(EncoderTrainer, features, params, store, ref, workdir)


def load_trained(
    trained: TrainedModel, params: Params, arrays: dict[str, np.ndarray], n_classes: int, store: ArtifactStore
) -> nn.Module:
    """The best weights of a finished training, ready to score the cached features."""
    frozen = is_frozen(params)
    dim = arrays["train_x"].shape[1] if frozen else 0
    model = build_model(params, n_classes, dim, torch.Generator())
    model.load_state_dict(load_file(str(local_weights(trained, store))))
    return model.eval()


# The kind's interface (models/registry.py).
def features_key(fingerprint: str, params: Params) -> str:
    from models.encoder_features import cache_key

    return cache_key(fingerprint, params)


def featurize(
    dataset: DatasetRef, params: Params, store: ArtifactStore, workdir: Path, feature_schema: int | None = None
) -> FeaturesRef:
    enc.require()
    from models.encoder_features import featurize as encoder_featurize

    return encoder_featurize(dataset, params, store, workdir)


train = train_encoder


def split_scorer(
    trained: TrainedModel, params: Params, arrays: dict[str, np.ndarray], n_classes: int, store: ArtifactStore
) -> Callable[[str], np.ndarray]:
    device = pick_device(params.train.device)
    model = load_trained(trained, params, arrays, n_classes, store).to(device)
    return lambda split: split_probs(model, arrays, split, is_frozen(params), device)


def feature_config(params: Params, labels: list[str]) -> dict:
    return {
        "model_type": "encoder",
        "labels": labels,
        "encoder": enc.feature_config(params.model.encoder_max_length, params.model.encoder_mode),
    }


def load_scorer(folder: Path, cfg: dict, model_id: str) -> Callable[[list[str]], np.ndarray]:
    scorer = enc.EncoderScorer(folder / "weights.safetensors", cfg, len(cfg["labels"]), model_id)
    lock = threading.Lock()

    def score_texts(texts: list[str]) -> np.ndarray:
        with lock:
            return scorer(texts)

    return score_texts
