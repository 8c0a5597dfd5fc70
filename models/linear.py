"""The `linear` model: multinomial logistic regression on the TF-IDF of bow's hashed n-grams, fitted to its optimum.

It reads the same features as bow (models/features.py: normalised words, 1..n-grams, a stable hash into buckets),
weighs each text's n-grams by sublinear term frequency x smoothed IDF, scales each row to unit length and fits
L2-regularised logistic regression (scikit-learn's SAG solver) on the whole matrix at once. Where that matrix is
small this is the classic strong baseline: convex, with no rate or epoch to choose, and it beats SGD-trained
bags on real labelled sets (BENCHMARKS.md, quality matrix); `tasks/defaults.py` picks it by data size.

Scoring is plain numpy (no torch, no scipy), so the lean serving image serves it: `weights.safetensors` holds
`columns` (the buckets the fit saw, ascending), `idf`, `weight` (classes x columns) and `bias`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from models import features as bow_features
from models.features import FeaturesRef
from models.lean_predictor import softmax
from params.model import Params, PreprocessParams
from trainkite.errors import IntegrityError
from trainkite.manifest import ModelRef
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.train")
TENSORS = ("columns", "idf", "weight", "bias")
# SAG (stochastic average gradient), not Newton-CG or L-BFGS: its updates are scikit-learn's own C loops, where theirs
# take dot products in BLAS, whose kernel (chosen per CPU, or by OPENBLAS_CORETYPE) rounds differently: a model
# trained in the image then failed `verify` on a host by 1e-8. Rows of unit length are what SAG's step size assumes.
TOLERANCE = 1e-4
MAX_ITER = 1000
# The logit of a declared label no fitting row has: never predicted, and no NaN.
ABSENT_LOGIT = -1e4


def _pairs(ids: np.ndarray, offsets: np.ndarray, lookup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, count) of every distinct n-gram column in each text, sorted by row then column; ids the
    lookup does not know (-1: unseen by the fit) are dropped."""
    n = len(offsets)
    lengths = np.diff(np.append(np.asarray(offsets, dtype=np.int64), len(ids)))
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    col = lookup[ids].astype(np.int64)
    keep = col >= 0
    width = max(1, len(lookup))
    key, counts = np.unique(row[keep] * width + col[keep], return_counts=True)
    return key // width, key % width, counts


