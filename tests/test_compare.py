"""tasks/compare.py on constructed cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks import compare as cp
from models.metrics import score

LABELS = ["negative", "neutral", "positive"]


def _case(n: int = 300, errors: int = 100, seed: int = 3):
    """True labels and a champion that gets exactly `errors` of `n` rows wrong."""
    rng = np.random.Generator(np.random.PCG64(seed))
    y = rng.integers(0, 3, n)
    champ = y.copy()
    wrong = rng.choice(n, errors, replace=False)
    champ[wrong] = (y[wrong] + 1) % 3
    return y, champ, wrong


def test_mcnemar_matches_the_binomial_by_hand():
    assert cp.mcnemar_exact(0, 0) == 1.0
    assert cp.mcnemar_exact(5, 5) == 1.0
    # b=0, c=30: 2 * 0.5**30
    assert cp.mcnemar_exact(0, 30) == pytest.approx(2 * 0.5**30, rel=1e-12)
    # b=2, c=8: 2 * (C(10,0)+C(10,1)+C(10,2)) / 2**10 = 2 * 56 / 1024
    assert cp.mcnemar_exact(2, 8) == pytest.approx(112 / 1024, rel=1e-12)
    assert cp.mcnemar_exact(8, 2) == cp.mcnemar_exact(2, 8)
    # Large counts do not overflow.
    assert 0 < cp.mcnemar_exact(900, 1100) < 1e-4
    assert math.isclose(cp.mcnemar_exact(1500, 1500), 1.0)


def test_macro_f1_is_the_metrics_modules_macro_f1():
    y, champ, _ = _case()
    probs = np.eye(3)[champ]
    assert cp.macro_f1(y, champ, 3) == pytest.approx(score(y, probs, LABELS)["macro_f1"], abs=1e-12)


def test_scores_count_per_class_without_a_matrix_and_carry_one_only_for_a_readable_number_of_classes():
    from models.metrics import CONFUSION_MAX_CLASSES, confusion

    rng = np.random.Generator(np.random.PCG64(5))
    for n in (3, CONFUSION_MAX_CLASSES + 1):
        labels = [f"c{i}" for i in range(n)]
        y, pred = rng.integers(0, n, 2_000), rng.integers(0, n, 2_000)
        pred[:1_000] = y[:1_000]
        got = score(y, np.eye(n)[pred], labels)
        cm = confusion(y, pred, n)  # the matrix's own precision and recall, by hand
        for i in rng.choice(n, 3, replace=False):
            tp, col, row = cm[i, i], cm[:, i].sum(), cm[i].sum()
            assert got["per_class"][labels[i]]["precision"] == (tp / col if col else 0.0)
            assert got["per_class"][labels[i]]["recall"] == (tp / row if row else 0.0)
            assert got["per_class"][labels[i]]["support"] == row
        assert got["accuracy"] == np.trace(cm) / 2_000
        assert got["confusion"] == (cm.tolist() if n <= CONFUSION_MAX_CLASSES else None)
    y, champ, _ = _case()
    many = [f"c{i}" for i in range(CONFUSION_MAX_CLASSES + 1)]
    assert cp.compare(y, champ, champ.copy(), many, primary_metric="accuracy")["confusion"]["champion"] is None


def test_identical_models_show_no_difference():
    y, champ, _ = _case()
    for metric in ("macro_f1", "accuracy"):
        out = cp.compare(y, champ, champ.copy(), LABELS, primary_metric=metric)
        assert out["verdict"] == cp.SAME
        assert out["mcnemar"]["p_value"] == 1.0
        assert out["deltas"] == {"accuracy": 0.0, "macro_f1": 0.0}
        assert out["bootstrap"]["ci_low"] == out["bootstrap"]["ci_high"] == 0.0
        assert out["flipped"]["fixed"] == out["flipped"]["broken"] == []


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_fixing_30_of_100_errors_is_better_and_breaking_them_is_worse(metric):
    y, champ, wrong = _case()
    challenger = champ.copy()
    challenger[wrong[:30]] = y[wrong[:30]]  # 30 of the champion's 100 errors flipped the right way
    texts = [f"row {i} " + "x" * 300 for i in range(len(y))]

    better = cp.compare(y, champ, challenger, LABELS, primary_metric=metric, texts=texts)
    assert better["verdict"] == cp.BETTER
    assert better["mcnemar"] == {
        "champion_only_right": 0,
        "challenger_only_right": 30,
        "p_value": pytest.approx(2 * 0.5**30),
    }
    assert better["deltas"]["accuracy"] == pytest.approx(30 / 300)
    assert better["bootstrap"]["ci_low"] > 0
    assert better["flipped"]["fixed_total"] == 30 and len(better["flipped"]["fixed"]) == cp.FLIPPED_CAP
    flip = better["flipped"]["fixed"][0]
    assert flip["challenger"] == flip["label"] != flip["champion"]
    assert len(flip["text"]) == cp.TEXT_CHARS and flip["text"].startswith(f"row {flip['row']} ")
    assert sum(d["delta"] for d in better["per_class_f1"].values()) > 0

    # The reverse: the same pair with the roles swapped.
    worse = cp.compare(y, challenger, champ, LABELS, primary_metric=metric)
    assert worse["verdict"] == cp.WORSE
    assert worse["mcnemar"]["champion_only_right"] == 30 and worse["bootstrap"]["ci_high"] < 0
    assert worse["deltas"]["accuracy"] == pytest.approx(-30 / 300)


def test_a_few_flips_either_way_are_no_significant_difference():
    y, champ, wrong = _case()
    challenger = champ.copy()
    challenger[wrong[:4]] = y[wrong[:4]]  # fixes 4
    right = np.setdiff1d(np.arange(len(y)), wrong)[:3]
    challenger[right] = (y[right] + 2) % 3  # breaks 3
    out = cp.compare(y, champ, challenger, LABELS)
    assert out["verdict"] == cp.SAME
    assert out["bootstrap"]["ci_low"] < 0 < out["bootstrap"]["ci_high"]
    assert cp.compare(y, champ, challenger, LABELS, primary_metric="accuracy")["verdict"] == cp.SAME


def test_same_seed_same_interval_and_verdict_other_seed_other_interval():
    y, champ, wrong = _case()
    challenger = champ.copy()
    challenger[wrong[:12]] = y[wrong[:12]]
    one = cp.compare(y, champ, challenger, LABELS, seed=7)
    two = cp.compare(y, champ, challenger, LABELS, seed=7)
    assert one == two
    other = cp.compare(y, champ, challenger, LABELS, seed=8)
    assert other["bootstrap"]["ci_low"] != one["bootstrap"]["ci_low"]


def test_a_champion_label_the_data_lacks_counts_as_wrong():
    y = np.array([0, 1, 2, 0])
    champ = np.array([0, -1, 2, -1])
    out = cp.compare(y, champ, y.copy(), LABELS, unknown_labels={-1: "mixed"})
    assert out["metrics"]["champion"]["accuracy"] == 0.5
    assert {f["champion"] for f in out["flipped"]["fixed"]} == {"mixed"}


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="rows differ"):
        cp.compare(np.array([0, 1]), np.array([0]), np.array([0, 1]), LABELS)
    with pytest.raises(ValueError, match="no rows"):
        cp.compare(np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=int), LABELS)
    with pytest.raises(ValueError, match="primary_metric"):
        cp.compare(np.array([0]), np.array([0]), np.array([0]), LABELS, primary_metric="auc")


def test_evidence_line_names_the_verdict_champion_p_value_and_interval():
    y, champ, wrong = _case()
    challenger = champ.copy()
    challenger[wrong[:30]] = y[wrong[:30]]
    out = cp.compare(y, champ, challenger, LABELS)
    out["champion"] = {"model_id": "trainkite-7"}
    line = cp.evidence_line(out)
    assert line.startswith("better vs champion trainkite-7 on 300 rows")
    assert "McNemar p=" in line and "CI [" in line
    assert cp.evidence_line(None) == "no champion"
