"""Champion against challenger on the same labelled rows: deltas, paired tests, flipped examples, one verdict.

Plain numpy and `math`, no Prefect, no model loading: callers hand in the true labels and both models'
predicted class indices for the same rows in the same order.

- Accuracy: exact McNemar test on the discordant pairs (b = champion right and challenger wrong,
  c = the reverse); two-sided p = P(Binomial(b + c, 1/2) <= min(b, c)) * 2, capped at 1.
- Macro-F1: paired bootstrap of the difference (challenger - champion), both models scored on the same
  resampled rows each time, percentile interval; the generator is seeded, so the same inputs and seed
  give the same interval and verdict.
- Verdict on `primary_metric`: "better" / "worse" when the test says the difference is real at `alpha`
  (McNemar p < alpha, or the bootstrap interval excludes 0), else "no significant difference".
"""

from __future__ import annotations

import math

import numpy as np

from models.metrics import CONFUSION_MAX_CLASSES, confusion

BETTER, SAME, WORSE = "better", "no significant difference", "worse"
NO_CHAMPION, NOT_COMPARED = "no champion", "not compared"
VERDICTS = (BETTER, SAME, WORSE, NO_CHAMPION, NOT_COMPARED)
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 20261201
FLIPPED_CAP = 10
TEXT_CHARS = 200


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for `b` and `c` discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    # In logs: 2**n overflows a float past n = 1023, math.log takes the exact big integer.
    return min(1.0, math.exp(math.log(2 * tail) - n * math.log(2)))


def _macro_f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Macro-F1 per row of (resamples, classes) counts, over the classes present in that sample's truth
    (models.metrics.score's definition: 2tp / (2tp + fp + fn) is its F1, 0 when tp = 0)."""
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    present = (tp + fn) > 0
    return np.where(present, f1, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    w = np.ones((1, len(y)))
    return float(_macro_f1_from_counts(*_counts(w, y, pred, n_classes))[0])


def _counts(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int):
    """tp, fp, fn per class for each row of `weights` (how often each example is in that resample)."""
    truth = np.eye(n_classes)[y]  # (n, K)
    guess = np.zeros((len(pred), n_classes))
    valid = (pred >= 0) & (pred < n_classes)  # a label the challenger does not know is never right
    guess[np.flatnonzero(valid), pred[valid]] = 1.0
    tp = weights @ (truth * guess)
    fp = weights @ guess - tp
    fn = weights @ truth - tp
    return tp, fp, fn


def paired_bootstrap_macro_f1(
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    n_classes: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> dict:
    """Percentile interval of macro-F1(challenger) - macro-F1(champion) over paired resamples of the rows."""
    n = len(y)
    rng = np.random.Generator(np.random.PCG64(seed))
    deltas = np.empty(resamples)
    # Chunks keep the (resamples, n) weight matrix small on a large evaluation set.
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        weights = np.zeros((size, n))
        np.add.at(weights, (np.repeat(np.arange(size), n), idx.ravel()), 1.0)
        a = _macro_f1_from_counts(*_counts(weights, y, champion, n_classes))
        b = _macro_f1_from_counts(*_counts(weights, y, challenger, n_classes))
        deltas[start : start + size] = b - a
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return {
        "metric": "macro_f1",
        "delta": macro_f1(y, challenger, n_classes) - macro_f1(y, champion, n_classes),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "resamples": resamples,
        "seed": seed,
    }


def _per_class_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    tp, fp, fn = _counts(np.ones((1, len(y))), y, pred, n_classes)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)[0]


def _confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]] | None:
    """The score's matrix (models.metrics.confusion) over the rows whose prediction is a label this model has."""
    if n_classes > CONFUSION_MAX_CLASSES:
        return None
    valid = (pred >= 0) & (pred < n_classes)
    return confusion(y[valid], pred[valid], n_classes).tolist()


def _label(labels: list[str], i: int, unknown: dict[int, str] | None) -> str:
    if 0 <= i < len(labels):
        return labels[i]
    return (unknown or {}).get(i, "?")


def _flipped(idx: np.ndarray, y, a, b, labels, texts, cap: int, rng, unknown) -> list[dict]:
    chosen = np.sort(rng.choice(idx, size=min(cap, len(idx)), replace=False)) if len(idx) else idx
    out = []
    for i in chosen.tolist():
        row = {
            "row": i,
            "label": labels[y[i]],
            "champion": _label(labels, int(a[i]), unknown),
            "challenger": _label(labels, int(b[i]), unknown),
        }
        if texts is not None:
            text = str(texts[i])
            row["text"] = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
        out.append(row)
    return out


