"""The `bow` model: fastText-style mean of hashed n-gram embeddings, then a linear layer; its trainer and scorer."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from models import features as bow_features
from models.features import FeaturesRef
from models.fit import WINDOW_ROWS, fit, release_pages, sgd_step
from models.trained import TrainedModel, local_weights
from models.metrics import score
from params.model import Params, PreprocessParams
from trainkite.errors import IntegrityError
from trainkite.manifest import ModelRef
from trainkite.store import ArtifactStore


class BowClassifier(nn.Module):
    def __init__(self, buckets: int, dim: int, n_classes: int):
        super().__init__()
        # sparse=True: one step touches a few hundred rows of a table with up to millions.
        # _weight=empty skips the default N(0,1) init of a table that reset_parameters or a
        # state dict overwrites anyway (seconds for a 2M-row table).
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean", sparse=True, _weight=torch.empty(buckets, dim))
        self.fc = nn.Linear(dim, n_classes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        dim = self.embedding.embedding_dim
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / dim, 1.0 / dim, generator=generator)
            self.fc.weight.zero_()
            self.fc.bias.zero_()

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(ids, offsets))


def batch_slices(offsets: np.ndarray, n_ids: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gather the ids of `rows` (texts) into one flat array + offsets for EmbeddingBag."""
    return bow_features.ranges(*bow_features.row_bounds(offsets, n_ids, rows))


@torch.inference_mode()
def predict_proba(
    model: BowClassifier, ids: np.ndarray, offsets: np.ndarray, batch: int = 4096, device: str = "cpu"
) -> np.ndarray:
    if model.training:  # eval() walks every submodule: a tenth of a one-text request
        model.eval()
    n = len(offsets)
    out = []
    for start in range(0, n, batch):
        if n <= batch:  # one batch (every serving request): the arrays as they are
            x, offs = ids, offsets
        else:
            idx, offs = batch_slices(offsets, len(ids), np.arange(start, min(n, start + batch)))
            x = ids[idx]
        # Stored ids are int32; EmbeddingBag wants ids and offsets of one dtype.
        x = np.asarray(x, dtype=np.int64)
        logits = model(torch.from_numpy(x).to(device), torch.from_numpy(np.asarray(offs, dtype=np.int64)).to(device))
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.fc.out_features), dtype=np.float32)


def build_model(params: Params, n_classes: int, generator: torch.Generator) -> BowClassifier:
    model = BowClassifier(params.preprocess.buckets, params.model.embedding_dim, n_classes)
    model.reset_parameters(generator)
    return model


