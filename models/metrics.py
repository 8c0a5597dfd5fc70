"""Classification metrics in plain numpy (accuracy, macro-F1, per class, confusion matrix)."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def score(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    n = len(labels)
    if len(y_true) == 0:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0, "per_class": {}, "confusion": []}
    y_pred = probs.argmax(axis=1)
    cm = confusion(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros(n), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros(n), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = cm.sum(axis=1) > 0
    return {
        "n": len(y_true),
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, lab in enumerate(labels)
        },
        "confusion": cm.tolist(),
    }