def compare(
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    labels: list[str],
    *,
    primary_metric: str = "macro_f1",
    alpha: float = 0.05,
    texts: list[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    flipped_cap: int = FLIPPED_CAP,
    unknown_labels: dict[int, str] | None = None,
) -> dict:
    """Everything the reviewers see, as JSON-able values. `champion` / `challenger` are predicted class
    indices into `labels` (-1 or another index outside it: a label the champion has and these data lack)."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (y, champion, challenger))
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"rows differ: {len(y)} labels, {len(a)} champion and {len(b)} challenger predictions")
    if len(y) == 0:
        raise ValueError("no rows to compare on")
    if primary_metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"primary_metric {primary_metric!r}: accuracy or macro_f1")
    k = len(labels)
    right_a, right_b = a == y, b == y
    fixed = np.flatnonzero(~right_a & right_b)  # champion wrong, challenger right
    broken = np.flatnonzero(right_a & ~right_b)  # champion right, challenger wrong
    p = mcnemar_exact(len(broken), len(fixed))
    boot = paired_bootstrap_macro_f1(y, a, b, k, resamples=resamples, seed=seed, confidence=1 - alpha)
    acc_a, acc_b = float(right_a.mean()), float(right_b.mean())
    f1_a, f1_b = macro_f1(y, a, k), macro_f1(y, b, k)
    if primary_metric == "accuracy":
        significant = p < alpha
        direction = np.sign(len(fixed) - len(broken))
    else:
        significant = boot["ci_low"] > 0 or boot["ci_high"] < 0
        direction = np.sign(boot["ci_low"]) if significant else 0
    verdict = SAME if not significant or direction == 0 else (BETTER if direction > 0 else WORSE)
    pc_a, pc_b = _per_class_f1(y, a, k), _per_class_f1(y, b, k)
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    return {
        "verdict": verdict,
        "primary_metric": primary_metric,
        "alpha": alpha,
        "n": int(len(y)),
        "metrics": {
            "champion": {"accuracy": acc_a, "macro_f1": f1_a},
            "challenger": {"accuracy": acc_b, "macro_f1": f1_b},
        },
        "deltas": {"accuracy": acc_b - acc_a, "macro_f1": f1_b - f1_a},
        "per_class_f1": {
            lab: {"champion": float(pc_a[i]), "challenger": float(pc_b[i]), "delta": float(pc_b[i] - pc_a[i])}
            for i, lab in enumerate(labels)
        },
        "mcnemar": {"champion_only_right": int(len(broken)), "challenger_only_right": int(len(fixed)), "p_value": p},
        "bootstrap": boot,
        "confusion": {"champion": _confusion(y, a, k), "challenger": _confusion(y, b, k)},
        "flipped": {
            "cap": flipped_cap,
            "fixed_total": int(len(fixed)),
            "broken_total": int(len(broken)),
            "fixed": _flipped(fixed, y, a, b, labels, texts, flipped_cap, rng, unknown_labels),
            "broken": _flipped(broken, y, a, b, labels, texts, flipped_cap, rng, unknown_labels),
        },
    }


def evidence_line(comparison: dict | None) -> str:
    """One line for the block field and logs: the verdict and what it rests on."""
    if not comparison:
        return NO_CHAMPION
    verdict = comparison.get("verdict", NOT_COMPARED)
    champ = (comparison.get("champion") or {}).get("model_id")
    if verdict in (NO_CHAMPION, NOT_COMPARED):
        reason = comparison.get("reason")
        return verdict + (f": {reason}" if reason else "")
    m, bt = comparison["mcnemar"], comparison["bootstrap"]
    return (
        f"{verdict} vs champion {champ} on {comparison['n']} rows: "
        f"accuracy {comparison['deltas']['accuracy']:+.4f} (McNemar p={m['p_value']:.3g}), "
        f"macro-F1 {comparison['deltas']['macro_f1']:+.4f} "
        f"({bt['confidence']:.0%} CI [{bt['ci_low']:+.4f}, {bt['ci_high']:+.4f}])"
    )


def comparison_table(comparison: dict | None) -> list[dict]:
    """Rows for a table (Prefect artifact): each metric and class F1, champion against challenger."""
    if not comparison or "metrics" not in comparison:
        return []
    champ = comparison["champion"]["model_id"]
    rows = [
        {
            "metric": m,
            "champion": comparison["metrics"]["champion"][m],
            "challenger": comparison["metrics"]["challenger"][m],
            "delta": comparison["deltas"][m],
        }
        for m in ("accuracy", "macro_f1")
    ]
    rows += [
        {"metric": f"f1 {lab}", "champion": v["champion"], "challenger": v["challenger"], "delta": v["delta"]}
        for lab, v in comparison.get("per_class_f1", {}).items()
    ]
    m, bt = comparison["mcnemar"], comparison["bootstrap"]
    rows.append(
        {
            "metric": "McNemar exact p (accuracy)",
            "champion": m["champion_only_right"],
            "challenger": m["challenger_only_right"],
            "delta": m["p_value"],
        }
    )
    rows.append(
        {
            "metric": f"macro_f1 delta {bt['confidence']:.0%} CI",
            "champion": bt["ci_low"],
            "challenger": bt["ci_high"],
            "delta": bt["delta"],
        }
    )
    for row in rows:
        row["champion_id"] = champ
    return rows


def confusion_table(cm: list[list[int]], labels: list[str]) -> list[dict]:
    """One row per true label, one column per predicted label."""
    return [
        {"true \\ predicted": labels[i], **{labels[j]: int(v) for j, v in enumerate(row)}} for i, row in enumerate(cm)
    ]
