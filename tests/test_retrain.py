"""Scheduled retrain decides by data fingerprint, both ways, against the real Prefect server."""

import pandas as pd


def _run(params, force=False):
    from flows.retrain import retrain

    return retrain(params=params, force=force)


def _decision_artifacts():
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"])))
    return [a.data for a in arts]


def test_retrain_skips_unchanged_data_and_trains_on_change(prefect_api, tk_home, params_factory, demo_data):
    params = params_factory(**{"data.path": str(demo_data)})
    first = _run(params)
    assert first["retrained"] and first["last_model_id"] is None

    second = _run(params)
    assert not second["retrained"] and second["last_model_id"] == first["model_id"]
    assert "data unchanged" in second["reason"]
    assert any("**skip**" in a and "data unchanged" in a for a in _decision_artifacts())

    forced = _run(params, force=True)
    assert forced["retrained"] and forced["reason"] == "forced"

    comments = pd.read_csv(demo_data / "comments.csv")
    extra = pd.DataFrame(
        [
            {
                "comment_id": "c99999",
                "text": "The new canteen is brilliant and cheap.",
                "sentiment": "positive",
                "topic": "culture",
            }
        ]
    )
    pd.concat([comments, extra]).to_csv(demo_data / "comments.csv", index=False)
    changed = _run(params)
    assert changed["retrained"] and "data changed" in changed["reason"]
    assert changed["last_model_id"] == forced["model_id"]
