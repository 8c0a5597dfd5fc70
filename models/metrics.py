"""Classification metrics in plain numpy (accuracy, macro-F1, per class, confusion matrix)."""

from __future__ import annotations

import numpy as np


# Up to this many classes a score carries its confusion matrix (metrics.json, the plots, W&B, the Prefect artifact):
# evidence a reader can take in. Beyond it per-class precision, recall and F1 are the evidence; a dense matrix is
# classes^2 cells (20,000 classes: 400 M, 3.2 GB per score, which a label column of IDs ran out of memory on).
CONFUSION_MAX_CLASSES = 100


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def score(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1 over the classes present, per-class figures, and the confusion matrix (rows: true) when
    there are at most CONFUSION_MAX_CLASSES labels, else None. Counts, not the matrix: linear in rows and classes."""
    n = len(labels)
    if len(y_true) == 0:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0, "per_class": {}, "confusion": []}
    y_pred = probs.argmax(axis=1)
    support = np.bincount(y_true, minlength=n)
    predicted = np.bincount(y_pred, minlength=n)
    tp = np.bincount(y_true[y_true == y_pred], minlength=n).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": len(y_true),
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion": confusion(y_true, y_pred, n).tolist() if n <= CONFUSION_MAX_CLASSES else None,
    }
