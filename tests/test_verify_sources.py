"""verify for a model in S3, and for a model too big to snapshot (the query is re-run, fingerprint checked)."""

import json

import pandas as pd
import pytest

from tasks.verify import verify_model
from trainkite.errors import IntegrityError
from trainkite.store import open_store


def _train(params, model_id):
    from flows.train import train

    return train(params=params, model_id=model_id)


def test_verify_a_model_published_to_s3(prefect_api, aws, tk_home, params_factory):
    import boto3

    boto3.client("s3").create_bucket(Bucket="lake")
    params = params_factory(**{"artifacts.root": "s3://lake/models"})
    result = _train(params, "s3-model-1")
    assert result["artifact_uri"] == "s3://lake/models/sentiment/s3-model-1"
    store = open_store("s3://lake/models")
    keys = store.list("sentiment/s3-model-1")
    assert "sentiment/s3-model-1/manifest.json" in keys
    # The published folder is the manifest's files; the run's scratch (checkpoints, staged files) is gone.
    assert not any("/checkpoints/" in k or "/run/" in k for k in keys)
    assert store.list("_scratch/sentiment/s3-model-1") == []
    report = verify_model(store, "s3-model-1")
    assert report.ok and report.identical and report.mode == "bit-identical"


def test_without_snapshot_verify_reruns_the_query_and_checks_the_fingerprint(
    prefect_api, tk_home, params_factory, demo_data
):
    params = params_factory(**{"data.path": str(demo_data), "data.snapshot_max_rows": 0})
    _train(params, "nosnap-1")
    store = open_store()
    manifest = json.loads(store.get_bytes("sentiment/nosnap-1/manifest.json"))
    assert "data/snapshot.parquet" not in manifest["files"]
    assert manifest["lineage"]["data"]["snapshot"] is None and manifest["lineage"]["data"]["query"]
    report = verify_model(store, "nosnap-1")
    assert report.ok and "query re-run" in report.data_check

    comments = pd.read_csv(demo_data / "comments.csv")
    comments.iloc[:-1].to_csv(demo_data / "comments.csv", index=False)
    with pytest.raises(IntegrityError, match="no longer matches its fingerprint"):
        verify_model(store, "nosnap-1")


def test_a_model_whose_snapshot_was_in_text_order_still_verifies(
    prefect_api, tk_home, params_factory, demo_data, monkeypatch
):
    """Snapshot schema 2 sorted each split by text; a model made then trained on its rows in that order. Its
    stored snapshot, or its query re-run today (which writes schema 3's hashed order), is read in the order it
    trained on, so it rebuilds bit for bit."""
    import tasks.data as data
    import trainkite.snapshot as snapshot

    with monkeypatch.context() as m:  # train as the code of schema 2 did
        m.setattr(data, "SNAPSHOT_SCHEMA", 2)
        m.setattr(snapshot, "SNAPSHOT_SCHEMA", 2)
        for model_id, keep in (("text-order-1", 2_000_000), ("text-order-2", 0)):
            _train(params_factory(**{"data.path": str(demo_data), "data.snapshot_max_rows": keep}), model_id)
    store = open_store()
    for model_id, how in (("text-order-1", "snapshot"), ("text-order-2", "query re-run")):
        manifest = json.loads(store.get_bytes(f"sentiment/{model_id}/manifest.json"))
        assert manifest["lineage"]["data"]["schemas"]["snapshot"] == 2
        report = verify_model(store, model_id)
        assert report.ok and report.identical and how in report.data_check
        assert report.lineage_changes["schema.snapshot"] == {"model": 2, "now": data.SNAPSHOT_SCHEMA}
