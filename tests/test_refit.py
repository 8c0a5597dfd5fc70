"""train.refit: after early stopping picks the epoch, a second fit on train + validation makes the weights.
Plain functions over real DuckDB, features and torch; the flow-level runs resolve it from the data."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from models import registry as model_types
from models.trained import with_validation_in_train
from params import validate_params
from tasks import data, defaults
from tasks.evaluate import evaluate
from tasks.verify import with_keys_added_later
from tests.test_scale import _params, _table, generated_rows
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore


def _train(params_factory, tmp_path, name, **ov):
    folder = _table(tmp_path / "src", generated_rows(3_000))
    p = _params(params_factory, folder, **{"train.epochs": 4, "train.patience": 0, **ov})
    work = tmp_path / name
    ds = data.fetch_dataset(p, work)
    store = LocalStore(tmp_path / f"store-{name}")
    feats = model_types.featurize(ds, p, store, work)
    trained = model_types.train(feats, p, store, ModelRef("sentiment", name), work)
    return p, ds, store, feats, trained, work


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Progress(logging.Handler):
    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        self.seen.append(record.trainkite_progress)


def test_the_refit_trains_on_train_and_validation_for_the_chosen_epochs_to_the_same_bytes(params_factory, tmp_path):
    _, ds, _, _, plain, _ = _train(params_factory, tmp_path, "plain", **{"train.refit": False})
    bar, progress = _Progress(), logging.getLogger("trainkite_progress")
    level = progress.level
    progress.addHandler(bar)
    progress.setLevel(logging.INFO)  # as the CLI sets it
    try:
        p, _, store, feats, refit, work = _train(params_factory, tmp_path, "refit", **{"train.refit": True})
    finally:
        progress.removeHandler(bar)
        progress.setLevel(level)
    # The progress bar says which fit it is and counts the refit's own epochs.
    phases = {(r["phase"], r["epochs"]) for r in bar.seen}
    assert phases == {("train", 4), ("refit", refit.best_epoch)}
    _, _, _, _, again, _ = _train(params_factory, tmp_path, "again", **{"train.refit": True})
    assert plain.refit is None and plain.history == refit.history  # the first fit is the same run
    assert refit.refit["epochs"] == refit.best_epoch >= 1
    assert refit.refit["rows"] == ds.counts["train"] + ds.counts["validation"]
    assert _sha(refit.weights_path) != _sha(plain.weights_path)
    assert _sha(refit.weights_path) == _sha(again.weights_path)  # bit-identical, as every CPU run

    # The validation rows are training rows now: their score is the first fit's, said so, not the refit's.
    report = evaluate(refit, feats, p, store, work, "sentiment/refit")
    best = refit.history[refit.best_epoch - 1]
    assert report.metrics["validation"]["accuracy"] == best["val_accuracy"]
    assert "before the refit" in report.metrics["validation"]["measured_on"]
    assert report.metrics["refit"] == refit.refit and report.summary["test_accuracy"] > 0.7


def test_validation_rows_follow_the_training_rows_in_every_layout():
    arrays = {
        "train_ids": np.array([1, 2, 3], dtype=np.int32),
        "train_offsets": np.array([0, 2], dtype=np.int64),
        "train_y": np.array([0, 1]),
        "train_x": np.ones((2, 3), dtype=np.float32),
        "validation_ids": np.array([7, 8], dtype=np.int32),
        "validation_offsets": np.array([0, 1], dtype=np.int64),
        "validation_y": np.array([1, 0]),
        "validation_x": np.zeros((2, 3), dtype=np.float32),
        "test_y": np.array([1]),
    }
    out = with_validation_in_train(arrays)
    assert out["train_ids"].tolist() == [1, 2, 3, 7, 8] and out["train_offsets"].tolist() == [0, 2, 3, 4]
    assert out["train_y"].tolist() == [0, 1, 1, 0] and out["train_x"].shape == (4, 3)
    assert out["validation_y"] is arrays["validation_y"] and out["test_y"] is arrays["test_y"]


def _stats(rows: int, mean_tokens: float = 20.0) -> defaults.DataStats:
    return defaults.DataStats(
        train_rows=rows,
        validation_rows=rows // 9,
        labels=2,
        vocabulary=5_000,
        ngrams=40_000,
        mean_tokens=mean_tokens,
        sampled_rows=min(rows, defaults.STATS_SAMPLE_ROWS),
    )


def test_small_data_refits_large_data_and_fine_tuning_do_not_and_a_set_key_wins(params_factory):
    unset = params_factory(**{"train.refit": None})
    small = defaults.resolve_params(unset, _stats(5_000))
    assert small[0].train.refit is True and small[1]["train.refit"] == {"value": True, "source": "data"}
    assert defaults.resolve_params(unset, _stats(defaults.REFIT_MAX_ROWS + 1))[0].train.refit is False
    assert defaults.encoder_rules(_stats(5_000), "finetune")["train.refit"] is False
    assert defaults.encoder_rules(_stats(5_000), "frozen")["train.refit"] is True
    assert defaults.resolve_params(params_factory(**{"train.refit": False}), _stats(5_000))[0].train.refit is False


def test_a_model_recorded_before_the_keys_existed_is_rebuilt_as_it_was_trained(params_factory):
    recorded = params_factory(**{"train.refit": True, "train.shuffle": "blocks"}).model_dump(mode="json")
    assert with_keys_added_later(recorded) == recorded  # a recorded value is kept
    del recorded["train"]["refit"], recorded["train"]["shuffle"]
    old = validate_params(with_keys_added_later(recorded)).train
    assert (old.refit, old.shuffle) == (False, "rows")
