"""A diverged training is a failure, never a model: the fit loops' guard, publish's gate, and no NaN on the way out.

Parameter bounds refuse the known ways to diverge before any work (params/model.py); these tests build
params past those bounds on purpose (`model_copy` skips validation, as a divergence the bounds did not
foresee would), so the guard behind them is what is tested.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from safetensors.numpy import save_file

from models import registry as model_types
from tasks.data import fetch_dataset
from models.fit import DIVERGED_LOSS_FACTOR, check_divergence
from models.trained import check_finite_weights
from trainkite.errors import TrainingDiverged, UserInputError
from trainkite.manifest import ModelRef
from trainkite.store import open_store


def _past_bounds(params, **train):
    """`params` with train.* values no validator would pass: the shape of an unforeseen divergence."""
    return params.model_copy(update={"train": params.train.model_copy(update=train)})


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_training_naming_the_epoch(loss):
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 3 \(loss (nan|inf|-inf)\)"):
        check_divergence(3, loss, 2)
    assert issubclass(TrainingDiverged, UserInputError)  # not retried, exit 2


def test_an_exploding_loss_stops_training_and_a_high_but_plausible_one_does_not():
    check_divergence(1, 0.9 * DIVERGED_LOSS_FACTOR * math.log(2), 2)
    with pytest.raises(TrainingDiverged, match="diverged at epoch 2 .*1e\\+14"):
        check_divergence(2, 1e14, 2)


@pytest.mark.parametrize("train", [{"learning_rate": 1e6}, {"weight_decay": math.inf}], ids=["lr", "weight-decay"])
def test_the_bow_fit_loop_fails_at_the_first_bad_epoch_and_stages_nothing(train, tmp_path, tk_home, params_factory):
    params = _past_bounds(params_factory(**{"train.epochs": 4}), **train)
    store = open_store()
    ref = ModelRef(params.model.name, "diverge-1")
    work = tmp_path / "wd"
    dataset = fetch_dataset(params, work, store, ref.prefix)
    features = model_types.featurize(dataset, params, store, work)
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1 \(loss"):
        model_types.train(features, params, store, ref, work)
    assert not store.list(f"{ref.prefix}/checkpoints"), "a diverged epoch must not be checkpointed"
    assert not (work / "weights.safetensors").exists()


def test_publish_refuses_non_finite_weights(tmp_path):
    ok, bad = tmp_path / "ok.safetensors", tmp_path / "weights.safetensors"
    save_file({"fc.weight": np.ones((2, 3), np.float32)}, str(ok))
    check_finite_weights(ok)
    save_file({"fc.weight": np.array([[1, np.nan]], np.float32), "emb.weight": np.ones(2, np.float32)}, str(bad))
    with pytest.raises(TrainingDiverged, match="weights.safetensors holds non-finite values .* fc.weight"):
        check_finite_weights(bad)


def test_a_diverging_train_flow_fails_publishes_nothing_and_is_not_retried(prefect_api, tk_home, params_factory):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train import train

    params = _past_bounds(params_factory(), learning_rate=1e6)
    state = train.with_options(validate_parameters=False)(params=params, model_id="diverge-flow-1", return_state=True)
    assert state.is_failed()
    with pytest.raises(TrainingDiverged, match="training diverged at epoch 1"):
        state.result()
    with get_client(sync_client=True) as c:
        flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = c.read_task_runs(flow_run_filter=flow_run)
    by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}
    assert by_name["train"].state.is_failed() and by_name["train"].run_count == 1
    assert "publish" not in by_name
    store = open_store()
    assert not [k for k in store.list("sentiment/diverge-flow-1") if k.endswith(("manifest.json", "checkpoints"))]


def test_predict_never_prints_nan():
    """An already-published model with NaN weights (from before the guard) is refused by predict, not printed."""
    from cli.predict import check_finite_predictions

    check_finite_predictions([{"label": "a", "scores": {"a": 0.4, "b": 0.6}}], "m-1")
    with pytest.raises(Exception, match="non-finite scores"):
        check_finite_predictions([{"label": "a", "scores": {"a": float("nan"), "b": 0.6}}], "m-1")