class BowTrainer:
    """bow's part of the fit loop: plain SGD on the per-example mean cross-entropy (+ L2 on the linear layer),
    each embedding row stepping by the mean over its own occurrences (`_embedding_step`). On the CPU the same
    update runs as one compiled loop per batch (`train.kernel = "native"`, models/bow_native.py)."""

    def __init__(
        self, params: Params, arrays: dict[str, np.ndarray], labels: list[str], device: str, generator: torch.Generator
    ):
        self.tp, self.arrays, self.labels, self.device = params.train, arrays, labels, device
        self.n_classes = len(labels)
        self.model = build_model(params, self.n_classes, generator).to(device)
        self.optimizer = None
        self.params_list = list(self.model.parameters())
        self.fc_params = list(self.model.fc.parameters())
        # The linear layer's gradient is a mean over the batch, whose noise falls as 1/sqrt(batch): its rate
        # follows the square-root rule, so `learning_rate` is the embedding rows' per-example rate at any batch.
        self.fc_rate = math.sqrt(params.train.batch_size)
        self.n_train = len(arrays["train_offsets"])
        self.use_amp = device == "cuda" and params.train.amp
        # Window by window (train.shuffle = "blocks"), the feature pages of the window just finished go back.
        self.release_every = -(-WINDOW_ROWS // params.train.batch_size) if params.train.shuffle == "blocks" else 0
        self.steps = 0
        self.native = None
        if device == "cpu" and params.train.kernel == "native":
            from models.bow_native import NativeStep  # numba: imported by training only, never by serving

            self.native = NativeStep(params.preprocess.buckets)

    def step(self, rows: np.ndarray, lr: float) -> float:
        if self.native is None:
            loss = self._torch_step(rows, lr)
        else:
            emb, fc = self.model.embedding, self.model.fc
            a = self.arrays
            loss = self.native(
                emb.weight.detach().numpy(),
                fc.weight.detach().numpy(),
                fc.bias.detach().numpy(),
                a["train_ids"],
                a["train_offsets"],
                a["train_y"],
                rows,
                lr,
                lr * self.fc_rate,
                self.tp.weight_decay,
            )
        self.steps += 1
        if self.release_every and self.steps % self.release_every == 0:
            release_pages(self.arrays["train_ids"], self.arrays["train_offsets"], self.arrays["train_y"])
        return loss

    def _torch_step(self, rows: np.ndarray, lr: float) -> float:
        tr_ids, tr_off = self.arrays["train_ids"], self.arrays["train_offsets"]
        idx, offs = batch_slices(tr_off, len(tr_ids), rows)
        ids = tr_ids[idx]
        x = torch.from_numpy(ids.astype(np.int64)).to(self.device)
        o = torch.from_numpy(offs).to(self.device)
        y = torch.from_numpy(self.arrays["train_y"][rows]).to(self.device)
        for p in self.params_list:
            p.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            logits = self.model(x, o)
        # The per-example mean: a step that grew with the batch (a sum) made a larger batch a larger step, and a
        # large enough one diverged at a rate that was fine for a small one.
        ce = torch.nn.functional.cross_entropy(logits.float(), y, reduction="mean")
        wd = self.tp.weight_decay
        loss = ce + wd * self.model.fc.weight.pow(2).sum() if wd else ce
        loss.backward()
        self._embedding_step(ids, lr, len(rows))
        sgd_step(self.fc_params, lr * self.fc_rate)
        return float(ce.detach()) * len(rows)

    @torch.no_grad()
    def _embedding_step(self, ids: np.ndarray, lr: float, batch: int) -> None:
        """Step each embedding row by the mean of its own occurrences' gradients in the batch.

        Under the batch mean, an n-gram seen once in a batch of 256 moves by 1/256 of its gradient, so large
        batches did not learn (the loss stayed at a uniform guess's); under the sum, a row seen in every text
        ("the") steps hundreds of times too far. The mean over the row's own occurrences gives a rare n-gram
        the step per-example SGD (fastText) gives it, and bounds a common one's, whatever the batch size. The
        linear layer keeps the batch mean.
        """
        weight = self.model.embedding.weight
        per_id = weight.grad._values()  # uncoalesced: one row per id in the batch, in the batch's order
        weight.grad = None
        rows, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        scale = torch.from_numpy((-lr * batch / counts).astype(np.float32)).to(self.device)
        summed = torch.zeros((len(rows), per_id.shape[1]), dtype=per_id.dtype, device=self.device)
        summed.index_add_(0, torch.from_numpy(inverse.astype(np.int64)).to(self.device), per_id)
        weight.index_add_(0, torch.from_numpy(rows.astype(np.int64)).to(self.device), summed.mul_(scale.unsqueeze(1)))

    def validate(self) -> dict:
        a = self.arrays
        if self.release_every:  # the epoch's last window is over too (the only one, up to 1,048,576 rows)
            release_pages(a["train_ids"], a["train_offsets"], a["train_y"])
        probs = predict_proba(self.model, a["validation_ids"], a["validation_offsets"], device=self.device)
        if self.release_every:
            release_pages(a["validation_ids"], a["validation_offsets"], a["validation_y"])
        return score(a["validation_y"], probs, self.labels)


def train_bow(
    features: FeaturesRef, params: Params, store: ArtifactStore, ref: ModelRef, workdir: Path
) -> TrainedModel:
    return fit(BowTrainer, features, params, store, ref, workdir)


def load_weights(path: str | Path, buckets: int, dim: int, n_classes: int) -> BowClassifier:
    model = BowClassifier(buckets, dim, n_classes)
    # A file that is not safetensors (a pickle in its place, whose manifest hash was forged too) or
    # does not fit features.json is refused by name, instead of a raw SafetensorError/RuntimeError traceback.
    try:
        model.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError) as err:
        raise IntegrityError(
            f"{Path(path).name} is not a safetensors file of this model ({str(err)[:200]}); refusing to load it"
        ) from None
    model.eval()
    return model


# The kind's interface (models/registry.py).
features_key = bow_features.kind_features_key
featurize = bow_features.kind_featurize
train = train_bow


def split_scorer(
    trained: TrainedModel, params: Params, arrays: dict[str, np.ndarray], n_classes: int, store: ArtifactStore
) -> Callable[[str], np.ndarray]:
    model = load_weights(
        local_weights(trained, store), params.preprocess.buckets, params.model.embedding_dim, n_classes
    )
    return lambda split: predict_proba(model, arrays[f"{split}_ids"], arrays[f"{split}_offsets"])


def feature_config(params: Params, labels: list[str]) -> dict:
    return {**bow_features.kind_feature_config("bow", params, labels), "embedding_dim": params.model.embedding_dim}


class Scorer:
    """A published bow model: the featurizer it was trained with (features.json), then the network."""

    def __init__(self, folder: Path, cfg: dict):
        self.preprocess = PreprocessParams.model_validate(cfg["preprocess"])
        # A model is asked in the features it was trained on (older models: schema 1).
        self._encode = bow_features.encoder_for(cfg.get("feature_schema"))
        self.model = load_weights(
            folder / "weights.safetensors", self.preprocess.buckets, cfg["embedding_dim"], len(cfg["labels"])
        )
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        ids, offsets = self._encode(texts, self.preprocess)
        with self._lock, torch.inference_mode():
            return predict_proba(self.model, ids, offsets)


def load_scorer(folder: Path, cfg: dict, model_id: str) -> Scorer:
    return Scorer(folder, cfg)