def tfidf(
    ids: np.ndarray, offsets: np.ndarray, lookup: np.ndarray, idf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value) of the texts' unit-length sublinear TF-IDF rows: the one transform of the fit, the
    evaluation and serving. A text with no known n-gram has no entries (its scores are the bias's)."""
    return _weigh(*_pairs(ids, offsets, lookup), idf, len(offsets))


def _weigh(
    row: np.ndarray, col: np.ndarray, counts: np.ndarray, idf: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    val = (1.0 + np.log(counts)) * idf[col].astype(np.float64)
    norm = np.sqrt(np.bincount(row, weights=val * val, minlength=n))
    return row, col, val / norm[row]


class LinearScores:
    """Class probabilities of texts' features under a fitted linear model's tensors."""

    def __init__(self, tensors: dict[str, np.ndarray], buckets: int, n_classes: int, model_id: str = "this model"):
        missing = [name for name in TENSORS if name not in tensors]
        if missing:
            raise IntegrityError(f"model {model_id}: weights.safetensors has no tensor {missing[0]!r}")
        self.columns, self.idf = tensors["columns"], tensors["idf"]
        self.weight, self.bias = tensors["weight"].astype(np.float64), tensors["bias"].astype(np.float64)
        k = len(self.columns)
        if self.idf.shape != (k,) or self.weight.shape != (n_classes, k) or self.bias.shape != (n_classes,):
            raise IntegrityError(
                f"model {model_id}: weights.safetensors shapes {self.weight.shape}, {self.idf.shape} do not match "
                f"features.json ({n_classes} labels, {k} columns)"
            )
        if k and (self.columns.min() < 0 or self.columns.max() >= buckets):
            raise IntegrityError(f"model {model_id}: weights.safetensors columns fall outside {buckets} buckets")
        self.lookup = lookup_of(self.columns, buckets)

    def __call__(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        n = len(offsets)
        row, col, val = tfidf(ids, offsets, self.lookup, self.idf)
        logits = np.tile(self.bias, (n, 1))
        for c in range(self.weight.shape[0]):
            logits[:, c] += np.bincount(row, weights=val * self.weight[c, col], minlength=n)
        return softmax(logits).astype(np.float32)


def lookup_of(columns: np.ndarray, buckets: int) -> np.ndarray:
    lookup = np.full(buckets, -1, dtype=np.int32)
    lookup[columns] = np.arange(len(columns), dtype=np.int32)
    return lookup


def fit_tensors(
    ids: np.ndarray,
    offsets: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    buckets: int,
    c: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], float]:
    """The model's tensors fitted on these rows, and its mean log-loss on them. Deterministic: SAG's sample order
    comes from `seed`, it runs on one thread and takes no BLAS dot product. (A warm start of the refit from the
    first fit saved no passes: SAG's gradient memory starts empty either way.)"""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    present = np.unique(y)
    if len(present) < 2:
        raise IntegrityError(f"the fitting rows hold one class only ({int(present[0])}): nothing to separate")
    columns = np.unique(ids).astype(np.int32)
    lookup = lookup_of(columns, buckets)
    n = len(offsets)
    row, col, counts = _pairs(ids, offsets, lookup)
    # The smoothed IDF (scikit-learn's TfidfVectorizer), rounded to what the weights file stores.
    df = np.bincount(col, minlength=len(columns))
    idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    # (row, column) pairs come sorted and distinct: they are the CSR matrix's indices as they are.
    indptr = np.r_[0, np.cumsum(np.bincount(row, minlength=n))]
    x = sp.csr_matrix((_weigh(row, col, counts, idf, n)[2], col, indptr), shape=(n, len(columns)))
    del row, col, counts, df
    clf = LogisticRegression(C=c, solver="sag", tol=TOLERANCE, max_iter=MAX_ITER, random_state=seed % 2**32)
    with threadpool_limits(1):
        clf.fit(x, y)
    if int(np.max(clf.n_iter_)) >= MAX_ITER:
        log.warning("linear: SAG stopped at %d passes before converging", MAX_ITER)
    weight = np.zeros((n_classes, len(columns)), dtype=np.float64)
    bias = np.full(n_classes, ABSENT_LOGIT, dtype=np.float64)
    classes = clf.classes_.astype(np.int64)
    if len(classes) == 2:  # one coefficient row: p(second) = sigmoid(w.x + b) = softmax([0, w.x + b])
        weight[classes[1]], bias[classes[1]], bias[classes[0]] = clf.coef_[0], clf.intercept_[0], 0.0
    else:
        weight[classes], bias[classes] = clf.coef_, clf.intercept_
    absent = sorted(set(range(n_classes)) - set(classes.tolist()))
    if absent:
        log.warning("linear: label indices %s have no fitting rows: they are never predicted", absent)
    tensors = {"columns": columns, "idf": idf, "weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}
    probs = softmax(np.asarray(x @ tensors["weight"].T.astype(np.float64)) + tensors["bias"])
    loss = float(-np.mean(np.log(np.maximum(probs[np.arange(n), y], 1e-12))))
    return tensors, loss


def train(features: FeaturesRef, params: Params, store: ArtifactStore, ref: ModelRef, workdir: Path):
    """Fit on the training split, score the validation split, and (train.refit) fit again on both: one history row,
    the same record as an epoch-trained model's (`best_epoch` 1). No checkpoint: a re-run refits to the same
    weights in seconds."""
    from models.trained import finish_training, with_validation_in_train
    from models.features import load_features
    from models.metrics import score

    params.require_resolved()
    arrays = load_features(features, store, workdir)
    labels, buckets, c, seed = features.labels, params.preprocess.buckets, params.train.c, params.train.seed
    started = time.perf_counter()
    n_train = len(arrays["train_offsets"])
    log.info("linear: logistic regression (C=%g) on %d training rows", c, n_train)
    tensors, loss = fit_tensors(
        arrays["train_ids"], arrays["train_offsets"], arrays["train_y"], len(labels), buckets, c, seed
    )
    val = score(
        arrays["validation_y"],
        LinearScores(tensors, buckets, len(labels))(arrays["validation_ids"], arrays["validation_offsets"]),
        labels,
    )
    log.info(
        "linear: %d n-gram columns, train loss %.4f, val_accuracy %.4f, val_macro_f1 %.4f",
        len(tensors["columns"]),
        loss,
        val["accuracy"],
        val["macro_f1"],
    )
    history = [
        {"epoch": 1, "train_loss": loss, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "lr": 0.0}
    ]
    seen, refit = n_train, None
    if params.train.refit:
        both = with_validation_in_train(arrays)
        rows = len(both["train_offsets"])
        log.info("refit: linear on train + validation (%d rows)", rows)
        tensors, refit_loss = fit_tensors(
            both["train_ids"], both["train_offsets"], both["train_y"], len(labels), buckets, c, seed
        )
        seen += rows
        refit = {"epochs": 1, "rows": rows, "train_loss": refit_loss}
    return finish_training(
        store,
        ref,
        workdir,
        tensors,
        refit=refit,
        labels=labels,
        history=history,
        best_epoch=1,
        device="cpu",
        resumed=None,
        elapsed=time.perf_counter() - started,
        seen=seen,
    )


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise IntegrityError(
            f"{Path(path).name} is not a safetensors file of this model ({str(err)[:200]}); refusing to load it"
        ) from None


# The kind's interface (models/registry.py): bow's features, its own fit and scorer.
features_key = bow_features.kind_features_key
featurize = bow_features.kind_featurize


def split_scorer(trained, params: Params, arrays: dict[str, np.ndarray], n_classes: int, store: ArtifactStore):
    from models.trained import local_weights

    scores = LinearScores(load_tensors(local_weights(trained, store)), params.preprocess.buckets, n_classes)
    return lambda split: scores(arrays[f"{split}_ids"], arrays[f"{split}_offsets"])


def feature_config(params: Params, labels: list[str]) -> dict:
    return bow_features.kind_feature_config("linear", params, labels)


class Scorer:
    """A published linear model: the featurizer it was trained with (features.json), then its TF-IDF and weights.
    Numpy only: the lean serving image and the torch predictor both use it."""

    backend = "numpy"

    def __init__(self, folder: Path, cfg: dict, model_id: str = "this model"):
        self.preprocess = PreprocessParams.model_validate(cfg["preprocess"])
        self._encode = bow_features.encoder_for(cfg.get("feature_schema"))
        tensors = load_tensors(folder / "weights.safetensors")
        self._scores = LinearScores(tensors, self.preprocess.buckets, len(cfg["labels"]), model_id)

    def __call__(self, texts: list[str]) -> np.ndarray:
        ids, offsets = self._encode(texts, self.preprocess)
        return self._scores(ids, offsets)


def load_scorer(folder: Path, cfg: dict, model_id: str) -> Scorer:
    return Scorer(folder, cfg, model_id)
