"""The whole train flow against the session's real Prefect server."""

import json
from pathlib import Path

import pytest

from tests.process_helpers import run_artifacts

from trainkite.store import open_store


def _task_states(flow_run_id) -> dict[str, list[str]]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return out


def _run(params, model_id):
    from flows.train import train

    state = train(params=params, model_id=model_id, return_state=True)
    return state.result(), state.state_details.flow_run_id


def test_train_flow_publishes_a_verified_model(prefect_api, tk_home, params_factory):
    params = params_factory(**{"tracking.backend": "wandb"})
    result, run_id = _run(params, "flow-test-1")
    assert result["model_id"] == "flow-test-1"
    store = open_store()
    folder = Path(store.local_path("sentiment/flow-test-1"))
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in (
        "weights.safetensors",
        "features.json",
        "params.json",
        "metrics.json",
        "data/snapshot.parquet",
        "data/source.json",
        "plots/confusion_evaluation.png",
    ):
        assert f in manifest["files"], f
    # The demo names a human-labelled evaluation set, so no test split is carved from the training rows.
    assert "plots/confusion_test.png" not in manifest["files"]
    lin = manifest["lineage"]
    # The stored params are the ones resolved from the data (tasks/defaults.py), the user's set keys included.
    from params import validate_params

    resolved = validate_params(json.loads((folder / "params.json").read_text()))
    assert resolved.unresolved() == [] and resolved.preprocess.buckets == params.preprocess.buckets
    assert lin["params_hash"] == resolved.params_hash() and len(lin["data"]["fingerprint"]) == 64
    assert lin["wandb"]["run_id"] == "flow-test-1" and lin["seed"] == params.train.seed
    assert lin["device"] == "cpu" and "torch" in lin["packages"] and lin["git"]["commit"]
    assert json.loads((folder / "params.json").read_text())["train"]["epochs"] == 3
    assert 0 <= result["metrics"]["evaluation_accuracy"] <= 1 and "test_accuracy" not in result["metrics"]
    # W&B offline run files exist and hold the run
    import os

    runs = list((Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*-flow-test-1"))
    assert runs and (runs[0] / "run-flow-test-1.wandb").stat().st_size > 0
    # Prefect artifacts: markdown model card + metrics table
    from prefect import get_client

    with get_client(sync_client=True) as c:
        keys = {a.key for a in run_artifacts(c, run_id)}
    assert {"model-card", "model-metrics"} <= keys


def test_a_model_of_more_classes_than_a_matrix_can_show_publishes_per_class_evidence(
    prefect_api, tk_home, params_factory, tmp_path
):
    """Above CONFUSION_MAX_CLASSES classes no confusion matrix is built (a dense one is classes^2 cells: it ran a
    20,000-class run out of memory); every step still runs, tracked, with per-class figures as the evidence."""
    import pandas as pd

    from models.metrics import CONFUSION_MAX_CLASSES

    n = CONFUSION_MAX_CLASSES + 20
    rows = [
        {"text": f"please {w} the thing {w}{i}", "label": f"intent_{c}"}
        for c in range(n)
        for i in range(6)
        for w in [f"verb{c}"]
    ]
    (tmp_path / "src").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "src" / "intents.csv", index=False)
    params = params_factory(
        **{
            "tracking.backend": "wandb",
            "data.path": str(tmp_path / "src"),
            "data.query": "SELECT * FROM intents",
            "model.type": "linear",
            "data.labels": None,
            "evaluation.query": None,
        }
    )
    result, run_id = _run(params, "many-1")
    folder = Path(open_store().local_path("sentiment/many-1"))
    manifest = json.loads((folder / "manifest.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(manifest["labels"]) == n and metrics["test"]["confusion"] is None
    assert len(metrics["test"]["per_class"]) == n and metrics["test"]["accuracy"] > 0.9
    assert not [f for f in manifest["files"] if f.startswith("plots/")]
    from prefect import get_client

    with get_client(sync_client=True) as c:
        keys = {a.key for a in run_artifacts(c, run_id)}
    assert {"model-card", "model-metrics"} <= keys and "confusion-matrix" not in keys


def test_same_inputs_give_identical_weights_and_reuse_preprocessing(prefect_api, tk_home, params_factory):
    params = params_factory()
    _, run_a = _run(params, "det-a")
    _, run_b = _run(params, "det-b")
    store = open_store()
    ma = json.loads(store.get_bytes("sentiment/det-a/manifest.json"))
    mb = json.loads(store.get_bytes("sentiment/det-b/manifest.json"))
    assert ma["files"]["weights.safetensors"] == mb["files"]["weights.safetensors"]
    assert _task_states(run_a)["preprocess"] == ["Completed"]
    assert _task_states(run_b)["preprocess"] == ["Cached"]
    # Only training params changed: preprocessing is still reused, weights differ.
    _, run_c = _run(params_factory(**{"train.seed": 99}), "det-c")
    assert _task_states(run_c)["preprocess"] == ["Cached"]
    mc = json.loads(store.get_bytes("sentiment/det-c/manifest.json"))
    assert mc["files"]["weights.safetensors"] != ma["files"]["weights.safetensors"]


def test_one_model_id_in_another_store_runs_every_step_again(
    prefect_api, tk_home, params_factory, tmp_path, monkeypatch
):
    """Same model ID and inputs, another machine's TRAINKITE_HOME (another store, no local run folder): no cached
    step may hand on keys of the first store (evaluate used to, and publish then missed run/metrics.json)."""
    import shutil

    params = params_factory()
    _run(params, "two-stores-1")
    shutil.rmtree(tk_home)
    monkeypatch.setenv("TRAINKITE_HOME", str(tmp_path / "other-machine"))
    result, run_id = _run(params, "two-stores-1")
    states = _task_states(run_id)
    assert all(s == ["Completed"] for step, s in states.items()), states
    assert open_store().exists("sentiment/two-stores-1/metrics.json")
    assert result["model_id"] == "two-stores-1"


def test_bad_data_fails_the_flow_and_writes_nothing(prefect_api, tk_home, params_factory, tmp_path):
    from trainkite.errors import DataError

    params = params_factory(**{"data.query": "SELECT text, sentiment AS label FROM comments WHERE 1=0"})
    with pytest.raises(DataError, match="no rows"):
        _run(params, "bad-1")
    assert open_store().list("sentiment") == []
